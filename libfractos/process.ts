/**
 * A FractOS Process: a channel to one Controller and every system call of DESIGN.md §3
 * as an async method. Errors are `FractosError`s with a `code`.
 */
import { closeSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import { PendingCalls } from './calls.js';
import { FractosError, NativeUnavailableError, errorCodeFromWire, errorCodeToWire, withoutCode, type ErrorCode } from './errors.js';
import { Link, dial, parseAddress, type FrameLink } from './link.js';
import { UnixLink } from './unix-link.js';
import {
  Backing, DEFAULT_LIMITS, Feature, HEADER_BYTES, MemCreateFlag, MemFlag, MonitorReason, Op, Perm,
  allocFrame, argsBytes, errorReply, frameOp, frameSeq, readArgs, readCid, readU64, writeArgs, writeCid, writeU64,
  type ImmRange, type LinkCounters, type RequestArgs,
} from './protocol.js';
import { ErrorReply, type CapValues, type FieldType, type ImmValues, type Invocation, type MemoryDescriptor, type RequestSchema } from './schema.js';
import { decodeIntrospect, type Introspection } from './introspect.js';
import { createRegionFd, mapFd, type RegionMapping } from '../native/shm/index.js';
import { closeFd } from '../native/queue/index.js';

/** Options of `connect`. */
export interface ConnectOptions {
  /** A name for logs and stats (at most 64 characters). */
  name?: string;
  /** Connect timeout (ms). */
  timeoutMs?: number;
  /**
   * Ask for Memory descriptors in deliveries (`inv.memory(slot)`): adaptors that check
   * and map delegated buffers save a memory_stat round trip per invocation.
   */
  memoryDescriptors?: boolean;
  /**
   * On `unix:` addresses, ask for a shared-memory queue pair (docs/queues.md). Default: true
   * when the queue addon loads, unless the environment says FRACTOS_QUEUE=0.
   */
  queue?: boolean;
  /**
   * Poll mode (like fio's hipri, queue pairs only): after sending calls, spin up to ~50 µs in
   * C for their answers before falling back to the doorbell. Costs CPU; for latency-critical
   * clients. Default false.
   */
  poll?: boolean;
}

/** Spin of poll mode (ns): at most this long per flush before the doorbell watch takes over. */
const POLL_SPIN_NS = 50_000;

/** A handler of delivered Requests. A returned Promise delays dropping the delivered cids until it settles. */
export type RequestHandler = (inv: Invocation) => void | Promise<unknown>;

/** Bytes a served Memory object's owner reads/writes for the Controller. */
export interface ServedBacking {
  /** Return `length` bytes at `offset` (bytes, relative to the served object). */
  read(offset: number, length: number): Uint8Array | Promise<Uint8Array>;
  /** Store `data` at `offset`. `data` is valid only until the returned promise settles. */
  write(offset: number, data: Uint8Array): void | Promise<void>;
}

/** Options of `allocShared`. */
export interface SharedRegionOptions {
  /**
   * Let a holder of a cap to any part of this region, on this host, be handed the fd of the
   * whole region (MEMORY_MAP, with that cap's rights): for regions cut into buffers that all go
   * to the same adaptors (slots), so that device I/O into a part stays zero-copy. Default false:
   * only a cap covering the whole region gets its fd (docs/core.md "Shared regions").
   */
  shareWhole?: boolean;
}

/**
 * A shared-memory region the Process created (`allocShared`): a sealed memfd (no name
 * anywhere), mapped here, passed to the Controller with its first `memoryCreate`.
 */
export interface SharedRegion {
  /** This Process's id of the region (> 0; MEMORY_CREATE names it). */
  readonly id: number;
  /** Bytes (may exceed 4 GiB). */
  readonly size: number;
  /** The whole region, mapped. Errors: ERANGE for a region over 4 GiB (use `view`). */
  readonly buffer: ArrayBuffer;
  /** The whole region as bytes. Errors: ERANGE for a region over 4 GiB (use `view`). */
  readonly bytes: Uint8Array;
  /** The Controller's key of the region (memory_stat's `regionKey`) once registered, else 0. */
  readonly key: number;
  /** See SharedRegionOptions.shareWhole. */
  readonly shareWhole: boolean;
  /** This Process's fd of the memfd (-1 once freed): the Process closes it, never the caller. */
  readonly fd: number;
  /**
   * Bytes [offset, offset + length) of the region, without a copy: up to 4 GiB long in a
   * region up to 4 GiB, up to 2 GiB anywhere in a larger one (RegionMapping.view). Errors: ERANGE.
   */
  view(offset: number, length: number): Uint8Array;
}

class Region implements SharedRegion {
  readonly id: number;
  readonly size: number;
  readonly shareWhole: boolean;
  readonly #map: RegionMapping;
  key = 0;
  /** Our fd of the memfd (-1 once freed): kept to register the region again if the Controller forgot it. */
  fd: number;
  /** Whether the Controller has it (the last MEMORY_CREATE with its fd succeeded). */
  registered = false;
  /** The MEMORY_CREATE with the fd in flight: later ones wait for it (fds travel on the socket, other frames may not). */
  pending: Promise<unknown> | null = null;
  #bytes: Uint8Array | null = null;

  constructor(id: number, size: number, fd: number, map: RegionMapping, shareWhole: boolean) {
    this.id = id;
    this.size = size;
    this.fd = fd;
    this.#map = map;
    this.shareWhole = shareWhole;
  }

  get buffer(): ArrayBuffer {
    return this.#map.buffer;
  }

  get bytes(): Uint8Array {
    return (this.#bytes ??= new Uint8Array(this.#map.buffer));
  }

  view(offset: number, length: number): Uint8Array {
    return this.#map.view(offset, length);
  }
}

/** What `memoryMap` hands over: an fd of a Memory cap's region, to map and close. */
export interface MemoryMapping {
  /** The fd (owned by the caller: close it; a mapping made from it stays valid). */
  fd: number;
  /** The Controller's key of the region (memory_stat's `regionKey`), for caches. */
  regionKey: number;
  /** Bytes of the whole region. */
  regionSize: number;
  /** Where the cap's view starts in the region, and its length (bytes). */
  regionOffset: number;
  size: number;
  /** Rights of the fd: Perm.READ (read-only fd: map it read-only) or Perm.RW. */
  perms: number;
}

/** What `memoryStat` tells about a Memory cap (the same as a delivery's descriptor). */
export type MemoryStat = MemoryDescriptor;

/** Why a monitor fired. */
export type MonitorEvent = 'revoked' | 'owner-failed' | 'delegates-gone';

const RPC_TAG_BIT = 0x80000000;
/** `rpc` continuation pairs made ahead: refilled to HIGH when fewer than LOW are left. */
const RPC_POOL_LOW = 8;
const RPC_POOL_HIGH = 24;
/** Finished calls' continuations are revoked in batches of this many cids, or after RPC_REVOKE_MS. */
const RPC_REVOKE_BATCH = 32;
const RPC_REVOKE_MS = 2;

/** One bootstrap name as `kvList()` reports it. */
export interface ListedName {
  name: string;
  /** Publishing Controller, its epoch, and the publishing Process's id there. */
  controller: number;
  epoch: number;
  proc: number;
  /** The etcd mod revision (external store), or the last-writer-wins clock of the replicated map. */
  revision: number;
  /** The etcd create revision, or the time of the first claim (ms * 1024). */
  since: number;
}

/** Per-link counters as reported by `stats()`. */
export interface ControllerStats {
  controller: number;
  epoch: number;
  /** Per link; `live` false for a link that has closed (its counters are kept). */
  links: { kind: 'process' | 'peer'; id: number; name: string; live: boolean; framesIn: number; framesOut: number; bytesIn: number; bytesOut: number }[];
}

/**
 * Connect to a Controller at `unix:PATH` or `tcp://HOST:PORT`.
 * Errors: EINVAL (address), EDISCONNECTED (refused), ETIMEDOUT.
 */
export async function connect(address: string, opts: ConnectOptions = {}): Promise<Process> {
  const link = await openLink(address, opts.timeoutMs ?? 10_000);
  const p = new Process(link, opts.name ?? `pid${process.pid}`);
  const queue = link instanceof UnixLink && (opts.queue ?? process.env.FRACTOS_QUEUE !== '0');
  await p.hello((opts.memoryDescriptors ? Feature.MEMORY_DESCRIPTORS : 0) | (queue ? Feature.QUEUE : 0), opts.poll ? POLL_SPIN_NS : 0);
  return p;
}

/**
 * The transport of a channel: on `unix:` the socket owned by the queue addon (frames with
 * fds, docs/protocol.md "Frames with file descriptors"), a net.Socket when the addon is not
 * built; on tcp a net.Socket.
 */
async function openLink(address: string, timeoutMs: number): Promise<FrameLink> {
  const a = parseAddress(address);
  if (a.kind === 'unix') {
    try {
      return await UnixLink.connect(a.path, DEFAULT_LIMITS.maxFrameBytes, timeoutMs);
    } catch (e) {
      if (!(e instanceof NativeUnavailableError)) throw e;
    }
  }
  return new Link(await dial(a, timeoutMs), DEFAULT_LIMITS.maxFrameBytes);
}

/** How long `kvPut(name, cid, { republish: true })` retries a name still held by another Process (ms). */
export const REPUBLISH_WAIT_MS = 5000;

export class Process extends EventEmitter {
  readonly #link: FrameLink;
  /** The fds that came with the frame being handled (#onFrame), taken by setting entries to -1. */
  #frameFds: number[] | undefined;
  readonly #calls = new PendingCalls();
  readonly #handlers = new Map<number, RequestHandler>();
  readonly #served = new Map<number, ServedBacking>();
  #nextServedKey = 1;
  readonly #monitors = new Map<number, (ev: MonitorEvent) => void>();
  #nextMonitor = 1;
  readonly #regions = new Map<number, Region>();
  #regionSeq = 1;
  #acks = 0;
  #ackScheduled = false;
  #nextRpc = 1;
  readonly #rpcs = new Map<number, { resolve: (inv: Invocation) => void; reject: (e: Error) => void }>();
  /** Continuation pairs made ahead for `rpc` (#refillContinuations). */
  #contPool: { id: number; ok: number; fail: number }[] = [];
  #contRefill: Promise<void> | null = null;
  /** Continuations of finished calls waiting for their batched revocation (#revokeLater). */
  #revokes: number[] = [];
  #revokeTimer: NodeJS.Timeout | undefined;
  #closed = false;
  #paused = false;
  readonly name: string;
  controllerId = 0;
  epoch = 0;
  processId = 0;
  maxImmBytes = DEFAULT_LIMITS.maxImmBytes;
  maxCapSlots = DEFAULT_LIMITS.maxCapSlots;
  #limits = DEFAULT_LIMITS;

  /** @internal use `connect()` */
  constructor(link: FrameLink, name: string) {
    super();
    this.#link = link;
    this.name = name;
    link.onFrame = (f, fds) => {
      this.#frameFds = fds;
      try {
        this.#onFrame(f);
      } finally {
        this.#frameFds = undefined;
      }
    };
    link.onClose = (err) => this.#onClose(err);
  }

  /** @internal */
  async hello(features = 0, pollNs = 0): Promise<void> {
    const name = Buffer.from(this.name.slice(0, 64), 'utf8');
    const { reply: r, fds } = await this.callWithFds(Op.HELLO, 8 + name.length, (f) => {
      f.writeUInt32LE(process.pid, 16);
      f.writeUInt32LE(features, 20);
      name.copy(f, 24);
    });
    try {
      // A queue pair: [memfd, our doorbell, the Controller's doorbell, the host's spinner
      // budget page (optional)] (docs/queues.md).
      const granted = r.length >= 52 ? r.readUInt32LE(44) : 0;
      if (granted & Feature.QUEUE) {
        if (fds.length < 3 || fds.length > 4 || !(this.#link instanceof UnixLink)) throw new FractosError('EPROTO', `HELLO reply: queue granted with ${fds.length} fds`);
        this.#link.attachQueue(fds[0]!, fds[1]!, fds[2]!, r.readUInt32LE(48), fds[3] ?? -1, pollNs);
        const link = this.#link;
        link.outstanding = () => this.#calls.size > 0;
      }
    } catch (e) {
      this.#link.close(e as Error);
      throw e;
    } finally {
      for (const fd of fds) closeFd(fd);
    }
    this.controllerId = r.readUInt32LE(16);
    this.epoch = r.readUInt32LE(20);
    this.processId = r.readUInt32LE(24);
    this.maxImmBytes = r.readUInt32LE(32);
    this.maxCapSlots = r.readUInt32LE(36);
    this.#limits = { ...DEFAULT_LIMITS, maxImmBytes: this.maxImmBytes, maxCapSlots: this.maxCapSlots };
  }

  /**
   * @internal Let a native I/O loop take frames off this Process's channel before JS
   * (native/include/frame_hook.h, docs/blockdev-backend.md "The native I/O loop"): `hook` is
   * the loop's napi External, `owner` its JS object (kept alive while attached); null
   * detaches. False when the channel cannot (tcp, no queue addon, closed). Errors: EINVAL,
   * EBUSY (the hook serves another channel).
   */
  setFrameHook(hook: object | null, owner?: object): boolean {
    if (this.#closed || !(this.#link instanceof UnixLink)) return false;
    this.#link.setFrameHook(hook, owner);
    return true;
  }

  /** How this Process reaches its Controller: 'queue' (a shared-memory queue pair, docs/queues.md) or 'socket'. */
  get transport(): 'queue' | 'socket' {
    return this.#link instanceof UnixLink && this.#link.queued ? 'queue' : 'socket';
  }

  /** Frames and bytes on this Process's channel, both ways. */
  get counters(): Readonly<LinkCounters> {
    return this.#link.counters;
  }

  get closed(): boolean {
    return this.#closed;
  }

  // ---------------------------------------------------------------------------------
  // Calls

  #call(op: number, bodyBytes: number, write: ((f: Buffer) => void) | null): Promise<Buffer> {
    if (this.#closed) return Promise.reject(new FractosError('EDISCONNECTED', 'channel closed'));
    return new Promise((resolve, reject) => {
      const seq = this.#calls.add((err, frame) => (err ? reject(err) : resolve(frame!)));
      const f = allocFrame(op, seq, bodyBytes);
      if (write) write(f);
      this.#link.send(f);
    });
  }

  /**
   * @internal A call whose frame carries `fds` (1..8, sent with SCM_RIGHTS on a unix channel;
   * the caller keeps them) and whose REPLY's fds are returned (the caller owns and must close
   * them). docs/protocol.md "Frames with file descriptors". Errors: the call's, ENOTSUP (a
   * channel that cannot carry fds: tcp).
   */
  callWithFds(op: number, bodyBytes: number, write: ((f: Buffer) => void) | null, fds: number[] = []): Promise<{ reply: Buffer; fds: number[] }> {
    if (this.#closed) return Promise.reject(new FractosError('EDISCONNECTED', 'channel closed'));
    return new Promise((resolve, reject) => {
      const seq = this.#calls.add((err, frame) => {
        const got = this.#takeFrameFds();
        if (err) {
          for (const fd of got) closeFd(fd);
          reject(err);
        } else resolve({ reply: frame!, fds: got });
      });
      const f = allocFrame(op, seq, bodyBytes);
      if (write) write(f);
      try {
        if (fds.length) this.#link.sendWithFds(f, fds);
        else this.#link.send(f);
      } catch (e) {
        this.#calls.fail(seq, e as FractosError);
      }
    });
  }

  /** The fds of the frame being handled, taken (the link closes those not taken). */
  #takeFrameFds(): number[] {
    const f = this.#frameFds;
    if (!f) return [];
    const got = f.filter((fd) => fd >= 0);
    f.fill(-1);
    return got;
  }

  #callCid(op: number, cid: number, extra = 0, write: ((f: Buffer) => void) | null = null): Promise<Buffer> {
    checkCid(cid);
    return this.#call(op, 4 + extra, (f) => {
      f.writeUInt32LE(cid, 16);
      if (write) write(f);
    });
  }

  /** The null operation: one round trip to the Controller. */
  async nullOp(): Promise<void> {
    await this.#call(Op.NULL, 0, null);
  }

  // ---------------------------------------------------------------------------------
  // Memory

  /**
   * Create a shared-memory region of `size` bytes (zero-filled, sparse, page-aligned): a memfd
   * sealed against shrinking and growing, mapped here; its fd goes to the Controller with the
   * first `memoryCreate` of it. Register (parts of) it with `memoryCreate`; `freeShared` when
   * done. Errors: EINVAL (size), ENOSPC, EMFILE as EIO, ENODEV (native addon missing).
   */
  allocShared(size: number, opts: SharedRegionOptions = {}): SharedRegion {
    if (this.#closed) throw new FractosError('EDISCONNECTED', 'channel closed');
    const fd = createRegionFd(size);
    let map: RegionMapping;
    try {
      map = mapFd(fd, size, true);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    const id = this.#regionSeq++;
    const r = new Region(id, size, fd, map, opts.shareWhole ?? false);
    this.#regions.set(id, r);
    return r;
  }

  /**
   * Close this Process's fd of a region (its mapping stays valid while referenced): the memory
   * goes once the Controller's Memory objects on it are gone too. Registering it again is EBADF.
   */
  freeShared(region: SharedRegion): void {
    const r = this.#regions.get(region.id);
    if (r !== region) return;
    this.#regions.delete(r.id);
    if (r.fd >= 0) closeSync(r.fd);
    r.fd = -1;
  }

  /**
   * memory_create: register `size` bytes at `offset` of a shared region with `perms`
   * (Perm.READ | Perm.WRITE). Returns a Memory cid. The first registration of a region passes
   * its fd (and is awaited by any other in flight); a later one names the region's id, and
   * passes the fd again if the Controller forgot the region (ENOENT: every Memory object on it
   * was gone). Errors: ERANGE, EPERM (tcp channel), EBADF (region freed, or not of this
   * Process), ENOSPC.
   */
  async memoryCreate(region: SharedRegion, perms: number = Perm.RW, offset = 0, size = region.size - offset): Promise<number> {
    const r = this.#regions.get(region.id);
    if (r !== region || r.fd < 0) throw new FractosError('EBADF', `region ${region.id} is not a live region of this Process`);
    for (let tries = 0; ; tries++) {
      while (r.pending) await r.pending.catch(() => {});
      if (!r.registered) {
        const p = this.#memoryCreateShared(r, perms, offset, size, true);
        r.pending = p;
        try {
          const cid = await p;
          r.registered = true;
          return cid;
        } finally {
          r.pending = null;
        }
      }
      try {
        return await this.#memoryCreateShared(r, perms, offset, size, false);
      } catch (err) {
        if ((err as FractosError).code !== 'ENOENT' || tries > 0) throw err;
        r.registered = false;
      }
    }
  }

  async #memoryCreateShared(r: Region, perms: number, offset: number, size: number, withFd: boolean): Promise<number> {
    if (r.fd < 0) throw new FractosError('EBADF', `region ${r.id} was freed`);
    let reply: Buffer;
    try {
      ({ reply } = await this.callWithFds(Op.MEMORY_CREATE, 32, (f) => {
        f.writeUInt8(Backing.SHARED, 16);
        f.writeUInt8(perms & Perm.RW, 17);
        f.writeUInt8((withFd ? MemCreateFlag.FD : 0) | (r.shareWhole ? MemCreateFlag.SHARE_WHOLE : 0), 18);
        f.writeUInt8(0, 19);
        f.writeUInt32LE(r.id, 20);
        writeU64(f, offset, 24);
        writeU64(f, size, 32);
        writeU64(f, r.size, 40);
      }, withFd ? [r.fd] : []));
    } catch (err) {
      // A link that cannot carry fds (tcp; unix without the queue addon): as the Controller says on tcp.
      if ((err as FractosError).code === 'ENOTSUP') throw new FractosError('EPERM', `shared Memory needs a channel that passes the region's fd: ${(err as Error).message}`);
      throw err;
    }
    const key = readU64(reply, 24);
    if (key) r.key = key;
    return reply.readUInt32LE(16);
  }

  /**
   * allocShared + memoryCreate of the whole region. Returns the cid and the mapped bytes.
   * Errors: those of both.
   */
  async memoryCreateShared(size: number, perms: number = Perm.RW, opts: SharedRegionOptions = {}): Promise<{ cid: number; region: SharedRegion }> {
    const region = this.allocShared(size, opts);
    try {
      return { cid: await this.memoryCreate(region, perms), region };
    } catch (err) {
      this.freeShared(region);
      throw err;
    }
  }

  /**
   * memory_create with served backing: memory the Controller cannot map (device memory).
   * The Controller calls `backing.read/write` for every copy touching it. Returns a cid.
   */
  async memoryCreateServed(size: number, perms: number, backing: ServedBacking): Promise<number> {
    const key = this.#nextServedKey++;
    this.#served.set(key, backing);
    try {
      const r = await this.#call(Op.MEMORY_CREATE, 32, (f) => {
        f.writeUInt8(Backing.SERVED, 16);
        f.writeUInt8(perms & Perm.RW, 17);
        f.writeUInt16LE(0, 18); // flags, 0
        f.writeUInt32LE(0, 20);
        writeU64(f, 0, 24);
        writeU64(f, size, 32);
        writeU64(f, key, 40);
      });
      return r.readUInt32LE(16);
    } catch (err) {
      this.#served.delete(key);
      throw err;
    }
  }

  /** Forget a served backing (after revoking its Memory cap). */
  releaseServed(key: number): void {
    this.#served.delete(key);
  }

  /**
   * memory_diminish: a view of `size` bytes at `offset` of `cid` with `dropPerms` removed.
   * Errors: EBADCAP, EREVOKED, ETYPE, ERANGE.
   */
  async memoryDiminish(cid: number, offset: number, size: number, dropPerms = 0): Promise<number> {
    const r = await this.#callCid(Op.MEMORY_DIMINISH, cid, 20, (f) => {
      f.writeUInt8(dropPerms & Perm.RW, 20);
      f.writeUInt8(0, 21);
      f.writeUInt16LE(0, 22);
      writeU64(f, offset, 24);
      writeU64(f, size, 32);
    });
    return r.readUInt32LE(16);
  }

  /**
   * memory_copy: copy all bytes of `src` into `dst` (third-party copy: wherever both
   * live). Errors: EBADCAP, EREVOKED, ETYPE, EPERM (src not readable or dst not
   * writable), ERANGE (src larger than dst), EFAULT (a served owner failed).
   */
  async memoryCopy(src: number, dst: number): Promise<void> {
    checkCid(src);
    checkCid(dst);
    await this.#call(Op.MEMORY_COPY, 8, (f) => {
      f.writeUInt32LE(src, 16);
      f.writeUInt32LE(dst, 20);
    });
  }

  /**
   * memory_stat: size, perms and backing of a Memory cap; for Memory on this Controller also
   * where it lies in its region (`regionOffset`, `regionKey`) and whether `memoryMap` would
   * hand its fd (`mappable`). Errors: EBADCAP, EREVOKED, ETYPE.
   */
  async memoryStat(cid: number): Promise<MemoryStat> {
    const r = await this.#callCid(Op.MEMORY_STAT, cid);
    return decodeMemoryDescriptor(r, 16, r.readUInt8(24), r.readUInt8(25), r.readUInt8(26), 32);
  }

  /**
   * memory_map: an fd of the shared region under Memory cap `cid`, to map for device I/O
   * straight into it (adaptors; see libfractos/region-maps.ts). Given only for shared Memory on
   * this Controller, over a unix socket, to a cap that may read and covers the whole region
   * (or a region its owner shares whole); read-only unless the cap may write. The caller owns
   * the fd. Errors: EBADCAP, EREVOKED, ETYPE, ENOTLOCAL (Memory on another Controller), EPERM
   * (served Memory, tcp channel, no READ, a part of a region not shared whole), EPROTO (no fd came).
   */
  async memoryMap(cid: number): Promise<MemoryMapping> {
    checkCid(cid);
    const { reply: f, fds } = await this.callWithFds(Op.MEMORY_MAP, 4, (b) => b.writeUInt32LE(cid, 16));
    if (fds.length !== 1) {
      for (const fd of fds) closeFd(fd);
      throw new FractosError('EPROTO', `memory_map reply came with ${fds.length} fds, not 1`);
    }
    return { fd: fds[0]!, regionKey: readU64(f, 16), regionSize: readU64(f, 24), regionOffset: readU64(f, 32), size: readU64(f, 40), perms: f.readUInt8(48) };
  }

  // ---------------------------------------------------------------------------------
  // Requests

  #argsCall(op: number, head: number, args: RequestArgs | undefined): Promise<Buffer> {
    checkArgs(args);
    return this.#call(op, 4 + argsBytes(args, 4), (f) => {
      f.writeUInt32LE(head, 16);
      writeArgs(f, 20, args, writeCid, 4);
    });
  }

  /** request_create: a new Request served by this Process under `tag`. Returns its cid. */
  async requestCreate(tag: number, args?: RequestArgs): Promise<number> {
    return (await this.#argsCall(Op.REQUEST_CREATE, tag >>> 0, args)).readUInt32LE(16);
  }

  /** request_derive: a child Request with more arguments. Errors: EARGSET, EBADCAP, EREVOKED, ETYPE, ERANGE. */
  async requestDerive(cid: number, args: RequestArgs): Promise<number> {
    checkCid(cid);
    return (await this.#argsCall(Op.REQUEST_DERIVE, cid, args)).readUInt32LE(16);
  }

  /**
   * request_invoke: deliver the Request (with `args` added) to its provider. Resolves once
   * delivered (one-way; results travel through continuations). Errors: EBADCAP, EREVOKED,
   * ETYPE, EARGSET, ERANGE, EAGAIN (provider's queue full).
   *
   * `quiet`: the caller waits for the invocation's continuation anyway, so on a queue pair
   * its success REPLY does not wake this Process by itself; the promise resolves when the
   * reply is read (with the next frame that wakes it). A Process with request handlers
   * sleeps for loud frames only; one without handlers is woken by quiet replies too, so it
   * never waits for nothing. Failures always wake (typed error). docs/queues.md "No
   * wake-up for nothing".
   */
  async requestInvoke(cid: number, args?: RequestArgs, opts?: { quiet?: boolean }): Promise<void> {
    checkCid(cid);
    await this.#argsCall(opts?.quiet ? Op.REQUEST_INVOKE_QUIET : Op.REQUEST_INVOKE, cid, args);
  }

  /**
   * request_invoke for hot paths: `done(err)` instead of a promise (no promise, closure or
   * async frame per call; `done` can be bound once per caller slot). `done(null)` once the
   * REPLY is read, or the error requestInvoke would reject with (EBADCAP, EREVOKED, ...,
   * EDISCONNECTED); never called synchronously. `quiet` as requestInvoke's.
   */
  requestInvokeCb(cid: number, args: RequestArgs | undefined, quiet: boolean, done: (err: FractosError | null) => void): void {
    let err: FractosError | null = null;
    if (this.#closed) err = new FractosError('EDISCONNECTED', 'channel closed');
    else {
      try {
        checkCid(cid);
        checkArgs(args);
      } catch (e) {
        err = e as FractosError;
      }
    }
    if (err) {
      const e = err;
      queueMicrotask(() => done(e));
      return;
    }
    const seq = this.#calls.add(done);
    const f = allocFrame(quiet ? Op.REQUEST_INVOKE_QUIET : Op.REQUEST_INVOKE, seq, 4 + argsBytes(args, 4));
    f.writeUInt32LE(cid, 16);
    writeArgs(f, 20, args, writeCid, 4);
    this.#link.send(f);
  }

  /** Register the handler of a tag (request_receive). */
  onRequest(tag: number, handler: RequestHandler): void {
    this.#handlers.set(tag >>> 0, handler);
    if (this.#link instanceof UnixLink) this.#link.setWakeAll(false);
  }

  /**
   * Register a typed handler for a schema. A delivery whose immediates do not decode (a
   * string length prefix beyond the field or the set bytes, a u64 of 2^53 or more) never
   * reaches `handler`: its `onError` continuation (when the schema has that slot and the
   * delivery set it) gets the decode error (EINVAL, or EPROTO for anything untyped);
   * without one the delivery is dropped and a 'handlerError' event (or, with no listener,
   * a line on stderr) tells why.
   */
  serve<I extends Record<string, FieldType>, C extends readonly string[]>(
    schema: RequestSchema<I, C>,
    handler: (args: { imms: ImmValues<I>; caps: CapValues<C> }, inv: Invocation) => void | Promise<unknown>,
  ): void {
    const onError = (schema.capNames as readonly string[]).includes('onError') ? schema.slot('onError' as C[number]) : -1;
    this.onRequest(schema.tag, (inv) => {
      let args: { imms: ImmValues<I>; caps: CapValues<C> };
      try {
        args = schema.decode(inv);
      } catch (err) {
        const e = err instanceof FractosError ? err : new FractosError('EPROTO', `${schema.name}: ${String(err)}`);
        const cont = onError >= 0 ? inv.caps[onError] ?? 0 : 0;
        if (cont) return this.replyError(cont, e.code, e.message);
        if (this.listenerCount('handlerError') > 0) this.emit('handlerError', e, inv);
        else process.stderr.write(`fractos: ${this.name}: dropped a ${schema.name} delivery with no onError: ${e.message}\n`);
        return;
      }
      return handler(args, inv);
    });
  }

  /** Create a Request of `schema` served here, with some arguments preset. */
  async createRequest<I extends Record<string, FieldType>, C extends readonly string[]>(
    schema: RequestSchema<I, C>,
    imms: Partial<ImmValues<I>> = {},
    caps: Partial<CapValues<C>> = {},
  ): Promise<number> {
    return this.requestCreate(schema.tag, schema.args(imms, caps));
  }

  /** Invoke `cid` with arguments named by `schema`. */
  invoke<I extends Record<string, FieldType>, C extends readonly string[]>(
    cid: number,
    schema: RequestSchema<I, C>,
    imms: Partial<ImmValues<I>> = {},
    caps: Partial<CapValues<C>> = {},
  ): Promise<void> {
    return this.requestInvoke(cid, schema.args(imms, caps));
  }

  /** Invoke an error continuation (`ErrorReply`) with a code and a message. Never throws. */
  async replyError(cid: number, code: ErrorCode, message = ''): Promise<void> {
    if (!cid) return;
    try {
      await this.requestInvoke(cid, ErrorReply.args({ code: errorCodeToWire(code), message: truncUtf8(withoutCode(code, message), 240) }));
    } catch {
      // The client may be gone; nothing to tell.
    }
  }

  /**
   * The synchronous-RPC pattern of paper §3.4 (A -> B -> A'): create one-shot `onSuccess`
   * and `onError` continuation Requests, invoke `cid` with them in the schema's
   * `onSuccess`/`onError` slots plus `imms`/`caps`, and resolve with the invocation of
   * `onSuccess`, or reject with the FractosError carried by `onError`. The continuations
   * are made ahead (a small pool, so the call does not wait for their creation), used by
   * this call only, and revoked afterwards. Errors: those of request_invoke, the callee's
   * code, ETIMEDOUT.
   */
  async rpc<I extends Record<string, FieldType>, C extends readonly string[]>(
    cid: number,
    schema: RequestSchema<I, C>,
    imms: Partial<ImmValues<I>> = {},
    caps: Partial<CapValues<C>> = {},
    opts: { timeoutMs?: number } = {},
  ): Promise<Invocation> {
    const pair = this.#contPool.pop() ?? (await this.#newContinuations());
    this.#refillContinuations();
    const { id, ok, fail } = pair;
    let timer: NodeJS.Timeout | undefined;
    try {
      const reply = new Promise<Invocation>((resolve, reject) => {
        this.#rpcs.set(id, { resolve, reject });
        if (opts.timeoutMs) timer = setTimeout(() => reject(new FractosError('ETIMEDOUT', `${schema.name} timed out after ${opts.timeoutMs} ms`)), opts.timeoutMs);
      });
      // A close or timeout may reject `reply` while the invoke below is still in flight: mark it
      // handled now (it is awaited right after), so that is not an unhandled rejection.
      reply.catch(() => {});
      const all = { ...caps, onSuccess: ok, onError: fail } as Partial<CapValues<C>>;
      await this.requestInvoke(cid, schema.args(imms, all));
      return await reply;
    } finally {
      clearTimeout(timer);
      this.#rpcs.delete(id);
      // One-shot: revoke both continuations, off the critical path and batched.
      this.#revokeLater(ok, fail);
    }
  }

  /**
   * Revoke finished calls' continuations in batches: at RPC_REVOKE_BATCH pending cids or
   * RPC_REVOKE_MS after the first, whichever comes first (one write for the batch instead of
   * a wake-up of the Controller per call), then drop this Process's entries. Until then a
   * late reply finds no call under its tag and is dropped (call ids are unique).
   */
  #revokeLater(...cids: number[]): void {
    this.#revokes.push(...cids);
    if (this.#revokes.length >= RPC_REVOKE_BATCH) this.#flushRevokes();
    else this.#revokeTimer ??= setTimeout(this.#flushRevokes, RPC_REVOKE_MS).unref();
  }

  readonly #flushRevokes = (): Promise<unknown> => {
    clearTimeout(this.#revokeTimer);
    this.#revokeTimer = undefined;
    const cids = this.#revokes;
    this.#revokes = [];
    if (this.#closed) return Promise.resolve();
    return Promise.all(cids.map((c) => {
      const drop = (): void => this.#dropLater(c);
      return this.capRevoke(c).then(drop, drop);
    }));
  };

  /**
   * Revoke now the continuations `rpc` made ahead and those of finished calls (batched
   * otherwise), and resolve once the Controller has dropped them: it then holds no `rpc`
   * continuation of this Process but those of calls in flight. The next `rpc` makes new ones.
   * For a Process going idle, and for tests that count the Controller's objects.
   */
  async rpcSettle(): Promise<void> {
    while (this.#contRefill) await this.#contRefill;
    for (const c of this.#contPool) this.#revokes.push(c.ok, c.fail);
    this.#contPool = [];
    await this.#flushRevokes();
    if (!this.#closed) await this.nullOp(); // after the batched CAP_DROP_MANY
  }

  /**
   * A fresh pair of one-shot continuations for one call: `ok` and `fail` Requests served
   * here under tags that name the call id (RPC_TAG_BIT | id << 1, | 1 for fail). Call ids
   * are not reused for 2^30 calls, and each pair is revoked after its call, so a late or
   * forged reply never answers another call.
   */
  async #newContinuations(): Promise<{ id: number; ok: number; fail: number }> {
    const id = this.#nextRpc;
    this.#nextRpc = this.#nextRpc >= 0x3fffffff ? 1 : this.#nextRpc + 1;
    const okTag = (RPC_TAG_BIT | (id << 1)) >>> 0;
    const [ok, fail] = await Promise.all([this.requestCreate(okTag), this.requestCreate(okTag | 1)]);
    return { id, ok, fail };
  }

  /**
   * Keep RPC_POOL_LOW..RPC_POOL_HIGH pairs made ahead (after the first rpc), so a call does not wait for
   * their creation: the request_creates are pipelined in the background. Each pair is still
   * used by one call only and revoked after it. Bounded: RPC_POOL_HIGH pairs (2 Requests each).
   */
  #refillContinuations(): void {
    if (this.#contRefill || this.#closed || this.#contPool.length >= RPC_POOL_LOW) return;
    const n = RPC_POOL_HIGH - this.#contPool.length;
    const made: Promise<void>[] = [];
    for (let i = 0; i < n; i++) made.push(this.#newContinuations().then((pair) => {
      if (!this.#closed) this.#contPool.push(pair);
    }));
    this.#contRefill = Promise.allSettled(made).then(() => {
      this.#contRefill = null;
    });
  }

  // ---------------------------------------------------------------------------------
  // Capabilities

  /** cap_create_revtree: a new child object under the object of `cid`, revocable on its own. */
  async capCreateRevtree(cid: number): Promise<number> {
    return (await this.#callCid(Op.CAP_REVTREE, cid)).readUInt32LE(16);
  }

  /** cap_revoke: revoke the object `cid` names and its revocation tree, for every holder. */
  async capRevoke(cid: number): Promise<void> {
    await this.#callCid(Op.CAP_REVOKE, cid);
  }

  /** cap_drop: remove the caller's entries (not a revocation). Errors: EBADCAP. */
  async capDrop(...cids: number[]): Promise<void> {
    await Promise.all(cids.map((c) => this.#callCid(Op.CAP_DROP, c)));
  }

  /** monitor_receive: `cb` fires once when `cid`'s object is revoked or its owner fails. */
  async monitorReceive(cid: number, cb: (ev: MonitorEvent) => void): Promise<void> {
    const id = this.#nextMonitor++;
    this.#monitors.set(id, cb);
    try {
      await this.#callCid(Op.MONITOR_RECEIVE, cid, 4, (f) => f.writeUInt32LE(id, 20));
    } catch (err) {
      this.#monitors.delete(id);
      throw err;
    }
  }

  /** monitor_delegate: `cb` fires once when every cap delegated from `cid` is gone. */
  async monitorDelegate(cid: number, cb: (ev: MonitorEvent) => void): Promise<void> {
    const id = this.#nextMonitor++;
    this.#monitors.set(id, cb);
    try {
      await this.#callCid(Op.MONITOR_DELEGATE, cid, 4, (f) => f.writeUInt32LE(id, 20));
    } catch (err) {
      this.#monitors.delete(id);
      throw err;
    }
  }

  /**
   * kv_put: publish `cid` under `name` (bootstrap), replicated to peer Controllers. The name
   * belongs to this Process: it alone can replace it, and it is removed when this Process goes
   * away. Errors: EEXIST (another Process, on any Controller, publishes `name`), EINVAL (not
   * 1..256 characters), ENOSPC (this Process publishes 1024 names), EBADCAP, EREVOKED.
   * @param opts.republish retry EEXIST every 50 ms for up to REPUBLISH_WAIT_MS (default:
   *   no retry): a service that restarts republishes names of its previous run, which its
   *   Controller (and the peers) drop only once they see that run's channel close.
   */
  async kvPut(name: string, cid: number, opts: { republish?: boolean } = {}): Promise<void> {
    const n = Buffer.from(name, 'utf8');
    const deadline = Date.now() + (opts.republish ? REPUBLISH_WAIT_MS : 0);
    for (;;) {
      try {
        await this.#callCid(Op.KV_PUT, cid, n.length, (f) => n.copy(f, 20));
        return;
      } catch (err) {
        if ((err as FractosError).code !== 'EEXIST' || Date.now() >= deadline) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** kv_get: a cid for the cap published under `name`. Errors: ENOENT. */
  async kvGet(name: string): Promise<number> {
    const n = Buffer.from(name, 'utf8');
    return (await this.#call(Op.KV_GET, n.length, (f) => n.copy(f, 16))).readUInt32LE(16);
  }

  /** kv_get, retried until the name appears or `timeoutMs` passes. Errors: ENOENT. */
  async kvWait(name: string, timeoutMs = 10_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await this.kvGet(name);
      } catch (err) {
        if ((err as FractosError).code !== 'ENOENT' || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** Per-link frame and byte counters of this Process's Controller. */
  async stats(): Promise<ControllerStats> {
    const r = await this.#call(Op.STATS, 0, null);
    const n = r.readUInt16LE(24);
    const links: ControllerStats['links'] = [];
    let o = 26;
    for (let i = 0; i < n; i++) {
      const len = r.readUInt16LE(o + 38);
      links.push({
        kind: r.readUInt8(o) === 0 ? 'process' : 'peer',
        id: r.readUInt32LE(o + 2),
        live: (r.readUInt8(o + 1) & 1) === 0,
        framesIn: readU64(r, o + 6),
        framesOut: readU64(r, o + 14),
        bytesIn: readU64(r, o + 22),
        bytesOut: readU64(r, o + 30),
        name: r.toString('utf8', o + 40, o + 40 + len),
      });
      o += 40 + len;
    }
    return { controller: r.readUInt32LE(16), epoch: r.readUInt32LE(20), links };
  }

  /**
   * The Controller's tables and its invocation records from seq `since` on
   * (docs/protocol.md "Introspection"; pass the previous reply's `nextSeq` to get only new
   * ones). Errors: EPERM (not a Process of the Controller's uid on a unix socket).
   */
  async introspect(since = 0): Promise<Introspection> {
    return decodeIntrospect(await this.#call(Op.INTROSPECT, 8, (f) => writeU64(f, since, 16)));
  }

  /**
   * kv_list: the bootstrap names this Controller holds, sorted by name (paged: at most
   * 64 KiB of entries per call). `external`: the names live in etcd and these are only
   * this Controller's own (list the cluster's with `fractos names --etcd`); otherwise the
   * Controller's replicated map (every name it knows). Errors: EPERM (not a Process of the
   * Controller's uid on a unix socket, as INTROSPECT).
   */
  async kvList(): Promise<{ external: boolean; names: ListedName[] }> {
    const names: ListedName[] = [];
    for (;;) {
      const start = names.length;
      const r = await this.#call(Op.KV_LIST, 4, (f) => f.writeUInt32LE(start, 16));
      const external = (r.readUInt8(16) & 1) !== 0;
      const total = r.readUInt32LE(17);
      const n = r.readUInt16LE(21);
      let o = 23;
      for (let i = 0; i < n; i++) {
        const len = r.readUInt16LE(o + 28);
        names.push({
          controller: r.readUInt32LE(o), epoch: r.readUInt32LE(o + 4), proc: r.readUInt32LE(o + 8),
          revision: readU64(r, o + 12), since: readU64(r, o + 20), name: r.toString('utf8', o + 30, o + 30 + len),
        });
        o += 30 + len;
      }
      if (n === 0 || names.length >= total) return { external, names };
    }
  }

  /** Stop reading the channel (tests of back-pressure); `resume()` starts again. */
  pause(): void {
    this.#paused = true;
    this.#link.pause();
  }
  resume(): void {
    this.#paused = false;
    this.#link.resume();
  }

  /** Close the channel; the Controller revokes every object this Process owns. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#link.close();
    await this.#link.released();
  }

  // ---------------------------------------------------------------------------------
  // Incoming frames

  #onFrame(f: Buffer): void {
    const op = frameOp(f);
    try {
      switch (op) {
        case Op.REPLY:
          this.#calls.complete(f);
          return;
        case Op.DELIVER:
          this.#onDeliver(f);
          return;
        case Op.MONITOR_FIRE: {
          const id = f.readUInt32LE(16);
          const reason = f.readUInt16LE(20);
          const cb = this.#monitors.get(id);
          if (cb) {
            this.#monitors.delete(id);
            cb(reason === MonitorReason.REVOKED ? 'revoked' : reason === MonitorReason.OWNER_FAILED ? 'owner-failed' : 'delegates-gone');
          }
          return;
        }
        case Op.MEM_READ:
        case Op.MEM_WRITE:
          this.#onServed(op, f);
          return;
        default:
          throw new FractosError('EPROTO', `unexpected op 0x${op.toString(16)} from controller`);
      }
    } catch (err) {
      this.#link.close(err as Error);
    }
  }

  #onDeliver(f: Buffer): void {
    const tag = f.readUInt32LE(16);
    const { args, end } = readArgs(f, 20, f.length, readCid, 4, this.#limits);
    this.#ack();
    let descs: MemoryDescriptor[] | null = null;
    if (end + 2 <= f.length) {
      // u16 n, n x (u16 slot, u8 perms, u8 backing, u8 flags, u8 0, u16 0, u64 size, u64 regionOffset, u64 servedKey, u64 regionKey)
      const n = f.readUInt16LE(end);
      if (end + 2 + n * DESCRIPTOR_BYTES > f.length) throw new FractosError('EPROTO', `DELIVER of ${f.length} bytes with ${n} Memory descriptors`);
      descs = [];
      for (let i = 0, o = end + 2; i < n; i++, o += DESCRIPTOR_BYTES) {
        descs[f.readUInt16LE(o)] = decodeMemoryDescriptor(f, o + 8, f.readUInt8(o + 2), f.readUInt8(o + 3), f.readUInt8(o + 4), o + 16);
      }
    }
    const caps: number[] = [];
    if (args.caps) for (const c of args.caps) caps[c.slot] = c.cap;
    for (let i = 0; i < caps.length; i++) caps[i] ??= 0;
    const inv = new Delivered(tag, args.imms ?? NO_IMMS, caps, descs);
    if (tag & RPC_TAG_BIT) {
      const id = (tag & ~RPC_TAG_BIT) >>> 1;
      const w = this.#rpcs.get(id);
      if (w) {
        if (tag & 1) {
          let e: { code: number; message: string };
          try {
            e = ErrorReply.decode(inv).imms;
          } catch (err) {
            e = { code: errorCodeToWire('EPROTO'), message: `malformed error reply: ${(err as Error).message}` };
          }
          // No stack trace: it would only name this delivery path, not the caller, and
          // capturing one is most of an error reply's cost (negative lookups are common).
          const limit = Error.stackTraceLimit;
          Error.stackTraceLimit = 0;
          const err = new FractosError(errorCodeFromWire(e.code), e.message);
          Error.stackTraceLimit = limit;
          w.reject(err);
          this.#dropDelivered(inv);
        } else {
          // The RPC's caller owns the reply's caps: nothing is dropped automatically.
          w.resolve(inv);
        }
      } else this.#dropDelivered(inv);
      return;
    }
    const h = this.#handlers.get(tag);
    if (!h) {
      this.emit('unhandled', inv);
      this.#dropDelivered(inv);
      return;
    }
    let r: void | Promise<unknown>;
    try {
      r = h(inv);
    } catch (err) {
      this.emit('handlerError', err, inv);
      this.#dropDelivered(inv);
      return;
    }
    if (r && typeof (r as Promise<unknown>).then === 'function') {
      (r as Promise<unknown>).then(
        () => this.#dropDelivered(inv),
        (err) => {
          this.emit('handlerError', err, inv);
          this.#dropDelivered(inv);
        },
      );
    } else this.#dropDelivered(inv);
  }

  /** Drop the delivered cids of `inv` but those it retained. */
  #dropDelivered(inv: Delivered): void {
    for (const c of inv.caps) if (c && !inv.retained?.has(c)) this.#dropLater(c);
  }

  #drops: number[] = [];
  #dropScheduled = false;

  /** Drop a delivered cid: batched into one one-way CAP_DROP_MANY per tick. */
  #dropLater(cid: number): void {
    this.#drops.push(cid);
    if (this.#dropScheduled) return;
    this.#dropScheduled = true;
    process.nextTick(() => {
      this.#dropScheduled = false;
      const d = this.#drops;
      this.#drops = [];
      if (this.#closed) return;
      const f = allocFrame(Op.CAP_DROP_MANY, 0, 4 * d.length);
      for (let i = 0; i < d.length; i++) f.writeUInt32LE(d[i]!, HEADER_BYTES + 4 * i);
      this.#link.send(f);
    });
  }

  /** Return delivery credits, one DELIVER_ACK per tick. */
  /**
   * Acknowledge a delivery (one DELIVER_ACK per tick). On a queue pair the acks are
   * published without waking the Controller (docs/queues.md "No wake-up for nothing"): a
   * Controller that waits for this Process's credits sleeps with WAKE_SLEEPING_ALL and is
   * woken by them; otherwise it reads them with its next woken batch.
   */
  #ack(): void {
    this.#acks++;
    if (this.#ackScheduled) return;
    this.#ackScheduled = true;
    process.nextTick(() => {
      this.#ackScheduled = false;
      const f = allocFrame(Op.DELIVER_ACK, 0, 4);
      f.writeUInt32LE(this.#acks, 16);
      this.#acks = 0;
      if (this.#link instanceof UnixLink) this.#link.sendQuiet(f);
      else this.#link.send(f);
    });
  }

  #onServed(op: number, f: Buffer): void {
    const seq = frameSeq(f);
    const key = readU64(f, 16);
    const offset = readU64(f, 24);
    const b = this.#served.get(key);
    const fail = (err: unknown): void => {
      const code = err instanceof FractosError ? err.code : 'EFAULT';
      this.#link.send(errorReply(seq, errorCodeToWire(code), err instanceof Error ? err.message : String(err)));
    };
    if (!b) return fail(new FractosError('EFAULT', `no served memory with key ${key}`));
    try {
      if (op === Op.MEM_READ) {
        const len = f.readUInt32LE(32);
        const send = (data: Uint8Array): void => {
          if (data.length !== len) return fail(new FractosError('EFAULT', `served read returned ${data.length} of ${len} bytes`));
          const r = allocFrame(Op.REPLY, seq, len);
          r.set(data, HEADER_BYTES);
          this.#link.send(r);
        };
        const d = b.read(offset, len);
        if (d instanceof Promise) d.then(send, fail);
        else send(d);
      } else {
        const d = b.write(offset, f.subarray(32));
        const ok = (): void => this.#link.send(allocFrame(Op.REPLY, seq, 0));
        if (d instanceof Promise) d.then(ok, fail);
        else ok();
      }
    } catch (err) {
      fail(err);
    }
  }

  #onClose(err?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#calls.failAll('EDISCONNECTED', err ? `channel closed: ${err.message}` : 'channel closed');
    for (const w of this.#rpcs.values()) w.reject(new FractosError('EDISCONNECTED', 'channel closed'));
    this.#rpcs.clear();
    this.#contPool = [];
    clearTimeout(this.#revokeTimer);
    this.#revokes = [];
    // Our fds of the regions (their mappings stay valid while referenced).
    for (const r of this.#regions.values()) {
      if (r.fd >= 0) closeSync(r.fd);
      r.fd = -1;
    }
    this.#regions.clear();
    this.emit('close', err);
  }

  /** Whether reading is paused. */
  get paused(): boolean {
    return this.#paused;
  }
}

const NO_IMMS: ImmRange[] = [];

/**
 * A delivered invocation (Invocation): one object per DELIVER, its methods on the prototype
 * and `imms`/`ranges` built on first use (the hot path reads a few fields with `view`).
 */
class Delivered implements Invocation {
  readonly tag: number;
  readonly caps: number[];
  retained: Set<number> | null = null;
  readonly #segs: readonly ImmRange[];
  readonly #descs: MemoryDescriptor[] | null;
  #whole: Buffer | null = null;
  #ranges: { offset: number; length: number }[] | null = null;

  constructor(tag: number, segs: readonly ImmRange[], caps: number[], descs: MemoryDescriptor[] | null) {
    this.tag = tag;
    this.#segs = segs;
    this.caps = caps;
    this.#descs = descs;
  }

  get imms(): Buffer {
    if (!this.#whole) {
      let size = 0;
      for (const r of this.#segs) size = Math.max(size, r.offset + r.bytes.length);
      const whole = Buffer.alloc(size);
      for (const r of this.#segs) whole.set(r.bytes, r.offset);
      this.#whole = whole;
    }
    return this.#whole;
  }

  get ranges(): readonly { offset: number; length: number }[] {
    return (this.#ranges ??= this.#segs.map((r) => ({ offset: r.offset, length: r.bytes.length })));
  }

  view(offset: number, length: number): Buffer {
    return immView(this.#segs, offset, length);
  }

  retain(cid: number): void {
    (this.retained ??= new Set()).add(cid);
  }

  memory(slot: number): MemoryDescriptor | undefined {
    return this.#descs?.[slot];
  }
}

/** Bytes of one Memory descriptor in DELIVER. */
const DESCRIPTOR_BYTES = 40;

/**
 * A Memory descriptor (memory_stat's reply and DELIVER's): u64 size at `at`, then from `keys`:
 * u64 regionOffset, u64 servedKey, u64 regionKey.
 */
function decodeMemoryDescriptor(f: Buffer, at: number, perms: number, backing: number, flags: number, keys: number): MemoryDescriptor {
  return {
    size: readU64(f, at),
    perms,
    backing: backing === Backing.SHARED ? 'shared' : 'served',
    local: (flags & MemFlag.LOCAL) !== 0,
    self: (flags & MemFlag.SELF) !== 0,
    mappable: (flags & MemFlag.MAPPABLE) !== 0,
    regionOffset: readU64(f, keys),
    servedKey: readU64(f, keys + 8),
    regionKey: readU64(f, keys + 16),
  };
}



/** Bytes [offset, offset+length) of an immediate area given as ranges: a view when one range covers it, else assembled (zeros where unset). */
function immView(segs: readonly ImmRange[], offset: number, length: number): Buffer {
  for (const r of segs) {
    if (r.offset <= offset && offset + length <= r.offset + r.bytes.length) {
      const b = r.bytes as Buffer;
      return b.subarray(offset - r.offset, offset - r.offset + length);
    }
  }
  const out = Buffer.alloc(length);
  for (const r of segs) {
    const lo = Math.max(offset, r.offset);
    const hi = Math.min(offset + length, r.offset + r.bytes.length);
    if (lo < hi) out.set(r.bytes.subarray(lo - r.offset, hi - r.offset), lo - offset);
  }
  return out;
}

function checkCid(cid: number): void {
  if (!Number.isInteger(cid) || cid < 0 || cid > 0xffffffff) throw new FractosError('EBADCAP', `not a cid: ${cid}`);
}

function checkArgs(args: RequestArgs | undefined): void {
  if (!args) return;
  if (args.caps) for (const c of args.caps) {
    checkCid(c.cap);
    if (!Number.isInteger(c.slot) || c.slot < 0 || c.slot > 0xffff) throw new FractosError('ERANGE', `bad cap slot ${c.slot}`);
  }
  if (args.imms) for (const r of args.imms) {
    if (!Number.isInteger(r.offset) || r.offset < 0 || r.offset > 0xffffffff) throw new FractosError('ERANGE', `bad immediate offset ${r.offset}`);
  }
}

function truncUtf8(s: string, max: number): string {
  let b = Buffer.from(s, 'utf8');
  if (b.length <= max) return s;
  b = b.subarray(0, max);
  return b.toString('utf8').replace(/\uFFFD$/, '');
}

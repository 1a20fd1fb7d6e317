/**
 * The block-device adaptor service (DESIGN.md §5, paper §5 "NVMe adaptor"): a Process that
 * serves the Requests of blockdev-adaptor/schema.ts over a `BlockBackend` and the persisted
 * `VolumeTable`.
 *
 * I/O path (read/write of a volume), per invocation:
 * 1. checks in a fixed order: volume exists (ENOENT), buffer cap present (EINVAL), length > 0
 *    and <= MAX_IO_BYTES, offset and length multiples of the block size (EINVAL), range inside
 *    the volume (ERANGE);
 * 2. `memoryStat(buffer)`: perms (EPERM: a read needs WRITE on the buffer, a write needs READ),
 *    size >= length (ERANGE);
 * 3. direct: a shared Memory object on this host whose view is 4 KiB-aligned and whose
 *    region's fd the Controller hands us (`mappable`: memory_map, libfractos/region-maps.ts,
 *    cached per region key) is mapped and the device DMAs straight into / out of it;
 *    otherwise a bounce slot of the adaptor's own shared region is used with `memoryCopy`;
 * 4. the continuation (`onSuccess` with IoReply, or `onError` with a code) is invoked; a
 *    write with WriteFlags.FUA is followed by a (coalesced) device flush first.
 * Every failure goes to onError; nothing a client sends can crash the adaptor.
 *
 * The plain case of this path (all checks pass, a descriptor of a region already mapped here,
 * aligned, no FUA) runs natively when the backend has a native I/O loop
 * (`BlockBackend.nativeLoop`, native/uring/src/ioloop.cc, docs/blockdev-backend.md "The native
 * I/O loop"): deliveries are taken off the channel in C++, the I/O goes straight into the
 * mapping and the continuation is invoked, with no JS; everything else comes here as before.
 * FRACTOS_BLOCKDEV_NATIVE=0 (or `native: false`) turns it off.
 */
import { FractosError, errnoFromCode, errnoFromError, errorCodeFromErrno, type ErrorCode } from '../libfractos/errors.js';
import { connect, type Process, type SharedRegion } from '../libfractos/process.js';
import { Perm } from '../libfractos/protocol.js';
import type { Invocation, MemoryDescriptor } from '../libfractos/schema.js';
import { RegionMaps } from '../libfractos/region-maps.js';
import type { BlockBackend, IoCallback } from './backend.js';
import type { IoLoopStats, NativeIoLoop } from '../native/uring/index.js';
import { claimDevice, type DeviceClaim } from './device-claim.js';
import { FairSlots, mayStall } from './fair-slots.js';
import { proofMatches } from './admin-secret.js';
import {
  AdminClaim, AdminReply, DoneReply, IoReply, MAX_LISTED_VOLUMES, VolumeCreate, VolumeDelete, VolumeList, VolumeListReply, VolumeOpen, VolumeRead, VolumeReply, VolumeWrite, WriteFlags,
} from './schema.js';
import { UringBackend } from './uring-backend.js';
import { VolumeTable, type Volume } from './volumes.js';

/** Largest read/write one invocation may carry, bytes. */
export const MAX_IO_BYTES = 2 << 20;
/** Bounce slots (for Memory that cannot be mapped here), each MAX_IO_BYTES. */
const BOUNCE_SLOTS = 8;
/**
 * Most bounce slots one volume's I/O holds at once (FairSlots): a client whose Memory never
 * answers a memory_copy stalls at most this many, the other volumes keep the rest.
 */
export const BOUNCE_PER_VOLUME = 2;
/**
 * Most bounce slots copies with may-stall Memory (served, or on another Controller: see
 * `mayStall`) hold together, all volumes: the other half is left to copies with shared
 * Memory on this host (which the Controller copies itself), however many volumes a
 * stalling client holds (the FS hands one per DAX open).
 */
export const BOUNCE_MAX_STALLING = BOUNCE_SLOTS / 2;
/** Least time between two warn lines about deliveries dropped for want of an onError cap (ms). */
const DROP_LOG_MS = 10_000;

/** Options of `BlockdevService.start`. */
export interface BlockdevOptions {
  /** Block device or regular file, opened with O_DIRECT and claimed exclusively (device-claim.ts) for the service's life. */
  device: string;
  /** Controller address (`unix:PATH` / `tcp://HOST:PORT`). */
  controller: string;
  /** io_uring queue depth (default 64). */
  queueDepth?: number;
  /** Bootstrap prefix (default `blockdev`). */
  name?: string;
  /** Format the device if it has no volume table (an already formatted device is loaded). */
  format?: boolean;
  /** Zero a new volume before answering volume_create (default true: no data leaks between volume users). */
  zeroOnCreate?: boolean;
  /**
   * The volume-administration secret (admin-secret.ts `readAdminSecret`): admin_claim must
   * carry its proof, else EPERM. Without one the first Process to ask gets the administration
   * (start warns so).
   */
  adminSecret?: Uint8Array;
  /**
   * Serve the plain read/write case in the native I/O loop (docs/blockdev-backend.md); default
   * true unless the environment says FRACTOS_BLOCKDEV_NATIVE=0. Needs a unix channel and a
   * backend with `nativeLoop`; otherwise every I/O takes the JS path.
   */
  native?: boolean;
  /** Log sink. */
  log?: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void };
}

interface VolumeCaps {
  read: number;
  write: number;
  del: number;
}

/**
 * The volume-administration claim (one holder at a time). `gen` is preset in the holder's
 * admin Requests, so an invocation that raced the release is refused (EREVOKED).
 */
interface Claim {
  gen: number;
  /** The holder's admin Requests (list, create, open), created for this claim. */
  admin: number[];
  /** Admin Requests with delegated caps still held: the claim is released when none is left. */
  live: Set<number>;
  /** Revocation-tree children of per-volume Requests handed out under this claim, by volume. */
  vols: Map<number, VolumeCaps>;
}

const F_VOLUME = VolumeRead.fields.find((f) => f.name === 'volume')!.offset;
const F_OFFSET = VolumeRead.fields.find((f) => f.name === 'offset')!.offset;
const F_LENGTH = VolumeRead.fields.find((f) => f.name === 'length')!.offset;
const F_FLAGS = VolumeWrite.fields.find((f) => f.name === 'flags')!.offset;
const S_BUFFER = VolumeRead.slot('buffer');
const S_OK = VolumeRead.slot('onSuccess');
const S_ERR = VolumeRead.slot('onError');
const IO_REPLY_OFF = IoReply.fields[0]!.offset;

/** u32 immediate at `off` (0 where unset). */
function u32At(inv: Invocation, off: number): number {
  return inv.view(off, 4).readUInt32LE(0);
}
/** u64 immediate at `off` (0 where unset; -1 beyond 2^53). */
function u64At(inv: Invocation, off: number): number {
  const b = inv.view(off, 8);
  const hi = b.readUInt32LE(4);
  if (hi >= 0x200000) return -1;
  return hi * 0x100000000 + b.readUInt32LE(0);
}

/** Coalesces device flushes: a flush started after a write completed covers it. */
class Flusher {
  #inflight = false;
  #next: IoCallback[] = [];
  constructor(private readonly backend: BlockBackend) {}
  request(cb: IoCallback): void {
    this.#next.push(cb);
    if (!this.#inflight) this.#start();
  }
  #start(): void {
    const list = this.#next;
    this.#next = [];
    this.#inflight = true;
    this.backend.flush((res) => {
      this.#inflight = false;
      for (const cb of list) cb(res);
      if (this.#next.length) this.#start();
    });
  }
}

export class BlockdevService {
  readonly proc: Process;
  readonly backend: BlockBackend;
  readonly table: VolumeTable;
  readonly name: string;
  readonly formatted: boolean;
  readonly #log: BlockdevOptions['log'];
  readonly #zero: boolean;
  /** The admin secret (BlockdevOptions.adminSecret), or null: first come, first served. */
  readonly #secret: Buffer | null;
  readonly #caps = new Map<number, VolumeCaps>();
  #claim: Claim | null = null;
  #claiming = false;
  #claimGen = 0;
  /** Client regions mapped for direct I/O (by region key, bounded). */
  readonly #maps: RegionMaps;
  readonly #flusher: Flusher;
  #bounce!: SharedRegion;
  readonly #bounceCids: number[] = [];
  /** Bounce slots, shared fairly between volumes (BOUNCE_PER_VOLUME each per class at most, BOUNCE_MAX_STALLING may-stall). */
  readonly bounceSlots = new FairSlots<number>(BOUNCE_SLOTS, BOUNCE_PER_VOLUME, undefined, BOUNCE_MAX_STALLING);
  #closed = false;
  #device: DeviceClaim | null = null;
  /** Client regions mapped / MEMORY_MAPs refused (for tests and stats). */
  get regionMaps(): { mapped: number; refused: number; size: number } {
    return { mapped: this.#maps.mapped, refused: this.#maps.refused, size: this.#maps.size };
  }
  readonly #counts = { direct: 0, bounce: 0, errors: 0, dropped: 0 };
  /**
   * Ops served through the direct path (JS or native) / the bounce path, errors answered,
   * failures dropped for want of an onError cap; `native`: ops the native loop served (for
   * tests and stats).
   */
  get counts(): { direct: number; bounce: number; errors: number; dropped: number; native: number } {
    const n = this.nativeStats;
    const served = n ? n.reads + n.writes + n.ioErrors : 0;
    return { ...this.#counts, direct: this.#counts.direct + served, native: served };
  }
  /** The native I/O loop (null when off or unavailable). */
  #native: NativeIoLoop | null = null;
  #nativeStats: IoLoopStats | null = null;
  /** Counters of the native I/O loop, or null when it is not in use (for tests and stats). */
  get nativeStats(): IoLoopStats | null {
    return this.#native ? this.#native.stats() : this.#nativeStats;
  }
  readonly #wantNative: boolean;
  /** Failures with no onError cap not yet reported, and when the last report was made (ms). */
  #drops = { unreported: 0, lastLogMs: -Infinity };

  private constructor(proc: Process, backend: BlockBackend, table: VolumeTable, opts: BlockdevOptions, formatted: boolean) {
    this.proc = proc;
    this.backend = backend;
    this.table = table;
    this.name = opts.name ?? 'blockdev';
    this.#log = opts.log;
    this.#zero = opts.zeroOnCreate ?? true;
    this.#secret = opts.adminSecret && opts.adminSecret.length > 0 ? Buffer.from(opts.adminSecret) : null;
    this.formatted = formatted;
    this.#flusher = new Flusher(backend);
    this.#wantNative = opts.native ?? process.env.FRACTOS_BLOCKDEV_NATIVE !== '0';
    // Mappings made for the JS path are registered with the native loop, which then serves
    // later I/O into them; a mapping that leaves the cache leaves the loop (after its I/O).
    // Regions over 4 GiB (mapped in windows) stay on the JS path.
    this.#maps = new RegionMaps(proc, {
      onMap: (key, map) => {
        if (!this.#native || map.size > 2 ** 32) return;
        try {
          this.#native.registerRegion(key, map.buffer, map.writable);
        } catch (err) {
          this.#log?.warn({ err: (err as Error).message }, 'native loop: region not registered');
        }
      },
      onDrop: (key, map) => {
        if (this.#native && map.size <= 2 ** 32) this.#native.unregisterRegion(key, map.buffer);
      },
    });
  }

  /**
   * Open the device, load (or, with `format`, create) the volume table, connect, publish
   * `${name}.admin_claim` (volume administration for one owner, see AdminClaim; with
   * `adminSecret`, only for a Process that proves it knows it). The device is
   * claimed first (before anything reads or formats it) and released by `close()`.
   * Errors: EBUSY `DEVICE is in use by blockdev pid N` (claimed by another blockdev or the fio
   * runner, or a mounted block device), those of claimDevice and UringBackend.open,
   * EIO 'format required' (unformatted device without `format`), connect's errors.
   */
  static async start(opts: BlockdevOptions): Promise<BlockdevService> {
    const claim = claimDevice(opts.device);
    let s: BlockdevService;
    try {
      s = await BlockdevService.#startClaimed(opts);
    } catch (err) {
      claim.release();
      throw err;
    }
    s.#device = claim;
    return s;
  }

  static async #startClaimed(opts: BlockdevOptions): Promise<BlockdevService> {
    const backend = await UringBackend.open(opts.device, { queueDepth: opts.queueDepth ?? 64 });
    let table: VolumeTable;
    let formatted = false;
    try {
      try {
        table = await VolumeTable.load(backend);
      } catch (err) {
        if (!opts.format || !/format required/.test((err as Error).message)) throw err;
        table = await VolumeTable.format(backend);
        formatted = true;
      }
    } catch (err) {
      await backend.close();
      throw err;
    }
    const name = opts.name ?? 'blockdev';
    let proc: Process;
    try {
      proc = await connect(opts.controller, { name, memoryDescriptors: true });
    } catch (err) {
      await backend.close();
      throw err;
    }
    const s = new BlockdevService(proc, backend, table, opts, formatted);
    try {
      await s.#init();
    } catch (err) {
      await s.close();
      throw err;
    }
    return s;
  }

  async #init(): Promise<void> {
    const p = this.proc;
    // Bounce buffers: one shared region, registered with the device (fixed buffers) once.
    this.#bounce = p.allocShared(BOUNCE_SLOTS * MAX_IO_BYTES);
    try {
      this.backend.registerBuffers?.([this.#bounce.bytes]);
    } catch (err) {
      this.#log?.warn({ err: (err as Error).message }, 'registerBuffers failed; bounce buffers not fixed');
    }
    for (let i = 0; i < BOUNCE_SLOTS; i++) {
      this.#bounceCids.push(await p.memoryCreate(this.#bounce, Perm.RW, i * MAX_IO_BYTES, MAX_IO_BYTES));
    }
    p.onRequest(VolumeRead.tag, (inv) => this.#io(inv, false));
    p.onRequest(VolumeWrite.tag, (inv) => this.#io(inv, true));
    p.serve(VolumeCreate, ({ imms, caps }) => this.#admin(imms.claim, caps.onError, (c) => this.#create(c, imms.size, caps.onSuccess, caps.onError)));
    p.serve(VolumeOpen, ({ imms, caps }) => this.#admin(imms.claim, caps.onError, (c) => this.#open(c, imms.volume, caps.onSuccess, caps.onError)));
    p.serve(VolumeDelete, ({ imms, caps }) => this.#delete(imms.volume, caps.onSuccess, caps.onError));
    p.serve(VolumeList, ({ imms, caps }) => this.#admin(imms.claim, caps.onError, () => this.#list(caps.onSuccess, caps.onError)));
    p.serve(AdminClaim, ({ imms, caps }) => this.#claimAdmin(imms.proof, caps.onSuccess, caps.onError));
    p.on('handlerError', (err: Error) => this.#log?.warn({ err: err.message }, 'handler error'));
    if (this.#wantNative) this.#startNative();
    await p.kvPut(`${this.name}.admin_claim`, await p.createRequest(AdminClaim), { republish: true });
    if (!this.#secret) this.#log?.warn({}, `no admin secret (--admin-secret-file): any local Process can claim the volume administration of '${this.name}' while no FS holds it`);
  }

  /**
   * Start the native I/O loop and attach it to the channel: every volume is registered with
   * it; without a native-capable backend or channel (tcp) everything stays in JS (logged).
   */
  #startNative(): void {
    const b = this.backend;
    let loop: NativeIoLoop | null = null;
    try {
      const cfg = Uint32Array.of(VolumeRead.tag, VolumeWrite.tag, F_VOLUME, F_OFFSET, F_LENGTH, F_FLAGS, S_BUFFER, S_OK, S_ERR, IO_REPLY_OFF, MAX_IO_BYTES, b.blockSize, b.memAlign, WriteFlags.FUA);
      loop = b.nativeLoop?.(cfg, this.#nativeError) ?? null;
      if (!loop) return;
      for (const v of this.table.list()) loop.setVolume(v.id, v.start, v.length);
      if (!this.proc.setFrameHook(loop.hook(), loop)) {
        this.#log?.info({}, 'native I/O loop not used: the channel is not a unix socket of the queue addon');
        loop.close(() => {});
        return;
      }
      this.#native = loop;
    } catch (err) {
      this.#log?.warn({ err: (err as Error).message }, 'native I/O loop unavailable; every I/O takes the JS path');
      loop?.close(() => {});
    }
  }

  /**
   * A native read/write whose result was not the full length: onError with the code and
   * message of the JS path (`done2`), then the delivered caps go.
   */
  #nativeError = (write: boolean, volId: number, offset: number, _length: number, res: number, buf: number, ok: number, fail: number): void => {
    const err = new FractosError(res < 0 ? errorCodeFromErrno(res) : 'EIO', `${write ? 'write' : 'read'} of volume ${volId} at ${offset}: res ${res}`);
    this.#fail(fail, err).catch(() => {}).finally(() => this.proc.capDrop(buf, ok, fail).catch(() => {}));
  };

  /** True while a Process holds the volume-administration claim (for tests and stats). */
  get adminHeld(): boolean {
    return this.#claim !== null;
  }

  /**
   * admin_claim: with an admin secret, EPERM unless `proof` is its proof; then hand the caller fresh volume_list/create/open Requests (preset with a new
   * claim generation), or EBUSY while another holder has them. The claim is released when
   * every cap delegated from them is gone (the holder dropped them, closed its channel or
   * died): monitor_delegate on each, as the FS does for its opens.
   */
  async #claimAdmin(proof: Uint8Array, ok: number, fail: number): Promise<void> {
    if (this.#secret && !proofMatches(this.#secret, proof)) {
      this.#log?.warn({}, 'admin_claim refused: wrong or missing admin secret proof');
      return this.#fail(fail, new FractosError('EPERM', `volume administration of '${this.name}' needs its admin secret (--admin-secret-file)`));
    }
    if (this.#claim || this.#claiming) {
      return this.#fail(fail, new FractosError('EBUSY', `volume administration of '${this.name}' is held by another Process (one owner: the FS)`));
    }
    this.#claiming = true;
    const p = this.proc;
    const gen = ++this.#claimGen;
    const claim: Claim = { gen, admin: [], live: new Set(), vols: new Map() };
    try {
      claim.admin = await Promise.all([p.createRequest(VolumeList, { claim: gen }), p.createRequest(VolumeCreate, { claim: gen }), p.createRequest(VolumeOpen, { claim: gen })]);
      for (const c of claim.admin) claim.live.add(c);
      this.#claim = claim;
      await Promise.all(claim.admin.map((c) => p.monitorDelegate(c, () => this.#adminGone(claim, c))));
      const [list, create, open] = claim.admin;
      await p.invoke(ok, AdminReply, {}, { list, create, open });
      this.#log?.info({ claim: gen }, 'volume administration claimed');
    } catch (err) {
      await this.#release(claim); // Not armed or not delivered: nobody holds it.
      await this.#fail(fail, err);
    } finally {
      this.#claiming = false;
    }
  }

  /** monitor_delegate of one admin Request fired: release the claim once none is held outside. */
  #adminGone(claim: Claim, cid: number): void {
    if (!claim.live.delete(cid) || claim.live.size > 0 || this.#claim !== claim) return;
    this.#log?.info({ claim: claim.gen }, 'volume administration released (holder gone)');
    this.#release(claim).catch(() => {});
  }

  /** Revoke a claim's admin Requests and every per-volume Request handed out under it; reopen the claim. */
  async #release(claim: Claim): Promise<void> {
    if (this.#claim === claim) this.#claim = null;
    claim.live.clear();
    const cids = [...claim.admin, ...[...claim.vols.values()].flatMap((v) => [v.read, v.write, v.del])];
    claim.admin = [];
    claim.vols.clear();
    await Promise.all(cids.map((c) => this.proc.capRevoke(c).catch(() => {})));
    if (cids.length) this.proc.capDrop(...cids).catch(() => {});
  }

  /** Run an admin operation of claim generation `gen`, or EREVOKED when that claim is no longer held. */
  #admin(gen: number, fail: number, fn: (claim: Claim) => Promise<void>): Promise<void> {
    const c = this.#claim;
    if (!c || c.gen !== gen) return this.#fail(fail, new FractosError('EREVOKED', 'volume administration claim released'));
    return fn(c);
  }

  /** Stop serving: close the channel (the Controller revokes every Request), drain and close the device. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.proc.close();
      const loop = this.#native;
      if (loop) {
        this.#native = null;
        await new Promise<void>((r) => loop.close(r));
        this.#nativeStats = loop.stats();
      }
      await this.backend.close();
    } finally {
      this.#device?.release();
    }
  }

  // -----------------------------------------------------------------------------------
  // Control Requests

  async #capsOf(vol: Volume): Promise<VolumeCaps> {
    let c = this.#caps.get(vol.id);
    if (!c) {
      const p = this.proc;
      const [read, write, del] = await Promise.all([
        p.createRequest(VolumeRead, { volume: vol.id }),
        p.createRequest(VolumeWrite, { volume: vol.id }),
        p.createRequest(VolumeDelete, { volume: vol.id }),
      ]);
      c = this.#caps.get(vol.id);
      if (c) {
        p.capRevoke(read).catch(() => {});
        p.capRevoke(write).catch(() => {});
        p.capRevoke(del).catch(() => {});
      } else {
        c = { read, write, del };
        this.#caps.set(vol.id, c);
      }
    }
    return c;
  }

  /**
   * Answer VolumeReply with `claim`'s revocation-tree children of the volume's Requests (made
   * once per volume and claim): releasing the claim revokes exactly these, whoever holds them.
   */
  async #reply(claim: Claim, vol: Volume, ok: number): Promise<void> {
    let k = claim.vols.get(vol.id);
    if (!k) {
      const c = await this.#capsOf(vol);
      const p = this.proc;
      const [read, write, del] = await Promise.all([p.capCreateRevtree(c.read), p.capCreateRevtree(c.write), p.capCreateRevtree(c.del)]);
      k = claim.vols.get(vol.id);
      if (k || this.#claim !== claim) {
        for (const x of [read, write, del]) p.capRevoke(x).catch(() => {});
        if (!k) throw new FractosError('EREVOKED', 'volume administration claim released');
      } else {
        k = { read, write, del };
        claim.vols.set(vol.id, k);
      }
    }
    await this.proc.invoke(ok, VolumeReply, { volume: vol.id, size: vol.length, blockSize: this.backend.blockSize }, { read: k.read, write: k.write, delete: k.del });
  }

  async #create(claim: Claim, size: number, ok: number, fail: number): Promise<void> {
    try {
      const vol = await this.table.create(size);
      this.#native?.setVolume(vol.id, vol.start, vol.length);
      if (this.#zero) await this.#zeroVolume(vol);
      await this.#reply(claim, vol, ok);
    } catch (err) {
      await this.#fail(fail, err);
    }
  }

  async #open(claim: Claim, id: number, ok: number, fail: number): Promise<void> {
    try {
      await this.#reply(claim, this.table.get(id), ok);
    } catch (err) {
      await this.#fail(fail, err);
    }
  }

  /** volume_list: every committed volume's id, in the reply's immediates (VolumeListReply). */
  async #list(ok: number, fail: number): Promise<void> {
    try {
      const vols = this.table.list();
      if (vols.length > MAX_LISTED_VOLUMES) throw new FractosError('ERANGE', `${vols.length} volumes > ${MAX_LISTED_VOLUMES}`);
      const ids = Buffer.alloc(4 * MAX_LISTED_VOLUMES);
      vols.forEach((v, i) => ids.writeUInt32LE(v.id, 4 * i));
      await this.proc.invoke(ok, VolumeListReply, { count: vols.length, ids });
    } catch (err) {
      await this.#fail(fail, err);
    }
  }

  async #delete(id: number, ok: number, fail: number): Promise<void> {
    try {
      this.table.get(id);
      this.#native?.removeVolume(id); // from now on its deliveries come to JS (ENOENT once deleted)
      // Revoke first: from now on, every holder of this volume's Requests (revtree children
      // and derived Requests included) gets EREVOKED, whoever gets the extent next.
      const c = this.#caps.get(id);
      this.#caps.delete(id);
      const kids = this.#claim?.vols.get(id); // children of the Requests revoked below
      this.#claim?.vols.delete(id);
      if (kids) this.proc.capDrop(kids.read, kids.write, kids.del).catch(() => {});
      if (c) await Promise.all([this.proc.capRevoke(c.read), this.proc.capRevoke(c.write), this.proc.capRevoke(c.del)].map((x) => x.catch(() => {})));
      await this.table.delete(id);
      await this.proc.invoke(ok, DoneReply);
    } catch (err) {
      await this.#fail(fail, err);
    }
  }

  async #zeroVolume(vol: Volume): Promise<void> {
    const chunk = Math.min(MAX_IO_BYTES, vol.length);
    const zero = this.backend.alloc(chunk);
    let next = 0;
    let error: number = 0;
    const worker = async (): Promise<void> => {
      while (next < vol.length && !error) {
        const off = next;
        const len = Math.min(chunk, vol.length - off);
        next += len;
        const r = await new Promise<number>((res) => this.backend.write(zero.subarray(0, len), vol.start + off, res));
        if (r !== len) error = r < 0 ? r : -errnoFromCode('EIO');
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    if (error) throw new FractosError(errorCodeFromErrno(error), `zeroing volume ${vol.id} failed`);
    const f = await new Promise<number>((res) => this.#flusher.request(res));
    if (f < 0) throw new FractosError(errorCodeFromErrno(f), 'flush failed');
  }

  async #fail(cid: number, err: unknown): Promise<void> {
    this.#counts.errors++;
    const code: ErrorCode = err instanceof FractosError ? err.code : 'EIO';
    if (!cid) return this.#logDropped(err instanceof Error ? err.message : String(err));
    await this.proc.replyError(cid, code, err instanceof Error ? err.message : String(err));
  }

  /**
   * A delivery failed and carried no onError cap to tell (`counts.dropped`): a warn line, at
   * most one per DROP_LOG_MS, counting the drops since the previous line.
   */
  #logDropped(why: string): void {
    this.#counts.dropped++;
    this.#drops.unreported++;
    const now = Date.now();
    if (now - this.#drops.lastLogMs < DROP_LOG_MS) return;
    const n = this.#drops.unreported;
    this.#drops = { unreported: 0, lastLogMs: now };
    const line = `dropped ${n} ${n === 1 ? 'delivery' : 'deliveries'} with no onError cap since the last report (last: ${why})`;
    if (this.#log) this.#log.warn({ dropped: n }, line);
    else process.stderr.write(`blockdev ${this.name}: ${line}\n`);
  }

  // -----------------------------------------------------------------------------------
  // I/O path

  #io(inv: Invocation, write: boolean): Promise<void> | void {
    const caps = inv.caps;
    const buffer = caps[S_BUFFER] ?? 0;
    const ok = caps[S_OK] ?? 0;
    const fail = caps[S_ERR] ?? 0;
    const volId = u32At(inv, F_VOLUME);
    const offset = u64At(inv, F_OFFSET);
    const length = u32At(inv, F_LENGTH);
    const flags = write ? u32At(inv, F_FLAGS) : 0;
    let vol: Volume;
    try {
      vol = this.table.get(volId);
    } catch {
      return this.#fail(fail, new FractosError('ENOENT', `no volume ${volId}`));
    }
    const bs = this.backend.blockSize;
    if (!buffer) return this.#fail(fail, new FractosError('EINVAL', 'no buffer cap'));
    if (length === 0 || length > MAX_IO_BYTES) return this.#fail(fail, new FractosError('EINVAL', `length ${length} not in (0, ${MAX_IO_BYTES}]`));
    if (offset < 0) return this.#fail(fail, new FractosError('ERANGE', 'offset beyond 2^53'));
    if (offset % bs !== 0 || length % bs !== 0) return this.#fail(fail, new FractosError('EINVAL', `offset ${offset} / length ${length} not multiples of the block size ${bs}`));
    if (offset + length > vol.length) return this.#fail(fail, new FractosError('ERANGE', `[${offset}, ${offset + length}) beyond volume ${volId} of ${vol.length} bytes`));
    const devOff = vol.start + offset;
    return new Promise<void>((resolve) => {
      const done = (res: number): void => {
        if (res === length) {
          if (write && flags & WriteFlags.FUA) {
            this.#flusher.request((f) => done2(f < 0 ? f : length));
            return;
          }
          done2(res);
        } else done2(res);
      };
      // `err`: the FractosError of a failed memory_copy (its code reaches onError as is).
      const done2 = (res: number, err?: unknown): void => {
        if (res === length) {
          const b = Buffer.allocUnsafe(4);
          b.writeUInt32LE(length, 0);
          // quiet: nobody here waits for this REPLY (docs/queues.md "No wake-up for nothing")
          this.proc.requestInvoke(ok, { imms: [{ offset: IO_REPLY_OFF, bytes: b }] }, { quiet: true }).catch(() => {});
          resolve();
        } else {
          const code: ErrorCode = err instanceof FractosError ? err.code : res < 0 ? errorCodeFromErrno(res) : 'EIO';
          const why = err instanceof Error ? `memory_copy failed: ${err.message}` : `res ${res}`;
          this.#fail(fail, new FractosError(code, `${write ? 'write' : 'read'} of volume ${volId} at ${offset}: ${why}`)).then(resolve, resolve);
        }
      };
      const withStat = (st: MemoryDescriptor): void => {
          if ((st.perms & (write ? Perm.READ : Perm.WRITE)) === 0) return this.#failCode(fail, 'EPERM', `buffer lacks ${write ? 'READ' : 'WRITE'} permission`, resolve);
          if (st.size < length) return this.#failCode(fail, 'ERANGE', `buffer of ${st.size} bytes < length ${length}`, resolve);
          const direct = (view: Uint8Array): void => {
            this.#counts.direct++;
            if (write) this.backend.write(view, devOff, done);
            else this.backend.read(view, devOff, done);
          };
          const bounce = (): void => {
            this.#counts.bounce++;
            this.#bounceIo(volId, mayStall(st), write, buffer, st.size, devOff, length, done, done2);
          };
          // A read stores into the client's Memory: its mapping must be writable.
          const aligned = st.regionOffset % Math.max(this.backend.memAlign, 512) === 0;
          const view = aligned ? this.#maps.cached(st, length, !write) : null;
          if (view) return direct(view);
          if (!aligned || !st.mappable) return bounce();
          this.#maps.view(buffer, st, length, !write).then((v) => (v ? direct(v) : bounce()), bounce);
      };
      // The delivery describes a local buffer (memoryDescriptors); a remote one needs a memory_stat.
      const desc = inv.memory(S_BUFFER);
      if (desc) withStat(desc);
      else this.proc.memoryStat(buffer).then(withStat, (err) => this.#fail(fail, err).then(resolve, resolve));
    });
  }

  #failCode(cid: number, code: ErrorCode, msg: string, resolve: () => void): void {
    this.#fail(cid, new FractosError(code, msg)).then(resolve, resolve);
  }

  /**
   * Read/write through a bounce slot of volume `volId`'s fair share of class `stall` (the
   * buffer's `mayStall`) and memory_copy (Memory that cannot be mapped here). `done(res)`
   * after device I/O; `fail(-errno, err)` when a
   * memory_copy (or diminish) fails, with any error (ETIMEDOUT, EFAULT, EREVOKED, ...), the
   * slot released first, or when the volume already has FairSlots.maxQueued ops waiting (EAGAIN).
   */
  #bounceIo(volId: number, stall: boolean, write: boolean, buffer: number, bufSize: number, devOff: number, length: number, done: IoCallback, fail: (res: number, err: unknown) => void): void {
    const p = this.proc;
    const start = (slot: number): void => {
      const bytes = this.#bounce.bytes.subarray(slot * MAX_IO_BYTES, slot * MAX_IO_BYTES + length);
      const slotCid = this.#bounceCids[slot]!;
      const finish = (res: number): void => {
        this.bounceSlots.release(volId, slot);
        done(res);
      };
      // The copy's FractosError code survives the -errno completion (EREVOKED stays EREVOKED).
      const failed = (err: unknown): void => {
        this.bounceSlots.release(volId, slot);
        fail(-errnoFromError(err), err);
      };
      if (write) {
        const src = bufSize > length ? p.memoryDiminish(buffer, 0, length) : Promise.resolve(buffer);
        src.then((s) => p.memoryCopy(s, slotCid).finally(() => { if (s !== buffer) p.capDrop(s).catch(() => {}); }))
          .then(() => this.backend.write(bytes, devOff, finish), failed);
      } else {
        this.backend.read(bytes, devOff, (res) => {
          if (res !== length) return finish(res);
          const src = length < MAX_IO_BYTES ? p.memoryDiminish(slotCid, 0, length) : Promise.resolve(slotCid);
          src.then((s) => p.memoryCopy(s, buffer).finally(() => { if (s !== slotCid) p.capDrop(s).catch(() => {}); }))
            .then(() => finish(res), failed);
        });
      }
    };
    try {
      this.bounceSlots.acquire(volId, start, stall);
    } catch (err) {
      fail(-11, err); // EAGAIN: this volume's queue is full
    }
  }
}

/**
 * The Controller: the trusted layer of FractOS (paper §3). It owns every object its
 * Processes register, every Process's capability space, routes invocations and memory
 * copies, and talks to peer Controllers over TCP. See docs/protocol.md for the frames.
 */
import { constants, mkdirSync, rmdirSync, readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync, unlinkSync, existsSync, lstatSync, statSync, fstatSync, ftruncateSync, writeSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { FractosError, errorCodeToWire } from '../libfractos/errors.js';
import { Link, dial, formatAddress, parseAddress, type Address } from '../libfractos/link.js';
import {
  Backing, COPY_CHUNK_BYTES, COPY_WINDOW, DEFAULT_LIMITS, Feature, HEADER_BYTES, Kind, MonitorReason, Op, Perm, REF_BYTES,
  allocFrame, argsBytes, errorReply, frameOp, frameSeq, opName, queuedDeliveryBytes, readArgs, readCid, readRef, readU64,
  writeArgs, writeCid, writeRef, writeU64,
  type ImmRange, type Limits, type ObjectRef, type RequestArgs,
} from '../libfractos/protocol.js';
import { CopyFault, copyGuarded, loadShm, shmOpen, shmUnlink } from '../native/shm/index.js';
import { INTROSPECT_FIXED_BYTES, INTROSPECT_PROC_BYTES, INVOCATION_RECORD_BYTES, IntrospectFlag, MAX_INTROSPECT_PROCS } from '../libfractos/introspect.js';
import { InvocationRing, InvokerKind } from './invocation-ring.js';
import { Obj, RemoteProxy, refKey, type CapEntry, type MemoryInfo, type Monitor, type RemoteMemory, type RequestInfo, type Target } from './objects.js';
import { PeerConn } from './peer-conn.js';
import { channelIdentity } from './proc-identity.js';
import { acceptHandshake, checkClusterSecret, dialHandshake, linkPolicy, type HandshakeSelf } from './peer-auth.js';
import { ProcConn, type Delivery } from './process-conn.js';

/** Options of `Controller.start`. */
export interface ControllerOptions {
  /** This Controller's id (u32, unique among peers). */
  id: number;
  /** Addresses to listen on: `unix:PATH` or `tcp://HOST:PORT` (port 0 picks one). */
  listen: string[];
  /** Directory holding the persisted epoch. */
  stateDir: string;
  /** Static peer list: id -> `tcp://HOST:PORT`. The higher id dials the lower. */
  peers?: Map<number, string>;
  /**
   * The cluster secret (16..4096 bytes) that peer links prove they hold before anything
   * else (controller/peer-auth.ts); the same on every Controller of the cluster. Required
   * when `peers` is not empty.
   */
  clusterSecret?: Uint8Array | string;
  limits?: Partial<Limits>;
  /**
   * Bound (ms) on one served-memory access: a MEM_READ/MEM_WRITE the Controller sends to
   * the owner of a served Memory during memory_copy that gets no REPLY within it fails the
   * copy with ETIMEDOUT (default DEFAULT_SERVED_TIMEOUT_MS).
   */
  servedTimeoutMs?: number;
  /**
   * Bound (ms) on the wait for a connection's first frame (HELLO or PEER_HELLO): a Process
   * or peer connection that says nothing within it is closed (default DEFAULT_HELLO_TIMEOUT_MS).
   */
  helloTimeoutMs?: number;
  /**
   * How long (ms) a Controller waits for a listed peer with a higher id (the one that dials)
   * before it warns `peer N has not connected after X s (expected from ADDR)`; the warning
   * comes again at intervals doubling up to 32 times as long (default
   * DEFAULT_PEER_WAIT_WARN_MS). The wait starts again when that peer's link closes.
   */
  peerWaitWarnMs?: number;
  /** Recent invocations kept for INTROSPECT (records, 1..65535; default DEFAULT_INVOCATION_RING = 1024). */
  invocationRing?: number;
  /** Log sink (pino-compatible subset). */
  log?: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void };
}

/** Per-link counters as printed by `fractos stats`. */
export interface LinkStats {
  kind: 'process' | 'peer';
  id: number;
  name: string;
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  /** Bytes queued for this link and not yet taken by the kernel (Link.backlogBytes). */
  backlogBytes: number;
  /** Times the Controller stopped reading this link because its backlog passed `maxOutboundBytes`. */
  readPauses: number;
  /** True for a link that has closed (its counters are kept so `stats` covers the whole run). */
  closed?: boolean;
}

const EMPTY = Buffer.alloc(0);
/**
 * Split frames of these ops are reassembled in one reused buffer per link (no garbage per
 * 256 KiB copy chunk): P_MEM_WRITE's handler writes the bytes into a mapping, or into a new
 * MEM_WRITE frame, before returning.
 */
const SCRATCH_OPS: ReadonlySet<number> = new Set([Op.P_MEM_WRITE]);
const DEAD = new RemoteProxy({ controller: 0, epoch: 0, id: 0 }, 'dead');
DEAD.revoked = true;

/**
 * A bootstrap name. It belongs to its publisher, the Process `ownerProc` of Controller
 * `origin` (epoch `originEpoch`): only that Process replaces it, and it is removed when that
 * Process (or the link to its Controller) goes away.
 */
interface KvEntry {
  ref: ObjectRef;
  /** Version of the entry (ms * 1024 + counter at the origin): a newer put of the same owner replaces it. */
  ts: number;
  /** When the owner first published the name (same clock): the earlier claim wins a conflict between owners. */
  since: number;
  origin: number;
  originEpoch: number;
  ownerProc: number;
  /** The published object, pinned, when the publisher is local. */
  pinned: Target | null;
}

/** Names one Process may publish at once (each costs a map entry on every Controller). */
export const MAX_NAMES_PER_PROCESS = 1024;

type Done = (err: FractosError | null) => void;

const noopLog = { info: () => {}, warn: () => {} };

/** Default bound on one served-memory access (ms), see ControllerOptions.servedTimeoutMs. */
export const DEFAULT_SERVED_TIMEOUT_MS = 5000;

/** Default wait (ms) for a dialling peer before the first warning, see ControllerOptions.peerWaitWarnMs. */
export const DEFAULT_PEER_WAIT_WARN_MS = 10_000;

/** Default bound on the wait for a connection's first frame (ms), see ControllerOptions.helloTimeoutMs. */
export const DEFAULT_HELLO_TIMEOUT_MS = 5000;

/** Dial attempts after which an unreachable peer is logged again (first failure, then these, then every 30th). */
function logDialFailure(attempt: number): boolean {
  if (attempt < 1) return false; // redial right after a link closed (logged as 'peer disconnected')
  return attempt <= 32 ? (attempt & (attempt - 1)) === 0 : attempt % 30 === 0;
}

export class Controller {
  readonly id: number;
  readonly epoch: number;
  readonly limits: Limits;
  readonly servedTimeoutMs: number;
  readonly helloTimeoutMs: number;
  readonly peerWaitWarnMs: number;
  readonly #log: NonNullable<ControllerOptions['log']>;
  readonly #servers: net.Server[];
  readonly #lock: StateDirLock;
  readonly #addresses: string[];
  readonly #objects = new Map<number, Obj>();
  #nextObjId = 1;
  #nextProcId = 1;
  readonly #procs = new Map<number, ProcConn>();
  readonly #peers = new Map<number, PeerConn>();
  readonly #peerAddrs: Map<number, string>;
  readonly #secret: Buffer | null;
  /** Peer links whose handshake is not done yet (closed by `close`). */
  readonly #handshaking = new Set<Link>();
  readonly #proxies = new Map<string, RemoteProxy>();
  readonly #kv = new Map<string, KvEntry>();
  /** Names published by each local Process (by its id), removed when it goes away. */
  readonly #kvByProc = new Map<number, Set<string>>();
  #kvClock = 0;
  /** Monitor tokens this Controller registered at peers (remote monitor_delegate). */
  readonly #remoteMonitors = new Map<number, { proc: ProcConn; token: number }>();
  #nextRemoteToken = 1;
  /** Regions mapped by the Controller, by name (shared with all Processes' Memory). */
  readonly #regions = new Map<string, Uint8Array>();
  #closing = false;
  readonly #dialTimers = new Set<NodeJS.Timeout>();
  /** Counters of links that closed, so `stats` covers the whole run. */
  readonly #closedStats: LinkStats[] = [];
  /** Recent invocations for INTROSPECT (fixed size, no allocation per record). */
  readonly #invocations: InvocationRing;

  private constructor(opts: ControllerOptions, epoch: number, lock: StateDirLock, servers: net.Server[], addresses: string[]) {
    this.id = opts.id;
    this.epoch = epoch;
    this.#lock = lock;
    this.#servers = servers;
    this.#addresses = addresses;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.servedTimeoutMs = opts.servedTimeoutMs ?? DEFAULT_SERVED_TIMEOUT_MS;
    this.helloTimeoutMs = opts.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS;
    this.peerWaitWarnMs = opts.peerWaitWarnMs ?? DEFAULT_PEER_WAIT_WARN_MS;
    this.#log = opts.log ?? noopLog;
    this.#peerAddrs = opts.peers ?? new Map();
    this.#secret = opts.clusterSecret === undefined ? null : checkClusterSecret(opts.clusterSecret);
    this.#invocations = new InvocationRing(opts.invocationRing);
  }

  /**
   * Start a Controller: lock `stateDir` for its whole life, listen, then bump and persist
   * the epoch, dial peers with lower ids. Nothing is taken over: the epoch is bumped only
   * once the lock is held and every address is bound. A unix socket path is unlinked
   * only when it is stale (nothing answers a connect).
   * Errors: EINVAL (bad address, id, servedTimeoutMs or cluster secret; peers without a
   * cluster secret), EBUSY (`stateDir` is locked by a
   * live Controller: the message names the dir and its pid), EADDRINUSE (a Controller
   * answers on a unix path, or a tcp port is taken), EEXIST (a unix path that is not a
   * socket), EIO (state dir).
   */
  static async start(opts: ControllerOptions): Promise<Controller> {
    if (!Number.isInteger(opts.id) || opts.id < 1 || opts.id > 0xffffffff) {
      throw new FractosError('EINVAL', `controller id must be 1..2^32-1, got ${opts.id}`);
    }
    for (const [k, v] of [['servedTimeoutMs', opts.servedTimeoutMs], ['helloTimeoutMs', opts.helloTimeoutMs], ['peerWaitWarnMs', opts.peerWaitWarnMs]] as const) {
      if (v !== undefined && (!Number.isInteger(v) || v < 1 || v > 2 ** 31 - 1)) {
        throw new FractosError('EINVAL', `${k} must be an integer 1..2^31-1 ms, got ${v}`);
      }
    }
    if (opts.invocationRing !== undefined && (!Number.isInteger(opts.invocationRing) || opts.invocationRing < 1 || opts.invocationRing > 0xffff)) {
      throw new FractosError('EINVAL', `invocationRing must be 1..65535 records, got ${opts.invocationRing}`);
    }
    if (opts.clusterSecret !== undefined) checkClusterSecret(opts.clusterSecret);
    else if (opts.peers?.size) {
      throw new FractosError('EINVAL', 'peer links need a cluster secret (clusterSecret, fractos controller --cluster-secret-file FILE)');
    }
    const addrs = opts.listen.map(parseAddress);
    // A refused start changes nothing: a state dir made here is removed again (rmdir: only
    // while empty, i.e. holding nothing but the lock file, which release() unlinks).
    const dirExisted = existsSync(opts.stateDir);
    const lock = lockStateDir(opts.stateDir);
    const servers: net.Server[] = [];
    const addresses: string[] = [];
    // Connections accepted before the Controller exists wait here (a few ticks at most).
    let c: Controller | null = null;
    const early: net.Socket[] = [];
    const onConn = (sock: net.Socket): void => {
      if (c) c.#accept(sock);
      else early.push(sock);
    };
    let epoch: number;
    try {
      for (const a of addrs) if (a.kind === 'unix') await claimUnixPath(a.path);
      for (const a of addrs) {
        const server = net.createServer(onConn);
        addresses.push(await listenOn(server, a));
        servers.push(server);
      }
      epoch = bumpEpoch(opts.stateDir);
    } catch (err) {
      await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
      for (const a of addresses) if (a.startsWith('unix:')) tryUnlink(a.slice(5));
      for (const s of early) s.destroy();
      lock.release();
      if (!dirExisted) {
        try {
          rmdirSync(opts.stateDir);
        } catch {
          // not empty (someone else wrote into it meanwhile): kept
        }
      }
      throw err;
    }
    c = new Controller(opts, epoch, lock, servers, addresses);
    const log = c.#log;
    for (const s of servers) s.on('error', (err) => log.warn({ err: err.message }, 'listener error'));
    for (const s of early) c.#accept(s);
    for (const [pid, addr] of c.#peerAddrs) {
      if (pid < c.id) c.#dialPeer(pid, parseAddress(addr), 0);
      else if (pid > c.id) c.#awaitPeer(pid, 0);
    }
    c.#log.info({ id: c.id, epoch, listen: c.#addresses }, 'controller started');
    return c;
  }

  /** Addresses actually listened on (with the chosen port for tcp port 0). */
  get addresses(): string[] {
    return [...this.#addresses];
  }

  /** Number of live objects (for leak checks in tests). */
  get objectCount(): number {
    return this.#objects.size;
  }

  /**
   * Sizes of the Controller's tables, read-only (leak checks in tests and the fuzzer): live
   * objects, Process channels, cap entries over all capability spaces, peer links, links in
   * the peer handshake, remote proxies (and those pre-held), bootstrap names, remote
   * monitors, invokers with invocations queued for credits, and deliveries queued.
   */
  tableSizes(): { objects: number; procs: number; caps: number; peers: number; handshaking: number; proxies: number; preheld: number; names: number; remoteMonitors: number; queuedInvokers: number; queuedDeliveries: number } {
    let caps = 0;
    let queuedDeliveries = 0;
    for (const p of this.#procs.values()) {
      caps += p.capCount;
      queuedDeliveries += p.queue.length - p.queueHead;
    }
    return {
      objects: this.#objects.size, procs: this.#procs.size, caps, peers: this.#peers.size, handshaking: this.#handshaking.size,
      proxies: this.#proxies.size, preheld: this.#preheld.size, names: this.#kv.size, remoteMonitors: this.#remoteMonitors.size,
      queuedInvokers: this.#queuedByInvoker.size, queuedDeliveries,
    };
  }

  /** Ids of connected peers. */
  get connectedPeers(): number[] {
    return [...this.#peers.keys()];
  }

  /** Per-link counters, live links and closed ones. */
  stats(): LinkStats[] {
    const out: LinkStats[] = [...this.#closedStats];
    for (const p of this.#procs.values()) out.push({ kind: 'process', id: p.id, name: p.name, ...linkStats(p.link) });
    for (const p of this.#peers.values()) out.push({ kind: 'peer', id: p.id, name: `controller-${p.id}`, ...linkStats(p.link) });
    return out;
  }

  /** Close every link and listener, and unlock the state dir. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    for (const t of this.#dialTimers) clearTimeout(t);
    for (const p of [...this.#procs.values()]) p.link.close();
    for (const p of [...this.#peers.values()]) p.link.close();
    for (const l of [...this.#handshaking]) l.close();
    await Promise.all(this.#servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    for (const a of this.#addresses) if (a.startsWith('unix:')) tryUnlink(a.slice(5));
    this.#lock.release();
  }

  // -------------------------------------------------------------------------------------
  // Listening and accepting

  #accept(sock: net.Socket): void {
    const link = new Link(sock, this.limits.maxFrameBytes, SCRATCH_OPS);
    // A connection that never says hello is not held: it is closed after helloTimeoutMs.
    const helloTimer = setTimeout(() => {
      this.#log.info({ remote: sock.remoteAddress ?? 'unix', ms: this.helloTimeoutMs }, 'no hello: connection closed');
      link.close(new FractosError('ETIMEDOUT', `no HELLO or PEER_HELLO within ${this.helloTimeoutMs} ms`));
    }, this.helloTimeoutMs);
    helloTimer.unref();
    link.onFrame = (frame) => {
      clearTimeout(helloTimer);
      const op = frameOp(frame);
      // A Process's calls make our frames to it: stop reading it while it does not read
      // them (never a peer link: two Controllers that both stop reading would deadlock).
      if (op === Op.HELLO) link.limitBacklog(this.limits.maxOutboundBytes);
      if (op === Op.HELLO) this.#helloProcess(link, frame);
      else if (op === Op.PEER_HELLO) this.#acceptPeer(link, frame);
      else link.close(new FractosError('EPROTO', `first frame must be HELLO or PEER_HELLO, got ${opName(op)}`));
    };
    link.onClose = (err) => {
      clearTimeout(helloTimer);
      if (isInternalError(err)) this.#log.warn({ err: String(err), stack: err.stack }, 'internal error');
    };
  }

  #helloProcess(link: Link, frame: Buffer): void {
    // HELLO: u32 pid, u32 features, utf8 name
    if (frame.length < HEADER_BYTES + 8) {
      link.close(new FractosError('EPROTO', 'short HELLO'));
      return;
    }
    const proc = new ProcConn(this.#nextProcId++, link);
    // Identity from the kernel (SO_PEERCRED; 0 over tcp): the HELLO's pid is only a claim.
    const claimedPid = frame.readUInt32LE(HEADER_BYTES);
    const ident = channelIdentity(link.socket);
    proc.pid = ident.pid;
    proc.uid = ident.uid;
    proc.features = frame.readUInt32LE(HEADER_BYTES + 4);
    proc.name = frame.toString('utf8', HEADER_BYTES + 8).slice(0, 64);
    if (proc.pid !== 0 && claimedPid !== proc.pid) {
      this.#log.info({ proc: proc.id, name: proc.name, pid: proc.pid, claimedPid }, `process ${proc.id} says pid ${claimedPid} in its HELLO; the kernel says ${proc.pid} (used)`);
    }
    this.#procs.set(proc.id, proc);
    link.onFrame = (f) => this.#onProcFrame(proc, f);
    link.onClose = (err) => this.#procGone(proc, err);
    const r = allocFrame(Op.REPLY, frameSeq(frame), 28);
    r.writeUInt32LE(this.id, 16);
    r.writeUInt32LE(this.epoch, 20);
    r.writeUInt32LE(proc.id, 24);
    r.writeUInt32LE(this.limits.maxFrameBytes, 28);
    r.writeUInt32LE(this.limits.maxImmBytes, 32);
    r.writeUInt32LE(this.limits.maxCapSlots, 36);
    r.writeUInt32LE(this.limits.maxOutstandingDeliveries, 40);
    link.send(r);
  }

  // -------------------------------------------------------------------------------------
  // Process frames

  #onProcFrame(proc: ProcConn, frame: Buffer): void {
    const op = frameOp(frame);
    const seq = frameSeq(frame);
    const end = frame.length;
    try {
      switch (op) {
        case Op.REPLY:
          proc.calls.complete(frame);
          return;
        case Op.DELIVER_ACK: {
          // u32 n: deliveries the Process has taken in. The Controller counts what it
          // delivered: returning more credits than DELIVERs outstanding is EPROTO.
          need(frame, 4);
          proc.acked(frame.readUInt32LE(16));
          this.#drain(proc);
          return;
        }
        case Op.CAP_DROP_MANY: {
          // n x u32 cid (one-way; unknown cids are ignored: they may have been dropped already)
          if ((end - HEADER_BYTES) % 4 !== 0) throw new FractosError('EPROTO', 'CAP_DROP_MANY body is not n x u32');
          for (let o = HEADER_BYTES; o < end; o += 4) this.#dropEntry(proc, frame.readUInt32LE(o));
          return;
        }
        case Op.NULL:
          proc.link.send(allocFrame(Op.REPLY, seq, 0));
          return;
        case Op.MEMORY_CREATE:
          this.#memoryCreate(proc, seq, frame);
          return;
        case Op.MEMORY_DIMINISH: {
          // u32 cid, u8 dropPerms, 3 x u8 0, u64 offset, u64 size
          need(frame, 24);
          const t = this.#target(proc, readCid(frame, 16));
          const drop = frame.readUInt8(20);
          const off = readU64(frame, 24);
          const size = readU64(frame, 32);
          if (t.isProxy) {
            const mem = t.mem && { size, perms: t.mem.perms & ~drop & Perm.RW, backing: t.mem.backing };
            this.#peerCallRef(t, Op.P_DIMINISH, 17, (f, o) => {
              f.writeUInt8(drop, o);
              writeU64(f, off, o + 1);
              writeU64(f, size, o + 9);
            }, this.#replyNewProxy(proc, seq, mem));
          } else this.#replyCid(proc, seq, this.#install(proc, this.#diminish(t, drop, off, size)));
          return;
        }
        case Op.MEMORY_COPY: {
          // u32 src cid, u32 dst cid
          need(frame, 8);
          const src = this.#target(proc, readCid(frame, 16));
          const dst = this.#target(proc, readCid(frame, 20));
          const done = this.#replyDone(proc, seq);
          if (src.isProxy) {
            const dref = this.#refOf(dst);
            this.#peerCallRef(src, Op.P_COPY, REF_BYTES, (f, o) => writeRef(f, dref, o), (err) => done(err));
          } else this.#execCopy(src, dst, done);
          return;
        }
        case Op.MEMORY_STAT:
          need(frame, 4);
          this.#memoryStat(proc, seq, this.#target(proc, readCid(frame, 16)));
          return;
        case Op.REQUEST_CREATE: {
          // u32 tag, args
          need(frame, 4);
          const tag = frame.readUInt32LE(16);
          const { args } = readArgs(frame, 20, end, readCid, 4, null);
          const info = mergeArgs(null, tag, this.#capTargets(proc, args), this.limits);
          const obj = this.#newObj(Kind.REQUEST, proc, null, null, info);
          proc.owned.add(obj);
          this.#replyCid(proc, seq, this.#install(proc, obj));
          return;
        }
        case Op.REQUEST_DERIVE:
        case Op.REQUEST_INVOKE: {
          // u32 cid, args
          // The whole body is parsed (EPROTO) before any cid is looked up (EBADCAP, EREVOKED);
          // the limits are checked when the args are merged, after the target's type.
          need(frame, 4);
          const { args } = readArgs(frame, 20, end, readCid, 4, null);
          const t = this.#target(proc, readCid(frame, 16));
          const targs = this.#capTargets(proc, args);
          if (op === Op.REQUEST_DERIVE) {
            if (t.isProxy) this.#peerDerive(t, targs, this.#replyNewProxy(proc, seq));
            else this.#replyCid(proc, seq, this.#install(proc, this.#derive(t, targs)));
          } else {
            const done = this.#replyDone(proc, seq);
            if (t.isProxy) {
              if (!t.revoked) this.#invocations.record(InvokerKind.PROCESS, proc.id, t.ref.controller, t.ref.id, 0);
              this.#peerInvoke(t, targs, done);
            } else {
              if (t.req && !t.revoked) this.#invocations.record(InvokerKind.PROCESS, proc.id, this.id, t.id, t.owner.id);
              this.#invokeLocal(t, targs, proc, done);
            }
          }
          return;
        }
        case Op.CAP_REVTREE: {
          need(frame, 4);
          const t = this.#target(proc, readCid(frame, 16));
          if (t.isProxy) this.#peerCallRef(t, Op.P_REVTREE, 0, null, this.#replyNewProxy(proc, seq, t.mem));
          else this.#replyCid(proc, seq, this.#install(proc, this.#revtree(t)));
          return;
        }
        case Op.CAP_REVOKE: {
          need(frame, 4);
          const t = this.#target(proc, readCid(frame, 16));
          const done = this.#replyDone(proc, seq);
          if (t.isProxy) {
            this.#peerCallRef(t, Op.P_REVOKE, 0, null, (err) => {
              if (!err) this.#proxyRevoked(t, MonitorReason.REVOKED);
              done(err);
            });
          } else {
            this.#revoke(t, MonitorReason.REVOKED);
            done(null);
          }
          return;
        }
        case Op.CAP_DROP: {
          // u32 cid
          need(frame, 4);
          const cid = readCid(frame, 16);
          proc.lookup(cid);
          this.#dropEntry(proc, cid);
          proc.link.send(allocFrame(Op.REPLY, seq, 0));
          return;
        }
        case Op.MONITOR_DELEGATE:
        case Op.MONITOR_RECEIVE: {
          // u32 cid, u32 monitor id
          need(frame, 8);
          const e = proc.lookup(readCid(frame, 16));
          const token = frame.readUInt32LE(20);
          if (op === Op.MONITOR_RECEIVE) this.#monitorReceive(proc, e.target, token);
          else this.#monitorDelegate(proc, e.target, token, seq);
          if (op === Op.MONITOR_RECEIVE) proc.link.send(allocFrame(Op.REPLY, seq, 0));
          return;
        }
        case Op.KV_PUT: {
          // u32 cid, utf8 name
          need(frame, 5);
          const t = this.#target(proc, readCid(frame, 16));
          this.#kvPutLocal(proc, frame.toString('utf8', 20), t);
          proc.link.send(allocFrame(Op.REPLY, seq, 0));
          return;
        }
        case Op.KV_GET: {
          // Each getter gets its own revocation-tree child of the published object, so a
          // getter's cap_revoke cuts off only itself; the publisher keeps the root.
          need(frame, 1);
          const name = frame.toString('utf8', 16);
          const e = this.#kv.get(name);
          if (!e) throw new FractosError('ENOENT', `no cap published as '${name}'`);
          const t = this.#targetFromRef(e.ref);
          if (t.revoked) this.#replyCid(proc, seq, this.#install(proc, t));
          else if (!t.isProxy) {
            const child = this.#revtree(t);
            let entry: CapEntry;
            try {
              entry = this.#install(proc, child);
            } catch (err) {
              this.#maybeCollect(child); // ENOSPC: the child has no holder
              throw err;
            }
            this.#replyCid(proc, seq, entry);
            this.#armDelegMonitors(t); // the getter's child is a delegated copy of the published object
          } else {
            this.#peerCallRef(t, Op.P_REVTREE, 0, null, (err, f) => {
              this.#forgetUnused(t);
              this.#replyNewProxy(proc, seq, t.mem)(err, f);
            });
          }
          return;
        }
        case Op.STATS:
          this.#replyStats(proc, seq);
          return;
        case Op.INTROSPECT:
          // u64 since: the first invocation record wanted
          need(frame, 8);
          this.#replyIntrospect(proc, seq, readU64(frame, 16));
          return;
        case Op.HELLO:
          throw new FractosError('EPROTO', 'HELLO sent twice');
        default:
          throw new FractosError('EPROTO', `unknown op ${opName(op)}`);
      }
    } catch (err) {
      this.#procError(proc, seq, err);
    }
  }

  /** A semantic error is answered; a malformed frame closes only this channel. */
  #procError(proc: ProcConn, seq: number, err: unknown): void {
    if (err instanceof FractosError && err.code !== 'EPROTO') {
      proc.link.send(errorReply(seq, errorCodeToWire(err.code), err.message));
      return;
    }
    if (err instanceof RangeError) err = new FractosError('EPROTO', `malformed frame: ${err.message}`);
    if (!(err instanceof FractosError)) this.#log.warn({ err: String(err) }, 'internal error');
    const e = err instanceof FractosError ? err : new FractosError('EPROTO', String(err));
    proc.link.send(errorReply(seq, errorCodeToWire('EPROTO'), e.message));
    proc.link.close(e);
  }

  #replyCid(proc: ProcConn, seq: number, e: CapEntry): void {
    const r = allocFrame(Op.REPLY, seq, 4);
    r.writeUInt32LE(e.cid, 16);
    proc.link.send(r);
  }

  #replyDone(proc: ProcConn, seq: number): Done {
    return (err) => {
      if (!proc.alive) return;
      if (err) proc.link.send(errorReply(seq, errorCodeToWire(err.code), err.message));
      else proc.link.send(allocFrame(Op.REPLY, seq, 0));
    };
  }

  /** Callback for a peer reply carrying a new ObjectRef: install a (pre-held) proxy, with its Memory info when known. */
  #replyNewProxy(proc: ProcConn, seq: number, mem: RemoteMemory | null = null): (err: FractosError | null, f: Buffer | null) => void {
    return (err, f) => {
      if (!proc.alive) {
        if (!err && f) this.#sendHold(readRef(f, HEADER_BYTES), -1);
        return;
      }
      if (err) {
        proc.link.send(errorReply(seq, errorCodeToWire(err.code), err.message));
        return;
      }
      const ref = readRef(f!, HEADER_BYTES);
      const t = this.#proxyFor(ref, true);
      t.mem ??= mem;
      try {
        this.#replyCid(proc, seq, this.#install(proc, t));
      } catch (e) {
        this.#procError(proc, seq, e);
      }
    };
  }

  #procGone(proc: ProcConn, err?: Error): void {
    if (!proc.alive) return;
    proc.alive = false;
    this.#procs.delete(proc.id);
    this.#closedStats.push({ kind: 'process', id: proc.id, name: proc.name, ...linkStats(proc.link), backlogBytes: 0, closed: true });
    if (this.#closedStats.length > 1024) this.#closedStats.shift();
    if (err && !this.#closing) this.#log.info({ proc: proc.id, name: proc.name, err: err.message }, 'process channel closed');
    if (isInternalError(err)) this.#log.warn({ proc: proc.id, err: String(err), stack: err.stack }, 'internal error');
    proc.calls.failAll('EFAULT', `process ${proc.id} went away`);
    this.#kvProcGone(proc);
    for (const obj of [...proc.owned]) this.#revoke(obj, MonitorReason.OWNER_FAILED);
    for (const e of [...proc.caps]) this.#dropEntry(proc, e.cid);
    const q = proc.queue;
    for (let i = proc.queueHead; i < q.length; i++) q[i]!.fail(new FractosError('EREVOKED', 'provider went away'));
    q.length = 0;
    // Its shared regions: drop our mappings and the names it can no longer unlink (kill -9).
    const prefix = `/fractos-${proc.pid}-`;
    let samePid = false;
    for (const p of this.#procs.values()) if (p.pid === proc.pid) samePid = true;
    if (!samePid) {
      for (const name of [...this.#regions.keys()]) {
        if (!name.startsWith(prefix)) continue;
        this.#regions.delete(name);
        try {
          shmUnlink(name);
        } catch {
          // already unlinked by its owner
        }
      }
    }
  }

  // -------------------------------------------------------------------------------------
  // Objects

  #newObj(kind: 1 | 2, owner: ProcConn, parent: Obj | null, mem: MemoryInfo | null, req: RequestInfo | null): Obj {
    const obj = new Obj(this.#nextObjId++, kind, owner, parent, mem, req);
    this.#objects.set(obj.id, obj);
    if (parent) (parent.children ??= new Set()).add(obj);
    // A cap in a Request's slots keeps its object alive like a cap entry does.
    if (req) for (const t of req.caps) if (t) this.#pin(t);
    return obj;
  }

  /** Whether a new reference to `t` is this Controller's first (so its owner must be told). */
  #firstRef(t: Target): t is RemoteProxy {
    return t.isProxy && t.entries.size === 0 && t.pins === 0 && !t.revoked && t !== DEAD;
  }

  /** Hold a remote object at its owner, unless the owner counted the hold already (pre-held). */
  #hold(t: RemoteProxy): void {
    if (this.#preheld.has(t)) this.#preheld.delete(t);
    else this.#sendHold(t.ref, +1);
  }

  #pin(t: Target): void {
    if (this.#firstRef(t)) this.#hold(t);
    t.pins++;
    if (!t.isProxy) this.#armDelegMonitors(t);
  }

  #unpin(t: Target): void {
    t.pins--;
    this.#released(t);
  }

  /** The object is gone: release what its cap slots pinned. */
  #unpinArgs(obj: Obj): void {
    if (!obj.req) return;
    for (const t of obj.req.caps) if (t) this.#unpin(t);
  }

  /**
   * Pin the cap arguments of an invocation that is not delivered at once (waiting for
   * credits, or in flight to a peer): the invoker may drop its entries meanwhile, and the
   * provider must still get live caps. Returns the release function (call it once).
   */
  #pinArgs(args: RequestArgs<Target>): () => void {
    const ts = args.caps?.map((c) => c.cap);
    if (!ts?.length) return () => {};
    for (const t of ts) this.#pin(t);
    return () => {
      for (const t of ts) this.#unpin(t);
    };
  }

  /** Resolve a cid to a live target. Errors: EBADCAP, EREVOKED. */
  #target(proc: ProcConn, cid: number): Target {
    const t = proc.lookup(cid).target;
    if (t.revoked) throw new FractosError('EREVOKED', `cid ${cid} names a revoked object`);
    return t;
  }

  #install(proc: ProcConn, t: Target): CapEntry {
    const first = this.#firstRef(t);
    const e = proc.install(t, this.limits.maxCaps); // ENOSPC: nothing held, nothing installed
    if (first) this.#hold(t);
    else if (!t.isProxy) this.#armDelegMonitors(t);
    return e;
  }

  /** Proxies whose hold the owner already counted (new objects made for us). */
  readonly #preheld = new Set<RemoteProxy>();

  #proxyFor(ref: ObjectRef, preheld = false): RemoteProxy {
    const key = refKey(ref);
    let p = this.#proxies.get(key);
    if (!p) {
      p = new RemoteProxy(ref, key);
      this.#proxies.set(key, p);
      if (preheld) this.#preheld.add(p);
    } else if (preheld) this.#sendHold(ref, -1); // we already hold it: give back the extra count
    if (!this.#peers.has(ref.controller) && !this.#peerAddrs.has(ref.controller)) p.revoked = true;
    return p;
  }

  /** Forget a proxy made only to name a ref in a call (nothing holds or pins it). */
  #forgetUnused(t: RemoteProxy): void {
    if (t.entries.size === 0 && t.pins === 0 && !this.#preheld.has(t) && this.#proxies.get(t.key) === t) this.#proxies.delete(t.key);
  }

  /** The target a ref names, as seen from this Controller (DEAD if gone). */
  #targetFromRef(ref: ObjectRef): Target {
    if (ref.controller === this.id) {
      if (ref.epoch !== this.epoch) return DEAD;
      return this.#objects.get(ref.id) ?? DEAD;
    }
    return this.#proxyFor(ref);
  }

  #refOf(t: Target): ObjectRef {
    return t.isProxy ? t.ref : { controller: this.id, epoch: this.epoch, id: t.id };
  }

  /** A local object named by a ref from a peer. Errors: EREVOKED. */
  #localObj(ref: ObjectRef): Obj {
    if (ref.controller !== this.id) throw new FractosError('EPROTO', `ref for controller ${ref.controller} sent to ${this.id}`);
    const obj = ref.epoch === this.epoch ? this.#objects.get(ref.id) : undefined;
    if (!obj || obj.revoked) throw new FractosError('EREVOKED', `object ${refKey(ref)} is revoked`);
    return obj;
  }

  #dropEntry(proc: ProcConn, cid: number): void {
    const e = proc.remove(cid);
    if (!e) return;
    this.#released(e.target);
  }

  /** A reference to `t` went away: give back holds, collect derived objects, fire monitors. */
  #released(t: Target): void {
    if (t.isProxy) {
      if (t === DEAD || t.entries.size > 0 || t.pins > 0) return;
      this.#proxies.delete(t.key);
      this.#preheld.delete(t);
      if (!t.revoked) this.#sendHold(t.ref, -1);
      return;
    }
    this.#checkDelegMonitors(t);
    this.#maybeCollect(t);
  }

  #holders(obj: Obj, exclude: ProcConn | null, excludePeer = 0): number {
    let n = obj.children?.size ?? 0;
    for (const e of obj.entries) if (e.proc !== exclude) n++;
    if (obj.remoteHolds) for (const [peer, c] of obj.remoteHolds) n += peer === excludePeer ? Math.max(0, c - 1) : c;
    return n + obj.pins;
  }

  #maybeCollect(obj: Obj): void {
    // Derived objects (views, revtree children, derived Requests) live while referenced;
    // base objects live until their owner revokes them or goes away.
    if (obj.revoked || obj.parent === null) return;
    if (this.#holders(obj, null) > 0) return;
    this.#objects.delete(obj.id);
    obj.revoked = true;
    this.#unpinArgs(obj);
    const parent = obj.parent;
    parent.children?.delete(obj);
    this.#checkDelegMonitors(parent);
    this.#maybeCollect(parent);
  }

  /** Revoke an object and its whole revocation tree, at once (paper §3.5). */
  #revoke(root: Obj, reason: number): void {
    if (root.revoked) return;
    const stack: Obj[] = [root];
    const gone: Obj[] = [];
    if (root.parent) root.parent.children?.delete(root);
    while (stack.length) {
      const obj = stack.pop()!;
      if (obj.revoked && obj !== root) continue;
      obj.revoked = true;
      gone.push(obj);
      this.#objects.delete(obj.id);
      if (obj.parent === null) obj.owner.owned.delete(obj);
      if (obj.recvMonitors) {
        for (const m of obj.recvMonitors) this.#fireMonitor(m, reason);
        obj.recvMonitors = null;
      }
      obj.delegMonitors = null;
      if (obj.remoteHolds) {
        const ref = this.#refOf(obj);
        for (const peer of obj.remoteHolds.keys()) this.#sendRevoked(peer, ref, reason);
        obj.remoteHolds = null;
      }
      if (obj.children) for (const c of obj.children) stack.push(c);
      obj.children = null;
    }
    for (const obj of gone) this.#unpinArgs(obj);
    if (root.parent) {
      this.#checkDelegMonitors(root.parent);
      this.#maybeCollect(root.parent);
    }
  }

  #proxyRevoked(p: RemoteProxy, reason: number): void {
    if (p.revoked) return;
    p.revoked = true;
    this.#preheld.delete(p);
    if (p.recvMonitors) {
      for (const m of p.recvMonitors) this.#fireMonitor(m, reason);
      p.recvMonitors = null;
    }
    if (p.entries.size === 0 && p.pins === 0) this.#proxies.delete(p.key);
  }

  // -------------------------------------------------------------------------------------
  // Memory

  #memoryCreate(proc: ProcConn, seq: number, frame: Buffer): void {
    // u8 backing, u8 perms, u16 0, u32 0, u64 offset, u64 size, u64 servedKey, utf8 region
    need(frame, 32);
    const backing = frame.readUInt8(16);
    const perms = frame.readUInt8(17) & Perm.RW;
    const offset = readU64(frame, 24);
    const size = readU64(frame, 32);
    const servedKey = readU64(frame, 40);
    let info: MemoryInfo;
    if (backing === Backing.SHARED) {
      const region = frame.toString('utf8', 48);
      // A Process may register only regions it created: names carry its OS pid, as the
      // kernel told it (proc-identity.ts); a tcp channel has none, so no region by name.
      if (proc.pid === 0) {
        throw new FractosError('EPERM', `shared Memory by region name needs a unix-socket channel (the Controller knows no pid for process ${proc.id}); use served Memory`);
      }
      if (!region.startsWith(`/fractos-${proc.pid}-`)) {
        throw new FractosError('EPERM', `region '${region}' does not belong to pid ${proc.pid}`);
      }
      let map = this.#regions.get(region);
      if (!map) {
        map = new Uint8Array(shmOpen(region));
        this.#regions.set(region, map);
      }
      if (offset + size > map.length) throw new FractosError('ERANGE', `${offset}+${size} beyond region of ${map.length} bytes`);
      info = { backing: Backing.SHARED, region, map, servedKey: 0, offset, size, perms };
    } else if (backing === Backing.SERVED) {
      info = { backing: Backing.SERVED, region: '', map: null, servedKey, offset, size, perms };
    } else throw new FractosError('EINVAL', `unknown backing ${backing}`);
    const obj = this.#newObj(Kind.MEMORY, proc, null, info, null);
    proc.owned.add(obj);
    this.#replyCid(proc, seq, this.#install(proc, obj));
  }

  /** Forget a mapped region (its owner unlinked it). */
  #diminish(obj: Obj, drop: number, off: number, size: number): Obj {
    const m = obj.mem;
    if (!m) throw new FractosError('ETYPE', 'memory_diminish needs a Memory cap');
    if (off + size > m.size) throw new FractosError('ERANGE', `view ${off}+${size} beyond ${m.size} bytes`);
    const info: MemoryInfo = { ...m, offset: m.offset + off, size, perms: m.perms & ~drop & Perm.RW };
    return this.#newObj(Kind.MEMORY, obj.owner, obj, info, null);
  }

  #memoryStat(proc: ProcConn, seq: number, t: Target): void {
    const send = (size: number, perms: number, backing: number, flags: number, off: number, key: number, region: string): void => {
      const name = Buffer.from(region, 'utf8');
      const r = allocFrame(Op.REPLY, seq, 32 + name.length);
      writeU64(r, size, 16);
      r.writeUInt8(perms, 24);
      r.writeUInt8(backing, 25);
      r.writeUInt8(flags, 26);
      r.writeUInt8(0, 27);
      r.writeUInt32LE(0, 28);
      writeU64(r, off, 32);
      writeU64(r, key, 40);
      name.copy(r, 48);
      proc.link.send(r);
    };
    if (t.isProxy) {
      this.#learnMem(t, (err, m) => {
        if (err) return this.#replyDone(proc, seq)(err);
        send(m!.size, m!.perms, m!.backing, 0, 0, 0, '');
      });
      return;
    }
    const m = t.mem;
    if (!m) throw new FractosError('ETYPE', 'memory_stat needs a Memory cap');
    const self = t.owner === proc;
    // Region name and offset are told only on this Controller, or to the owner (served key).
    send(m.size, m.perms, m.backing, 1 | (self ? 2 : 0), m.offset, self ? m.servedKey : 0, m.backing === Backing.SHARED ? m.region : '');
  }

  /** The description of a remote Memory: cached, or asked of its owner (P_STAT). Errors: ETYPE, EREVOKED. */
  #learnMem(t: RemoteProxy, cb: (err: FractosError | null, m: RemoteMemory | null) => void): void {
    if (t.mem) return cb(null, t.mem);
    this.#peerCallRef(t, Op.P_STAT, 0, null, (err, f) => {
      if (err) return cb(err, null);
      t.mem ??= { size: readU64(f!, 16), perms: f!.readUInt8(24), backing: f!.readUInt8(25) === 1 ? 1 : 0 };
      cb(null, t.mem);
    });
  }

  /**
   * Copy all bytes of `src` (a local Memory object) into `dst`, chunked and pipelined
   * (COPY_CHUNK_BYTES chunks, COPY_WINDOW in flight; one chunk up to 16 KiB).
   * Errors, in this order for both operands: ETYPE, EPERM (src not readable / dst not
   * writable), ERANGE (src larger than dst); a remote destination whose description is
   * not cached checks them at its owner (P_MEM_WRITE), for a 0-byte copy too. ETIMEDOUT
   * or EFAULT when a served owner does not answer in time or fails.
   */
  #execCopy(src: Obj, dst: Target, done: Done): void {
    const sm = src.mem;
    if (!sm) return done(new FractosError('ETYPE', 'memory_copy source is not Memory'));
    if (!dst.isProxy && !dst.mem) return done(new FractosError('ETYPE', 'memory_copy destination is not Memory'));
    if (!(sm.perms & Perm.READ)) {
      // A remote destination's type comes first (ETYPE before EPERM): learn it on this error path.
      if (dst.isProxy && !dst.mem) return this.#learnMem(dst, (err) => (err ? done(err) : this.#execCopy(src, dst, done)));
      return done(new FractosError('EPERM', 'memory_copy source is not readable'));
    }
    const known = dst.mem; // local, or the cached description of a remote Memory
    if (known) {
      if (!(known.perms & Perm.WRITE)) return done(new FractosError('EPERM', 'memory_copy destination is not writable'));
      if (sm.size > known.size) return done(new FractosError('ERANGE', `memory_copy of ${sm.size} bytes into ${known.size}`));
    }
    const size = sm.size;
    // Nothing to move; a remote destination still checks its type, rights and size.
    if (size === 0) return dst.isProxy ? this.#writeChunk(dst, 0, 0, EMPTY, done) : done(null);
    const dm = dst.isProxy ? null : dst.mem!;
    if (sm.map && dm?.map) {
      const fault = copyGuarded(dm.map.subarray(dm.offset, dm.offset + size), sm.map.subarray(sm.offset, sm.offset + size));
      return done(fault === CopyFault.NONE ? null : this.#regionFault(fault === CopyFault.DST ? dm : sm, fault === CopyFault.OTHER));
    }
    const chunk = size <= 16384 ? size : Math.min(COPY_CHUNK_BYTES, Math.max(16384, Math.ceil(size / 4)));
    let next = 0;
    let inflight = 0;
    let failed = false;
    const pump = (): void => {
      while (!failed && inflight < COPY_WINDOW && next < size) {
        const off = next;
        const len = Math.min(chunk, size - off);
        next += len;
        inflight++;
        this.#readChunk(src, off, len, (err, bytes) => {
          if (err || failed) return finish(err);
          this.#writeChunk(dst, off, size, bytes!, finish);
        });
      }
    };
    const finish = (err: FractosError | null): void => {
      inflight--;
      if (failed) return;
      if (err) {
        failed = true;
        return done(err);
      }
      if (next >= size && inflight === 0) return done(null);
      pump();
    };
    pump();
  }

  /**
   * Read `len` bytes at `off` of a local Memory object into bytes of the Controller's own
   * (never a view of a mapping: they may be sent to a socket later, and a truncated region
   * must fail here with EFAULT, not in the kernel's write to a peer link).
   */
  #readChunk(obj: Obj, off: number, len: number, cb: (err: FractosError | null, bytes: Uint8Array | null) => void): void {
    const m = obj.mem!;
    if (m.map) {
      const out = Buffer.allocUnsafe(len);
      const fault = copyGuarded(out, m.map.subarray(m.offset + off, m.offset + off + len));
      return fault === CopyFault.NONE ? cb(null, out) : cb(this.#regionFault(m, fault === CopyFault.OTHER), null);
    }
    // MEM_READ: u64 servedKey, u64 offset, u32 length -> REPLY data
    obj.owner.call((seq) => {
      const f = allocFrame(Op.MEM_READ, seq, 20);
      writeU64(f, m.servedKey, 16);
      writeU64(f, m.offset + off, 24);
      f.writeUInt32LE(len, 32);
      return f;
    }, this.servedTimeoutMs, `served read of ${len} bytes`, (err, f) => {
      if (err) return cb(err, null);
      if (f!.length - HEADER_BYTES !== len) return cb(new FractosError('EFAULT', `served read returned ${f!.length - HEADER_BYTES} of ${len} bytes`), null);
      cb(null, f!.subarray(HEADER_BYTES));
    });
  }

  /**
   * A guarded copy faulted on `m`'s shared region (its owner truncated it under our
   * mapping, see docs/core.md "Truncated regions"): forget the region's mapping, so that a
   * later memory_create maps it again and checks its size; Memory objects already on it
   * keep their mapping, and every copy through it stays guarded (EFAULT while it is short).
   * @param other the fault lay in neither operand (not expected; the copy still failed)
   * @returns the EFAULT to answer the copy with, naming the region
   */
  #regionFault(m: MemoryInfo, other: boolean): FractosError {
    // Logged once per mapping: a hostile owner can fault its region at every copy.
    if (this.#regions.get(m.region) === m.map) {
      this.#regions.delete(m.region);
      this.#log.warn({ region: m.region, other }, 'copy faulted on a shared region (truncated by its owner?); region mapping dropped');
    }
    return new FractosError('EFAULT', `shared region '${m.region}' faulted at access (truncated by its owner?)`);
  }

  /**
   * Write bytes at `off` of a Memory target, part of a copy of `total` bytes. A local
   * write copies `bytes` before returning; a remote one sends them without copying (the
   * source bytes stay valid: the Controller's own copy, or a received frame that is never reused).
   */
  #writeChunk(t: Target, off: number, total: number, bytes: Uint8Array, cb: Done): void {
    if (t.isProxy) {
      // P_MEM_WRITE: ref, u64 offset, u64 total, data
      const owner = this.#peers.get(t.ref.controller);
      if (!owner) return cb(new FractosError('EREVOKED', `controller ${t.ref.controller} is not connected`));
      owner.callv((seq) => {
        const f = allocFrame(Op.P_MEM_WRITE, seq, REF_BYTES + 16);
        f.writeUInt32LE(HEADER_BYTES + REF_BYTES + 16 + bytes.length, 0);
        writeRef(f, t.ref, 16);
        writeU64(f, off, 32);
        writeU64(f, total, 40);
        return f;
      }, bytes, (err) => cb(err));
      return;
    }
    this.#writeLocal(t, off, bytes, cb);
  }

  #writeLocal(obj: Obj, off: number, bytes: Uint8Array, cb: Done): void {
    const m = obj.mem!;
    if (off + bytes.length > m.size) return cb(new FractosError('ERANGE', `write ${off}+${bytes.length} beyond ${m.size}`));
    if (bytes.length === 0) return cb(null);
    if (m.map) {
      const fault = copyGuarded(m.map.subarray(m.offset + off, m.offset + off + bytes.length), bytes);
      return cb(fault === CopyFault.NONE ? null : this.#regionFault(m, fault === CopyFault.OTHER));
    }
    // An owner that does not read what it is sent is not sent more: its backlog stays
    // within maxOutboundBytes plus one chunk, however many copies target it.
    const backlog = obj.owner.link.backlogBytes;
    if (backlog > this.limits.maxOutboundBytes) {
      return cb(new FractosError('EAGAIN', `the owner of a served Memory has ${backlog} bytes unread (limit ${this.limits.maxOutboundBytes})`));
    }
    // MEM_WRITE: u64 servedKey, u64 offset, data -> REPLY
    obj.owner.call((seq) => {
      const f = allocFrame(Op.MEM_WRITE, seq, 16 + bytes.length);
      writeU64(f, m.servedKey, 16);
      writeU64(f, m.offset + off, 24);
      f.set(bytes, 32);
      return f;
    }, this.servedTimeoutMs, `served write of ${bytes.length} bytes`, (err) => cb(err));
  }

  // -------------------------------------------------------------------------------------
  // Requests

  #capTargets(proc: ProcConn, args: RequestArgs<number>): RequestArgs<Target> {
    if (!args.caps) return { imms: args.imms };
    return { imms: args.imms, caps: args.caps.map((c) => ({ slot: c.slot, cap: this.#target(proc, c.cap) })) };
  }

  #derive(obj: Obj, args: RequestArgs<Target>): Obj {
    if (!obj.req) throw new FractosError('ETYPE', 'request_derive needs a Request cap');
    return this.#newObj(Kind.REQUEST, obj.owner, obj, null, mergeArgs(obj.req, obj.req.tag, args, this.limits));
  }

  #revtree(obj: Obj): Obj {
    return this.#newObj(obj.kind, obj.owner, obj, obj.mem, obj.req);
  }

  /**
   * Deliver an invocation of a local Request to its provider, waiting for credits. Beyond
   * the credits it queues, bounded per provider in count (maxQueuedDeliveries) and bytes
   * (maxQueuedDeliveryBytes), and per `invoker` (the local Process, or the peer Controller
   * a P_INVOKE came from) in bytes (maxQueuedBytesPerInvoker); beyond any bound `done`
   * gets EAGAIN at once (nothing queued).
   */
  #invokeLocal(obj: Obj, args: RequestArgs<Target>, invoker: ProcConn | PeerConn, done: Done): void {
    if (!obj.req) return done(new FractosError('ETYPE', 'request_invoke needs a Request cap'));
    let info: RequestInfo;
    try {
      info = args.caps || args.imms ? mergeArgs(obj.req, obj.req.tag, args, this.limits) : obj.req;
    } catch (err) {
      return done(err as FractosError);
    }
    const provider = obj.owner;
    if (!provider.alive) return done(new FractosError('EREVOKED', 'provider went away'));
    const d: Delivery = {
      run: () => {
        if (obj.revoked) return done(new FractosError('EREVOKED', 'request revoked while queued'));
        try {
          this.#deliver(provider, info);
        } catch (err) {
          return done(err as FractosError);
        }
        done(null);
      },
      fail: done,
    };
    if (this.#hasCredit(provider) && provider.queueHead === provider.queue.length) {
      d.run();
      return;
    }
    if (provider.queue.length - provider.queueHead >= this.limits.maxQueuedDeliveries) {
      return done(new FractosError('EAGAIN', `process ${provider.id} has ${this.limits.maxQueuedDeliveries} deliveries queued`));
    }
    const bytes = queuedDeliveryBytes(args);
    if (provider.queuedBytes + bytes > this.limits.maxQueuedDeliveryBytes) {
      return done(new FractosError('EAGAIN', `process ${provider.id} has ${provider.queuedBytes} bytes of deliveries queued (limit ${this.limits.maxQueuedDeliveryBytes})`));
    }
    const mine = this.#queuedByInvoker.get(invoker) ?? 0;
    if (mine + bytes > this.limits.maxQueuedBytesPerInvoker) {
      return done(new FractosError('EAGAIN', `the invoker has ${mine} bytes of invocations queued (limit ${this.limits.maxQueuedBytesPerInvoker})`));
    }
    provider.queuedBytes += bytes;
    this.#queuedByInvoker.set(invoker, mine + bytes);
    const unpin = this.#pinArgs(args);
    const dequeued = (): void => {
      unpin();
      provider.queuedBytes -= bytes;
      const left = this.#queuedByInvoker.get(invoker)! - bytes;
      if (left === 0) this.#queuedByInvoker.delete(invoker);
      else this.#queuedByInvoker.set(invoker, left);
    };
    provider.queue.push({
      run: () => {
        d.run(); // installs the arguments in the provider's space first
        dequeued();
      },
      fail: (err) => {
        dequeued();
        done(err);
      },
    });
  }

  /** Bytes of invocations queued for credits by an invoker (a local Process or a peer), over all providers. */
  readonly #queuedByInvoker = new Map<ProcConn | PeerConn, number>();

  /**
   * Bytes of invocations waiting for credits at this Controller (queuedDeliveryBytes of
   * each): `provider` = process id of the provider; `invoker` = process id of a local invoker.
   * Both 0 when unknown. For tests and stats.
   */
  queuedDeliveryBytes(proc: number): { provider: number; invoker: number } {
    const p = this.#procs.get(proc);
    return { provider: p?.queuedBytes ?? 0, invoker: (p && this.#queuedByInvoker.get(p)) ?? 0 };
  }

  /**
   * Whether a DELIVER may be sent to `proc` now: fewer than maxOutstandingDeliveries and
   * fewer than maxOutstandingDeliveryBytes bytes of DELIVERs unacknowledged (so the bytes
   * outstanding stay below that bound plus one DELIVER).
   */
  #hasCredit(proc: ProcConn): boolean {
    return proc.outstanding < this.limits.maxOutstandingDeliveries && proc.outstandingBytes < this.limits.maxOutstandingDeliveryBytes;
  }

  #drain(proc: ProcConn): void {
    const q = proc.queue;
    while (proc.queueHead < q.length && this.#hasCredit(proc)) {
      const d = q[proc.queueHead]!;
      q[proc.queueHead++] = undefined;
      d.run();
    }
    if (proc.queueHead === q.length) {
      q.length = 0;
      proc.queueHead = 0;
    }
  }

  /**
   * DELIVER: u32 tag, args (caps as cids freshly installed in the provider's space), then,
   * for a provider that asked for Feature.MEMORY_DESCRIPTORS: u16 n, n x descriptor of a
   * local Memory cap argument (u16 slot, u8 perms, u8 backing, u8 flags, u8 nameLen,
   * u16 0, u64 size, u64 regionOffset, u64 servedKey, name) — what memory_stat would say.
   * Every cap argument becomes a new cid in the provider's space (delegation).
   */
  #deliver(provider: ProcConn, info: RequestInfo): void {
    let caps: { slot: number; cap: number }[] | undefined;
    const installed: number[] = [];
    try {
      for (let slot = 0; slot < info.caps.length; slot++) {
        const t = info.caps[slot];
        if (t === undefined) continue;
        const e = this.#install(provider, t);
        installed.push(e.cid);
        (caps ??= []).push({ slot, cap: e.cid });
      }
    } catch (err) {
      for (const cid of installed) this.#dropEntry(provider, cid);
      throw err;
    }
    const args: RequestArgs<number> = { caps, imms: info.imms.length ? info.imms : undefined };
    let descs: { slot: number; m: MemoryInfo | RemoteMemory; local: boolean; self: boolean; name: Buffer }[] | null = null;
    let descBytes = 0;
    if (provider.features & Feature.MEMORY_DESCRIPTORS) {
      descs = [];
      descBytes = 2;
      for (let slot = 0; slot < info.caps.length; slot++) {
        const t = info.caps[slot];
        if (!t || t.revoked) continue;
        if (t.isProxy) {
          if (t.mem) descs.push({ slot, m: t.mem, local: false, self: false, name: EMPTY });
          else continue;
        } else {
          if (!t.mem) continue;
          const name = t.mem.backing === Backing.SHARED ? Buffer.from(t.mem.region, 'utf8') : EMPTY;
          descs.push({ slot, m: t.mem, local: true, self: t.owner === provider, name });
        }
        descBytes += 32 + descs[descs.length - 1]!.name.length;
      }
    }
    const argEnd = 20 + argsBytes(args, 4);
    const f = allocFrame(Op.DELIVER, 0, argEnd - HEADER_BYTES + descBytes);
    f.writeUInt32LE(info.tag, 16);
    writeArgs(f, 20, args, writeCid, 4);
    if (descs) {
      let o = argEnd;
      f.writeUInt16LE(descs.length, o);
      o += 2;
      for (const d of descs) {
        f.writeUInt16LE(d.slot, o);
        f.writeUInt8(d.m.perms, o + 2);
        f.writeUInt8(d.m.backing, o + 3);
        f.writeUInt8((d.local ? 1 : 0) | (d.self ? 2 : 0), o + 4);
        f.writeUInt8(d.name.length, o + 5);
        f.writeUInt16LE(0, o + 6);
        writeU64(f, d.m.size, o + 8);
        writeU64(f, 'offset' in d.m ? d.m.offset : 0, o + 16);
        writeU64(f, d.self && 'servedKey' in d.m ? d.m.servedKey : 0, o + 24);
        d.name.copy(f, o + 32);
        o += 32 + d.name.length;
      }
    }
    provider.delivered(f.length);
    provider.link.send(f);
  }

  // -------------------------------------------------------------------------------------
  // Monitors

  #monitorReceive(proc: ProcConn, t: Target, token: number): void {
    const m: Monitor = { proc, peer: 0, token };
    if (t.revoked) {
      this.#fireMonitor(m, MonitorReason.REVOKED);
      return;
    }
    (t.recvMonitors ??= []).push(m);
  }

  #monitorDelegate(proc: ProcConn, t: Target, token: number, seq: number): void {
    if (t.isProxy) {
      const rtoken = this.#nextRemoteToken++;
      this.#remoteMonitors.set(rtoken, { proc, token });
      this.#peerCallRef(t, Op.P_MONITOR_DELEGATE, 4, (f, o) => f.writeUInt32LE(rtoken, o), (err) => {
        if (err) this.#remoteMonitors.delete(rtoken);
        this.#replyDone(proc, seq)(err);
      });
      return;
    }
    const m: Monitor = { proc, peer: 0, token };
    (t.delegMonitors ??= []).push({ m, armed: this.#holders(t, proc) > 0 });
    proc.link.send(allocFrame(Op.REPLY, seq, 0));
  }

  #armDelegMonitors(obj: Obj): void {
    if (!obj.delegMonitors) return;
    for (const d of obj.delegMonitors) {
      if (!d.armed && this.#holders(obj, d.m.proc, d.m.peer) > 0) d.armed = true;
    }
  }

  #checkDelegMonitors(obj: Obj): void {
    if (!obj.delegMonitors) return;
    const keep: { m: Monitor; armed: boolean }[] = [];
    for (const d of obj.delegMonitors) {
      if (d.armed && this.#holders(obj, d.m.proc, d.m.peer) === 0) this.#fireMonitor(d.m, MonitorReason.DELEGATES_GONE);
      else keep.push(d);
    }
    obj.delegMonitors = keep.length ? keep : null;
  }

  #fireMonitor(m: Monitor, reason: number): void {
    if (m.proc) {
      if (!m.proc.alive) return;
      // MONITOR_FIRE: u32 monitor id, u16 reason, u16 0
      const f = allocFrame(Op.MONITOR_FIRE, 0, 8);
      f.writeUInt32LE(m.token, 16);
      f.writeUInt16LE(reason, 20);
      f.writeUInt16LE(0, 22);
      m.proc.link.send(f);
    } else {
      const peer = this.#peers.get(m.peer);
      if (!peer) return;
      const f = allocFrame(Op.P_MONITOR_FIRE, 0, 8);
      f.writeUInt32LE(m.token, 16);
      f.writeUInt16LE(reason, 20);
      f.writeUInt16LE(0, 22);
      peer.link.send(f);
    }
  }

  // -------------------------------------------------------------------------------------
  // Bootstrap names: a map replicated to every peer, each name owned by its publisher.

  /**
   * KV_PUT of Process `proc`: publish `t` as `name`, or replace `proc`'s own entry. Errors:
   * EINVAL (name not 1..256 characters), EEXIST (another Process, here or on a peer,
   * published it: the message names it), ENOSPC (`proc` has MAX_NAMES_PER_PROCESS names).
   */
  #kvPutLocal(proc: ProcConn, name: string, t: Target): void {
    if (!name || name.length > 256) throw new FractosError('EINVAL', 'name must be 1..256 characters');
    const old = this.#kv.get(name);
    if (old && !(old.origin === this.id && old.originEpoch === this.epoch && old.ownerProc === proc.id)) {
      const who = old.origin === this.id ? `process ${old.ownerProc} (${this.#procs.get(old.ownerProc)?.name || 'unnamed'})` : `process ${old.ownerProc} of controller ${old.origin}`;
      throw new FractosError('EEXIST', `'${name}' is published by ${who}; only its publisher can replace it`);
    }
    let mine = this.#kvByProc.get(proc.id);
    if (!old && (mine?.size ?? 0) >= MAX_NAMES_PER_PROCESS) throw new FractosError('ENOSPC', `process ${proc.id} already publishes ${MAX_NAMES_PER_PROCESS} names`);
    const ts = Date.now() * 1024 + (this.#kvClock++ % 1024);
    const e: KvEntry = { ref: this.#refOf(t), ts, since: old?.since ?? ts, origin: this.id, originEpoch: this.epoch, ownerProc: proc.id, pinned: t };
    this.#kvSet(name, e);
    if (!mine) this.#kvByProc.set(proc.id, (mine = new Set()));
    mine.add(name);
    for (const p of this.#peers.values()) this.#sendKv(p, name, e);
  }

  /** Replace (or, with null, remove) the entry of `name`, moving the pin. */
  #kvSet(name: string, e: KvEntry | null): void {
    const old = this.#kv.get(name);
    if (e?.pinned) this.#pin(e.pinned);
    if (e) this.#kv.set(name, e);
    else this.#kv.delete(name);
    if (old?.pinned) this.#unpin(old.pinned);
  }

  /** Local Process `proc` went away: its names go with it, here and at every peer. */
  #kvProcGone(proc: ProcConn): void {
    const mine = this.#kvByProc.get(proc.id);
    if (!mine) return;
    this.#kvByProc.delete(proc.id);
    for (const name of mine) {
      const e = this.#kv.get(name);
      if (!e || e.origin !== this.id || e.ownerProc !== proc.id) continue; // lost to an earlier remote claim
      this.#kvSet(name, null);
      for (const p of this.#peers.values()) this.#sendKv(p, name, e, true);
    }
  }

  /**
   * P_KV_PUT from `peer` (the origin of every entry it sends). A delete removes the entry
   * only when it is still that owner's. A put replaces an entry of the same owner when newer,
   * an entry of an older epoch of that Controller, or another owner's later claim (the
   * earlier `since` wins, then the lower controller id, then the lower process id): the
   * Controllers converge on one owner per name without a consensus round.
   */
  #kvFromPeer(peer: PeerConn, name: string, n: Omit<KvEntry, 'pinned'>, del: boolean): void {
    if (!name || name.length > 256) throw new FractosError('EPROTO', 'P_KV_PUT name must be 1..256 characters');
    if (n.origin !== peer.id) throw new FractosError('EPROTO', `P_KV_PUT from controller ${peer.id} names origin ${n.origin}`);
    const old = this.#kv.get(name);
    const same = old !== undefined && old.origin === n.origin && old.originEpoch === n.originEpoch && old.ownerProc === n.ownerProc;
    if (del) {
      if (same) this.#kvSet(name, null);
      return;
    }
    if (old && !same) {
      const staleEpoch = old.origin === n.origin && old.originEpoch < n.originEpoch;
      const earlier = old.since < n.since || (old.since === n.since && (old.origin < n.origin || (old.origin === n.origin && old.ownerProc < n.ownerProc)));
      if (!staleEpoch && earlier) return;
      if (old.origin === this.id) {
        this.#kvByProc.get(old.ownerProc)?.delete(name);
        this.#log.warn({ name, proc: old.ownerProc, peer: peer.id }, `name '${name}' of process ${old.ownerProc} lost to an earlier claim by process ${n.ownerProc} of controller ${peer.id}`);
      }
    } else if (same && old.ts >= n.ts) return;
    this.#kvSet(name, { ...n, pinned: null });
  }

  /** The link to `peer` is gone: the names its Processes published go too (it resends them when it is back). */
  #kvPeerGone(peerId: number): void {
    for (const [name, e] of this.#kv) if (e.origin === peerId) this.#kvSet(name, null);
  }

  #sendKv(peer: PeerConn, name: string, e: KvEntry, del = false): void {
    // P_KV_PUT: u64 ts, u64 since, u32 origin, u32 owner process, u32 flags (1 delete), u32 0, ref, utf8 name
    const n = Buffer.from(name, 'utf8');
    const f = allocFrame(Op.P_KV_PUT, 0, 48 + n.length);
    writeU64(f, e.ts, 16);
    writeU64(f, e.since, 24);
    f.writeUInt32LE(e.origin, 32);
    f.writeUInt32LE(e.ownerProc, 36);
    f.writeUInt32LE(del ? 1 : 0, 40);
    f.writeUInt32LE(0, 44);
    writeRef(f, e.ref, 48);
    n.copy(f, 64);
    peer.link.send(f);
  }

  // -------------------------------------------------------------------------------------
  // Peers

  #dialPeer(id: number, addr: Address, attempt: number): void {
    if (this.#closing || this.#peers.has(id)) return;
    dial(addr, 5000).then((sock) => {
      if (this.#closing) return sock.destroy();
      const link = new Link(sock, this.limits.maxFrameBytes, SCRATCH_OPS);
      this.#handshaking.add(link);
      dialHandshake(link, this.#handshakeSelf(), id, (err, peer) => {
        this.#handshaking.delete(link);
        if (err || !peer) {
          link.close();
          this.#retryDial(id, addr, attempt + 1, err ?? new Error('closed during the peer handshake'));
        } else this.#peerUp(link, peer.id, peer.epoch, addr);
      });
    }, (err: Error) => this.#retryDial(id, addr, attempt + 1, err));
  }

  /**
   * Dial a peer again after a backoff (50 ms doubling, at most 2 s). `attempt` counts the
   * failures in a row; the first one, then the 2nd, 4th, ... 32nd and every 30th after
   * that are logged at warn with the address, the error and the retry delay.
   */
  #retryDial(id: number, addr: Address, attempt: number, err: Error): void {
    if (this.#closing || this.#peers.has(id)) return;
    const retryMs = Math.min(2000, 50 * 2 ** Math.min(attempt, 6));
    if (logDialFailure(attempt)) {
      const what = err instanceof FractosError && err.code === 'EPERM' ? 'refused (authentication)' : 'unreachable';
      this.#log.warn({ peer: id, addr: formatAddress(addr), attempt, retryMs, err: err.message }, `peer ${id} ${what} at ${formatAddress(addr)}; retrying in ${retryMs} ms`);
    }
    const t = setTimeout(() => {
      this.#dialTimers.delete(t);
      this.#dialPeer(id, addr, attempt);
    }, retryMs);
    this.#dialTimers.add(t);
  }

  /**
   * Warn when peer `id` (a higher id: it dials us) has not connected `delay` ms after
   * `since` (0: now), then again at intervals doubling up to 32 * peerWaitWarnMs.
   */
  #awaitPeer(id: number, since: number, delay = this.peerWaitWarnMs): void {
    const start = since || Date.now();
    const t = setTimeout(() => {
      this.#dialTimers.delete(t);
      if (this.#closing || this.#peers.has(id)) return;
      const s = Math.round((Date.now() - start) / 100) / 10;
      const addr = this.#peerAddrs.get(id) ?? '?';
      this.#log.warn({ peer: id, addr, waitedMs: Date.now() - start }, `peer ${id} has not connected after ${s} s (expected from ${addr}); it dials this controller (lower id)`);
      this.#awaitPeer(id, start, Math.min(delay * 2, 32 * this.peerWaitWarnMs));
    }, delay);
    this.#dialTimers.add(t);
  }

  #handshakeSelf(): HandshakeSelf {
    return { secret: this.#secret!, id: this.id, epoch: this.epoch };
  }

  /**
   * A connection whose first frame is PEER_HELLO: only a listed peer with a higher id (the
   * higher id dials) that proves it holds the cluster secret gets a link; anything else is
   * closed with a warn line naming the remote address and the claimed id.
   */
  #acceptPeer(link: Link, hello: Buffer): void {
    const s = link.socket;
    const remote = s.remoteAddress === undefined ? 'unix' : `${s.remoteAddress}:${s.remotePort}`;
    const admit = (id: number): FractosError | null => {
      if (!this.#secret || !this.#peerAddrs.has(id) || id === this.id) return new FractosError('EPERM', `controller ${id} is not in the peer list`);
      if (id < this.id) return new FractosError('EPERM', `controller ${id} has a lower id: controller ${this.id} dials it`);
      return null;
    };
    const refuse = (err: FractosError, claimed: number | null): void => {
      this.#log.warn({ remote, peer: claimed, err: err.message }, `peer link from ${remote} claiming controller ${claimed ?? '?'} refused: ${err.message}`);
      link.close(err);
    };
    this.#handshaking.add(link);
    acceptHandshake(link, hello, this.#handshakeSelf(), admit, (err, peer) => {
      this.#handshaking.delete(link);
      if (this.#closing) return link.close();
      if (err || !peer) return refuse(err ?? new FractosError('EPROTO', 'no peer'), peer?.id ?? null);
      this.#peerUp(link, peer.id, peer.epoch, null, (why) => refuse(new FractosError('EPERM', why), peer.id));
    });
  }

  /**
   * A proven peer link (its handshake done): a live link of the same id is replaced only by
   * a newer or equal epoch (linkPolicy); `refuse` is told why otherwise (acceptor only).
   * `addr`: the dialer's address of the peer, to redial when the link closes.
   */
  #peerUp(link: Link, id: number, epoch: number, addr: Address | null, refuse?: (why: string) => void): void {
    const old = this.#peers.get(id);
    const policy = linkPolicy(old ? old.epoch : null, epoch);
    if (policy === 'refuse') {
      if (refuse) refuse(`epoch ${epoch} is older than the live link's ${old!.epoch}`);
      else {
        link.close();
        if (addr) this.#retryDial(id, addr, 1, new Error(`a link to controller ${id} is live`));
      }
      return;
    }
    if (old) {
      this.#log.warn({ peer: id, epoch, oldEpoch: old.epoch }, `peer ${id} reconnected (epoch ${old.epoch} -> ${epoch}); the old link is closed`);
      old.link.close();
    }
    const peer = new PeerConn(id, link, epoch);
    this.#peers.set(id, peer);
    // Proxies of an older epoch of this peer are stale now.
    for (const p of [...this.#proxies.values()]) if (p.ref.controller === id && p.ref.epoch !== epoch) this.#proxyRevoked(p, MonitorReason.OWNER_FAILED);
    link.onFrame = (f) => this.#onPeerFrame(peer, f);
    link.onClose = (err) => {
      this.#peerGone(peer);
      if (addr) this.#retryDial(id, addr, 0, err ?? new Error('link closed'));
    };
    // Names of an older epoch of this peer are stale; it sends its current ones.
    for (const [name, e] of this.#kv) if (e.origin === id && e.originEpoch !== epoch) this.#kvSet(name, null);
    for (const [name, e] of this.#kv) if (e.origin === this.id) this.#sendKv(peer, name, e);
    this.#log.info({ peer: id, epoch }, 'peer connected');
  }

  #peerGone(peer: PeerConn): void {
    if (!peer.alive) return;
    peer.alive = false;
    if (this.#peers.get(peer.id) === peer) {
      this.#peers.delete(peer.id);
      this.#kvPeerGone(peer.id);
      if (peer.id > this.id && !this.#closing) this.#awaitPeer(peer.id, 0);
    }
    this.#closedStats.push({ kind: 'peer', id: peer.id, name: `controller-${peer.id}`, ...linkStats(peer.link), backlogBytes: 0, closed: true });
    peer.calls.failAll('EDISCONNECTED', `controller ${peer.id} disconnected`);
    for (const p of [...this.#proxies.values()]) if (p.ref.controller === peer.id) this.#proxyRevoked(p, MonitorReason.OWNER_FAILED);
    for (const obj of this.#objects.values()) {
      if (obj.remoteHolds?.delete(peer.id)) {
        if (obj.remoteHolds.size === 0) obj.remoteHolds = null;
        if (obj.delegMonitors) obj.delegMonitors = obj.delegMonitors.filter((d) => d.m.peer !== peer.id) || null;
        this.#released(obj);
      }
    }
    if (!this.#closing) this.#log.warn({ peer: peer.id }, 'peer disconnected');
  }

  #sendHold(ref: ObjectRef, delta: number): void {
    const peer = this.#peers.get(ref.controller);
    if (!peer) return;
    // P_HOLD: ref, i32 delta
    const f = allocFrame(Op.P_HOLD, 0, REF_BYTES + 4);
    writeRef(f, ref, 16);
    f.writeInt32LE(delta, 32);
    peer.link.send(f);
  }

  #sendRevoked(peerId: number, ref: ObjectRef, reason: number): void {
    const peer = this.#peers.get(peerId);
    if (!peer) return;
    // P_REVOKED: ref, u16 reason, u16 0
    const f = allocFrame(Op.P_REVOKED, 0, REF_BYTES + 4);
    writeRef(f, ref, 16);
    f.writeUInt16LE(reason, 32);
    f.writeUInt16LE(0, 34);
    peer.link.send(f);
  }

  /** Call the owner Controller of a proxy with `ref` + `extra` bytes written by `write`. */
  #peerCallRef(
    t: RemoteProxy,
    op: number,
    extra: number,
    write: ((f: Buffer, off: number) => void) | null,
    cb: (err: FractosError | null, f: Buffer | null) => void,
  ): void {
    const peer = this.#peers.get(t.ref.controller);
    if (!peer) return cb(new FractosError('EREVOKED', `controller ${t.ref.controller} is not connected`), null);
    peer.call((seq) => {
      const f = allocFrame(op, seq, REF_BYTES + extra);
      writeRef(f, t.ref, 16);
      if (write) write(f, 16 + REF_BYTES);
      return f;
    }, (err, f) => {
      if (err?.code === 'EREVOKED') this.#proxyRevoked(t, MonitorReason.REVOKED);
      cb(err, f);
    });
  }

  #peerArgs(args: RequestArgs<Target>): RequestArgs<ObjectRef> {
    return { imms: args.imms, caps: args.caps?.map((c) => ({ slot: c.slot, cap: this.#refOf(c.cap) })) };
  }

  /** What this Controller knows of a Memory target (to tell a peer), or null. */
  #memOf(t: Target): RemoteMemory | null {
    if (t.isProxy) return t.mem;
    return t.mem && { size: t.mem.size, perms: t.mem.perms, backing: t.mem.backing };
  }

  /**
   * P_INVOKE / P_DERIVE body: ref, args, then u16 n and n x Memory descriptor of a cap
   * argument (u16 slot, u8 perms, u8 backing, u32 0, u64 size), so the provider's
   * Controller can describe remote buffers in its DELIVER without asking their owner.
   */
  #peerArgsCall(t: RemoteProxy, op: number, args: RequestArgs<Target>, cb: (err: FractosError | null, f: Buffer | null) => void): void {
    const pargs = this.#peerArgs(args);
    const descs: { slot: number; m: RemoteMemory }[] = [];
    if (args.caps) for (const c of args.caps) {
      const m = this.#memOf(c.cap);
      if (m) descs.push({ slot: c.slot, m });
    }
    const ab = argsBytes(pargs, REF_BYTES);
    // Pinned until the peer answers: it holds the arguments (P_HOLD, sent before its REPLY) by then.
    const unpin = this.#pinArgs(args);
    const reply = cb;
    cb = (err, f) => {
      unpin();
      reply(err, f);
    };
    this.#peerCallRef(t, op, ab + 2 + 16 * descs.length, (f, o) => {
      o = writeArgs(f, o, pargs, writeRef, REF_BYTES);
      f.writeUInt16LE(descs.length, o);
      o += 2;
      for (const d of descs) {
        f.writeUInt16LE(d.slot, o);
        f.writeUInt8(d.m.perms, o + 2);
        f.writeUInt8(d.m.backing, o + 3);
        f.writeUInt32LE(0, o + 4);
        writeU64(f, d.m.size, o + 8);
        o += 16;
      }
    }, cb);
  }

  #peerInvoke(t: RemoteProxy, args: RequestArgs<Target>, done: Done): void {
    this.#peerArgsCall(t, Op.P_INVOKE, args, (err) => done(err));
  }

  #peerDerive(t: RemoteProxy, args: RequestArgs<Target>, cb: (err: FractosError | null, f: Buffer | null) => void): void {
    this.#peerArgsCall(t, Op.P_DERIVE, args, cb);
  }

  #onPeerFrame(peer: PeerConn, frame: Buffer): void {
    const op = frameOp(frame);
    const seq = frameSeq(frame);
    const reply = (err: FractosError | null, body?: Buffer): void => {
      if (!peer.alive) return;
      if (err) peer.link.send(errorReply(seq, errorCodeToWire(err.code), err.message));
      else if (body) peer.link.send(body);
      else peer.link.send(allocFrame(Op.REPLY, seq, 0));
    };
    const replyRef = (obj: Obj): void => {
      // The new object is pre-held for the asking peer.
      (obj.remoteHolds ??= new Map()).set(peer.id, 1);
      const r = allocFrame(Op.REPLY, seq, REF_BYTES);
      writeRef(r, this.#refOf(obj), 16);
      reply(null, r);
    };
    try {
      switch (op) {
        case Op.REPLY:
          peer.calls.complete(frame);
          return;
        case Op.P_NULL:
          reply(null);
          return;
        case Op.P_INVOKE:
        case Op.P_DERIVE: {
          need(frame, REF_BYTES);
          const { args, end } = readArgs(frame, 32, frame.length, readRef, REF_BYTES, null);
          const obj = this.#localObj(readRef(frame, 16));
          const targs: RequestArgs<Target> = {
            imms: args.imms,
            caps: args.caps?.map((c) => ({ slot: c.slot, cap: this.#targetFromRef(c.cap) })),
          };
          if (end + 2 <= frame.length && targs.caps) {
            const n = frame.readUInt16LE(end);
            if (end + 2 + 16 * n > frame.length) throw new FractosError('EPROTO', 'truncated Memory descriptors');
            for (let i = 0, o = end + 2; i < n; i++, o += 16) {
              const slot = frame.readUInt16LE(o);
              const t = targs.caps.find((c) => c.slot === slot)?.cap;
              if (t?.isProxy && t !== DEAD && !t.mem) t.mem = { size: readU64(frame, o + 8), perms: frame.readUInt8(o + 2) & Perm.RW, backing: frame.readUInt8(o + 3) === 1 ? 1 : 0 };
            }
          }
          if (op === Op.P_INVOKE) {
            if (obj.req && !obj.revoked) this.#invocations.record(InvokerKind.PEER, peer.id, this.id, obj.id, obj.owner.id);
            this.#invokeLocal(obj, targs, peer, (err) => reply(err));
          }
          else replyRef(this.#derive(obj, targs));
          return;
        }
        case Op.P_REVTREE: {
          need(frame, REF_BYTES);
          const obj = this.#localObj(readRef(frame, 16));
          replyRef(this.#revtree(obj));
          this.#armDelegMonitors(obj); // held by the peer now (a remote kv_get holds nothing else)
          return;
        }
        case Op.P_DIMINISH: {
          need(frame, REF_BYTES + 17);
          const obj = this.#localObj(readRef(frame, 16));
          replyRef(this.#diminish(obj, frame.readUInt8(32), readU64(frame, 33), readU64(frame, 41)));
          return;
        }
        case Op.P_REVOKE:
          need(frame, REF_BYTES);
          this.#revoke(this.#localObj(readRef(frame, 16)), MonitorReason.REVOKED);
          reply(null);
          return;
        case Op.P_COPY: {
          need(frame, 2 * REF_BYTES);
          const src = this.#localObj(readRef(frame, 16));
          const dref = readRef(frame, 32);
          const dst = dref.controller === this.id ? this.#localObj(dref) : (this.#proxies.get(refKey(dref)) ?? new RemoteProxy(dref, refKey(dref)));
          this.#execCopy(src, dst, (err) => reply(err));
          return;
        }
        case Op.P_MEM_WRITE: {
          need(frame, REF_BYTES + 16);
          const obj = this.#localObj(readRef(frame, 16));
          if (!obj.mem) throw new FractosError('ETYPE', 'memory_copy destination is not Memory');
          if (!(obj.mem.perms & Perm.WRITE)) throw new FractosError('EPERM', 'memory_copy destination is not writable');
          const total = readU64(frame, 40);
          if (total > obj.mem.size) throw new FractosError('ERANGE', `memory_copy of ${total} bytes into ${obj.mem.size}`);
          this.#writeLocal(obj, readU64(frame, 32), frame.subarray(48), (err) => reply(err));
          return;
        }
        case Op.P_STAT: {
          need(frame, REF_BYTES);
          const obj = this.#localObj(readRef(frame, 16));
          if (!obj.mem) throw new FractosError('ETYPE', 'not Memory');
          // REPLY: u64 size, u8 perms, u8 backing
          const r = allocFrame(Op.REPLY, seq, 10);
          writeU64(r, obj.mem.size, 16);
          r.writeUInt8(obj.mem.perms, 24);
          r.writeUInt8(obj.mem.backing, 25);
          reply(null, r);
          return;
        }
        case Op.P_MONITOR_DELEGATE: {
          need(frame, REF_BYTES + 4);
          const obj = this.#localObj(readRef(frame, 16));
          const m: Monitor = { proc: null, peer: peer.id, token: frame.readUInt32LE(32) };
          (obj.delegMonitors ??= []).push({ m, armed: this.#holders(obj, null, peer.id) > 0 });
          reply(null);
          return;
        }
        case Op.P_MONITOR_FIRE: {
          need(frame, 8);
          const token = frame.readUInt32LE(16);
          const m = this.#remoteMonitors.get(token);
          if (m) {
            this.#remoteMonitors.delete(token);
            this.#fireMonitor({ proc: m.proc, peer: 0, token: m.token }, frame.readUInt16LE(20));
          }
          return;
        }
        case Op.P_HOLD: {
          need(frame, REF_BYTES + 4);
          const ref = readRef(frame, 16);
          const delta = frame.readInt32LE(32);
          const obj = ref.epoch === this.epoch ? this.#objects.get(ref.id) : undefined;
          if (!obj || obj.revoked) {
            if (delta > 0) this.#sendRevoked(peer.id, ref, MonitorReason.REVOKED);
            return;
          }
          const holds = (obj.remoteHolds ??= new Map());
          const n = (holds.get(peer.id) ?? 0) + delta;
          if (n > 0) holds.set(peer.id, n);
          else holds.delete(peer.id);
          if (holds.size === 0) obj.remoteHolds = null;
          if (delta > 0) this.#armDelegMonitors(obj);
          else this.#released(obj);
          return;
        }
        case Op.P_REVOKED: {
          need(frame, REF_BYTES + 4);
          const p = this.#proxies.get(refKey(readRef(frame, 16)));
          if (p) this.#proxyRevoked(p, frame.readUInt16LE(32));
          return;
        }
        case Op.P_KV_PUT: {
          need(frame, 32 + REF_BYTES + 1);
          const entry = { ts: readU64(frame, 16), since: readU64(frame, 24), origin: frame.readUInt32LE(32), originEpoch: peer.epoch, ownerProc: frame.readUInt32LE(36), ref: readRef(frame, 48) };
          this.#kvFromPeer(peer, frame.toString('utf8', 64), entry, (frame.readUInt32LE(40) & 1) !== 0);
          return;
        }
        default:
          throw new FractosError('EPROTO', `unknown peer op ${opName(op)}`);
      }
    } catch (err) {
      if (err instanceof FractosError && err.code !== 'EPROTO') return reply(err);
      this.#log.warn({ peer: peer.id, err: String(err) }, 'malformed peer frame');
      peer.link.close(err instanceof Error ? err : new Error(String(err)));
    }
  }

  // -------------------------------------------------------------------------------------

  /**
   * INTROSPECT (docs/protocol.md "Introspection"; layout in libfractos/introspect.ts):
   * allowed to a Process on a unix channel whose kernel uid is the Controller's, or root;
   * EPERM otherwise (tcp channels included). Costs one pass over the objects and the
   * Processes (O(objects + procs)), only when asked.
   */
  #replyIntrospect(proc: ProcConn, seq: number, since: number): void {
    const myUid = process.getuid?.() ?? -1;
    if (proc.uid < 0 || (proc.uid !== myUid && proc.uid !== 0)) {
      throw new FractosError('EPERM', `INTROSPECT is for Processes of uid ${myUid} on a unix socket (this one: ${proc.uid < 0 ? 'unknown uid' : `uid ${proc.uid}`})`);
    }
    const owned = new Map<number, number>();
    for (const obj of this.#objects.values()) owned.set(obj.owner.id, (owned.get(obj.owner.id) ?? 0) + 1);
    const procs: ProcConn[] = [];
    const names: Buffer[] = [];
    let caps = 0;
    let size = INTROSPECT_FIXED_BYTES;
    for (const p of this.#procs.values()) {
      caps += p.capCount;
      if (procs.length >= MAX_INTROSPECT_PROCS) continue;
      const n = Buffer.from(p.name, 'utf8').subarray(0, 255);
      procs.push(p);
      names.push(n);
      size += INTROSPECT_PROC_BYTES + n.length;
    }
    const w = this.#invocations.window(since, this.#invocations.capacity);
    size += w.count * INVOCATION_RECORD_BYTES;
    const r = allocFrame(Op.REPLY, seq, size);
    const b = HEADER_BYTES;
    r.writeUInt32LE(this.id, b);
    r.writeUInt32LE(this.epoch, b + 4);
    r.writeUInt32LE(this.#procs.size > procs.length ? IntrospectFlag.PROCS_TRUNCATED : 0, b + 8);
    r.writeUInt32LE(this.#objects.size, b + 12);
    r.writeUInt32LE(caps, b + 16);
    r.writeUInt32LE(this.#proxies.size, b + 20);
    r.writeUInt32LE(this.#kv.size, b + 24);
    r.writeUInt16LE(procs.length, b + 28);
    r.writeUInt16LE(w.count, b + 30);
    writeU64(r, w.first, b + 32);
    writeU64(r, this.#invocations.nextSeq, b + 40);
    let o = b + INTROSPECT_FIXED_BYTES;
    procs.forEach((p, i) => {
      r.writeUInt32LE(p.id, o);
      r.writeUInt32LE(p.pid, o + 4);
      r.writeUInt32LE(owned.get(p.id) ?? 0, o + 8);
      r.writeUInt32LE(p.capCount, o + 12);
      r.writeUInt8(names[i]!.length, o + 16);
      names[i]!.copy(r, o + 17);
      o += INTROSPECT_PROC_BYTES + names[i]!.length;
    });
    const now = performance.now();
    for (let i = 0; i < w.count; i++, o += INVOCATION_RECORD_BYTES) this.#invocations.encode(w.first + i, r, o, now);
    proc.link.send(r);
  }

  #replyStats(proc: ProcConn, seq: number): void {
    // REPLY: u32 controller id, u32 epoch, u16 n, then n x (u8 kind, u8 flags (bit 0:
    // closed), u32 id, u64 framesIn, u64 framesOut, u64 bytesIn, u64 bytesOut, u16 nameLen, name)
    const links = this.stats();
    const names = links.map((l) => Buffer.from(l.name, 'utf8'));
    let size = 10;
    for (const n of names) size += 40 + n.length;
    const r = allocFrame(Op.REPLY, seq, size);
    r.writeUInt32LE(this.id, 16);
    r.writeUInt32LE(this.epoch, 20);
    r.writeUInt16LE(links.length, 24);
    let o = 26;
    links.forEach((l, i) => {
      r.writeUInt8(l.kind === 'process' ? 0 : 1, o);
      r.writeUInt8(l.closed ? 1 : 0, o + 1);
      r.writeUInt32LE(l.id, o + 2);
      writeU64(r, l.framesIn, o + 6);
      writeU64(r, l.framesOut, o + 14);
      writeU64(r, l.bytesIn, o + 22);
      writeU64(r, l.bytesOut, o + 30);
      r.writeUInt16LE(names[i]!.length, o + 38);
      names[i]!.copy(r, o + 40);
      o += 40 + names[i]!.length;
    });
    proc.link.send(r);
  }
}

/**
 * Whether a link closed because of a bug of ours: an exception that is neither a
 * FractosError (a typed refusal) nor a system error of the socket (ECONNRESET, EPIPE: an
 * Error with a string `code`). Logged as 'internal error'.
 */
function isInternalError(err: Error | undefined): err is Error {
  return err !== undefined && !(err instanceof FractosError) && typeof (err as NodeJS.ErrnoException).code !== 'string';
}

/** Throw EPROTO unless the frame body has at least `n` bytes. */
function need(frame: Buffer, n: number): void {
  if (frame.length < HEADER_BYTES + n) throw new FractosError('EPROTO', `frame body shorter than ${n} bytes`);
}

/**
 * Merge new arguments into a Request's (paper §3.3): new immediate ranges must not
 * overlap set ones and new cap slots must be empty (EARGSET). Immediates are copied.
 */
export function mergeArgs(base: RequestInfo | null, tag: number, args: RequestArgs<Target>, limits: Limits): RequestInfo {
  const imms: ImmRange[] = base ? base.imms.slice() : [];
  const caps: (Target | undefined)[] = base ? base.caps.slice() : [];
  if (args.imms) {
    for (const r of args.imms) {
      if (r.bytes.length === 0) continue;
      const end = r.offset + r.bytes.length;
      if (end > limits.maxImmBytes) throw new FractosError('ERANGE', `immediate range ends at ${end} > ${limits.maxImmBytes}`);
      let i = 0;
      while (i < imms.length && imms[i]!.offset < r.offset) i++;
      const prev = imms[i - 1];
      const next = imms[i];
      if ((prev && prev.offset + prev.bytes.length > r.offset) || (next && next.offset < end)) {
        throw new FractosError('EARGSET', `immediate range ${r.offset}+${r.bytes.length} is already set`);
      }
      imms.splice(i, 0, { offset: r.offset, bytes: Buffer.from(r.bytes) });
    }
  }
  if (args.caps) {
    for (const c of args.caps) {
      if (c.slot >= limits.maxCapSlots) throw new FractosError('ERANGE', `cap slot ${c.slot} >= ${limits.maxCapSlots}`);
      if (caps[c.slot] !== undefined) throw new FractosError('EARGSET', `cap slot ${c.slot} is already set`);
      caps[c.slot] = c.cap;
    }
  }
  return { tag, imms, caps };
}

/** Counters and backlog of a link, for `Controller.stats`. */
function linkStats(link: Link): Omit<LinkStats, 'kind' | 'id' | 'name'> {
  return { ...link.counters, backlogBytes: link.backlogBytes, readPauses: link.readPauses };
}

/** Read, increment and durably store the epoch in `dir/epoch`. Errors: EIO. */
export function bumpEpoch(dir: string): number {
  try {
    mkdirSync(dir, { recursive: true });
    const path = join(dir, 'epoch');
    let epoch = 0;
    if (existsSync(path)) {
      const s = readFileSync(path, 'utf8').trim();
      if (!/^\d+$/.test(s)) throw new FractosError('EIO', `corrupt epoch file ${path}`);
      epoch = Number(s);
    }
    epoch = (epoch + 1) >>> 0 || 1;
    const tmp = `${path}.tmp`;
    writeFileSync(tmp, `${epoch}\n`);
    const fd = openSync(tmp, 'r');
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
    return epoch;
  } catch (err) {
    if (err instanceof FractosError) throw err;
    throw new FractosError('EIO', `state dir ${dir}: ${(err as Error).message}`);
  }
}

/** A held lock on a Controller's state dir (`STATE_DIR/lock`, holding the holder's pid). */
export interface StateDirLock {
  readonly path: string;
  release(): void;
}

const EWOULDBLOCK = 11;

/**
 * Lock a state dir for one Controller: an exclusive `flock` on `dir/lock`, held (fd open)
 * until `release()` or the process ends — its death included, so no stale lock can lock a
 * Controller out (a pid left in the file by a Controller killed with -9 means nothing, even
 * when that pid is alive again). The file holds the holder's pid for the message only; it is
 * removed on release. Errors: EBUSY (a live Controller holds it: the message names the dir and
 * its pid; in the same OS process too), EIO (the dir or file cannot be created or written),
 * ENODEV (the shm addon, which provides flock, is unavailable).
 */
export function lockStateDir(dir: string): StateDirLock {
  const path = join(dir, 'lock');
  const { flock } = loadShm();
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new FractosError('EIO', `state dir ${dir}: ${(err as Error).message}`);
  }
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644);
    } catch (err) {
      throw new FractosError('EIO', `state dir lock ${path}: ${(err as Error).message}`);
    }
    const r = flock(fd, true, false);
    if (r === -EWOULDBLOCK) {
      let holder = '';
      try {
        holder = readFileSync(fd, 'utf8').trim();
      } catch {
        // unreadable: no pid in the message
      }
      closeSync(fd);
      const who = /^[1-9][0-9]{0,9}$/.test(holder) ? `controller pid ${holder}` : 'another controller';
      throw new FractosError('EBUSY', `state dir ${dir} is in use by ${who} (lock file ${path})`);
    }
    if (r !== 0) {
      closeSync(fd);
      throw new FractosError('EIO', `state dir lock ${path}: flock failed: errno ${-r}`);
    }
    // A holder that released (unlinking the file) between our open and flock leaves us the
    // lock of an unlinked inode: take the path's current file instead.
    let same = false;
    try {
      const st = statSync(path);
      const mine = fstatSync(fd);
      same = st.ino === mine.ino && st.dev === mine.dev;
    } catch {
      // unlinked meanwhile
    }
    if (!same) {
      closeSync(fd);
      continue;
    }
    try {
      ftruncateSync(fd, 0);
      writeSync(fd, `${process.pid}\n`, 0);
    } catch (err) {
      closeSync(fd);
      throw new FractosError('EIO', `state dir lock ${path}: ${(err as Error).message}`);
    }
    let held = true;
    return {
      path,
      release: () => {
        if (!held) return;
        held = false;
        tryUnlink(path); // before the close: whoever opens the path next makes a new file
        closeSync(fd);
      },
    };
  }
  throw new FractosError('EBUSY', `state dir ${dir}: could not take the lock ${path}`);
}

/**
 * Make a unix socket path free for listening: nothing there, or a stale socket (a connect
 * is refused) which is unlinked. Errors: EADDRINUSE (something answers a connect there),
 * EEXIST (the path is not a socket).
 */
async function claimUnixPath(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // nothing there
  }
  if (!isSocket) throw new FractosError('EEXIST', `unix:${path} exists and is not a socket; not removing it`);
  const answers = await new Promise<boolean>((resolve) => {
    const sock = net.createConnection(path);
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => resolve(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT'));
  });
  if (answers) throw new FractosError('EADDRINUSE', `unix:${path} answers connections: another controller is listening there`);
  tryUnlink(path);
}

/** Listen on an address; returns it as listened on (tcp port 0 resolved). Errors: EADDRINUSE, EINVAL. */
function listenOn(server: net.Server, addr: Address): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const where = formatAddress(addr);
      if (err.code === 'EADDRINUSE') reject(new FractosError('EADDRINUSE', `${where} is in use`));
      else reject(new FractosError('EINVAL', `cannot listen on ${where}: ${err.message}`));
    });
    const done = (): void => {
      server.removeAllListeners('error');
      if (addr.kind === 'unix') return resolve(formatAddress(addr));
      resolve(formatAddress({ ...addr, port: (server.address() as net.AddressInfo).port }));
    };
    if (addr.kind === 'unix') server.listen(addr.path, done);
    else server.listen(addr.port, addr.host, done);
  });
}

function tryUnlink(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

/**
 * The Controller: the trusted layer of FractOS (paper §3). It owns every object its
 * Processes register, every Process's capability space, routes invocations and memory
 * copies, and talks to peer Controllers over TCP. See docs/protocol.md for the frames.
 *
 * The Controller runs natively (controller/src/, addon `fractos_controller`, docs/core.md):
 * one epoll loop thread inside this Node process owns every socket, every frame and all
 * Controller state; no JS runs per invocation, copy chunk or frame. This class is its thin
 * host: it checks options, locks the state dir, claims unix socket paths, bumps the epoch,
 * and forwards the native log lines to `log`. Queries (stats, tableSizes, ...) run on the
 * loop thread and wait for it.
 */
import { closeSync, constants, existsSync, fstatSync, fsyncSync, ftruncateSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, rmdirSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { FractosError } from '../libfractos/errors.js';
import { formatAddress, parseAddress, type Address } from '../libfractos/link.js';
import { DEFAULT_LIMITS, type Limits } from '../libfractos/protocol.js';
import { loadNative } from '../native/loader.js';
import { loadShm } from '../native/shm/index.js';
import { checkClusterSecret } from './peer-auth.js';

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
   * else (docs/protocol.md "Peer handshake"); the same on every Controller of the cluster.
   * Required when `peers` is not empty.
   */
  clusterSecret?: Uint8Array | string;
  /** Receive-side and queueing limits (libfractos/protocol.ts Limits); each a positive integer. */
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
  /** Log sink (pino-compatible subset); `debug` is used when present. */
  log?: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void; debug?: (o: object, m?: string) => void };
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
  /** Bytes queued for this link and not yet taken by the kernel. */
  backlogBytes: number;
  /** Times the Controller stopped reading this link because its backlog passed `maxOutboundBytes`. */
  readPauses: number;
  /** True for a link that has closed (its counters are kept so `stats` covers the whole run). */
  closed?: boolean;
}

/**
 * Sizes of the Controller's tables (leak checks): live objects, Process channels, cap
 * entries over all capability spaces, peer links, links in the peer handshake, remote
 * proxies (and those pre-held), bootstrap names, remote monitors, invokers with invocations
 * queued for credits, and deliveries queued.
 */
export interface TableSizes {
  objects: number;
  procs: number;
  caps: number;
  peers: number;
  handshaking: number;
  proxies: number;
  preheld: number;
  names: number;
  remoteMonitors: number;
  queuedInvokers: number;
  queuedDeliveries: number;
}

/** Default bound on one served-memory access (ms), see ControllerOptions.servedTimeoutMs. */
export const DEFAULT_SERVED_TIMEOUT_MS = 5000;

/** Default wait (ms) for a dialling peer before the first warning, see ControllerOptions.peerWaitWarnMs. */
export const DEFAULT_PEER_WAIT_WARN_MS = 10_000;

/** Default bound on the wait for a connection's first frame (ms), see ControllerOptions.helloTimeoutMs. */
export const DEFAULT_HELLO_TIMEOUT_MS = 5000;

/** The addon's object (controller/src/host_addon.cc). */
interface NativeHost {
  listen(text: string, unix: boolean, pathOrHost: string, port: number): string;
  start(epoch: number): void;
  stats(): LinkStats[];
  tableSizes(): { core: string; handshaking: number };
  objectCount(): number;
  queuedDeliveryBytes(proc: number): [number, number];
  connectedPeers(): number[];
  addPeer(id: number, text: string, unix: boolean, hostOrPath: string, port: number, epoch: number): void;
  failPeer(id: number, epoch: number, why: string): void;
  close(): void;
}
interface ControllerBinding {
  ControllerHost: new (opts: object, log: (level: number, msg: string, fields: string) => void) => NativeHost;
}

const noopLog = { info: () => {}, warn: () => {} };

/** Largest value of each limit (u32 counts, byte bounds below 2^53). */
const LIMIT_MAX: Record<keyof Limits, number> = {
  maxFrameBytes: 0xffffffff, maxImmBytes: 0xffffffff, maxCapSlots: 0xffffffff, maxCaps: 0xffffffff,
  maxOutstandingDeliveries: 0xffffffff, maxOutstandingDeliveryBytes: Number.MAX_SAFE_INTEGER,
  maxQueuedDeliveries: 0xffffffff, maxQueuedDeliveryBytes: Number.MAX_SAFE_INTEGER,
  maxQueuedBytesPerInvoker: Number.MAX_SAFE_INTEGER, maxOutboundBytes: Number.MAX_SAFE_INTEGER,
  queueRingBytes: 1 << 26,
};

export class Controller {
  readonly id: number;
  readonly epoch: number;
  readonly limits: Limits;
  readonly servedTimeoutMs: number;
  readonly helloTimeoutMs: number;
  readonly peerWaitWarnMs: number;
  readonly #host: NativeHost;
  readonly #lock: StateDirLock;
  readonly #addresses: string[];
  readonly #hasSecret: boolean;
  #closed = false;
  /** What the queries answer once closed (taken just before the loop stops). */
  #final: { stats: LinkStats[]; tables: TableSizes; objects: number } | null = null;

  private constructor(opts: ControllerOptions, limits: Limits, epoch: number, lock: StateDirLock, host: NativeHost, addresses: string[]) {
    this.id = opts.id;
    this.epoch = epoch;
    this.limits = limits;
    this.servedTimeoutMs = opts.servedTimeoutMs ?? DEFAULT_SERVED_TIMEOUT_MS;
    this.helloTimeoutMs = opts.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS;
    this.peerWaitWarnMs = opts.peerWaitWarnMs ?? DEFAULT_PEER_WAIT_WARN_MS;
    this.#lock = lock;
    this.#host = host;
    this.#addresses = addresses;
    this.#hasSecret = opts.clusterSecret !== undefined;
  }

  /**
   * Start a Controller: lock `stateDir` for its whole life, listen, then bump and persist
   * the epoch, start the native loop (which dials peers with lower ids). Nothing is taken
   * over: the epoch is bumped only once the lock is held and every address is bound. A unix
   * socket path is unlinked only when it is stale (nothing answers a connect).
   * Errors: EINVAL (bad address, id, limit, servedTimeoutMs, helloTimeoutMs, peerWaitWarnMs,
   * peer id or address, or cluster secret; peers without a cluster secret), EBUSY
   * (`stateDir` is locked by a live Controller: the message names the dir and its pid),
   * EADDRINUSE (a Controller answers on a unix path, or a tcp port is taken), EEXIST (a
   * unix path that is not a socket), EIO (state dir), ENODEV (the native Controller addon
   * is not built: run `node native/build.mjs controller`).
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
    const limits: Limits = { ...DEFAULT_LIMITS };
    for (const [k, v] of Object.entries(opts.limits ?? {}) as [keyof Limits, number | undefined][]) {
      if (v === undefined) continue;
      if (!(k in LIMIT_MAX)) throw new FractosError('EINVAL', `unknown limit '${k}'`);
      if (!Number.isInteger(v) || v < 1 || v > LIMIT_MAX[k]) throw new FractosError('EINVAL', `limit ${k} must be an integer 1..${LIMIT_MAX[k]}, got ${v}`);
      limits[k] = v;
    }
    if (limits.queueRingBytes < 4096 || (limits.queueRingBytes & (limits.queueRingBytes - 1)) !== 0) {
      throw new FractosError('EINVAL', `limit queueRingBytes must be a power of two in [4096, 2^26], got ${limits.queueRingBytes}`);
    }
    if (limits.maxFrameBytes < 64) throw new FractosError('EINVAL', `limit maxFrameBytes must be at least 64, got ${limits.maxFrameBytes}`);
    const secret = opts.clusterSecret === undefined ? null : checkClusterSecret(opts.clusterSecret);
    if (!secret && opts.peers?.size) {
      throw new FractosError('EINVAL', 'peer links need a cluster secret (clusterSecret, fractos controller --cluster-secret-file FILE)');
    }
    const peers: [number, string, boolean, string, number][] = [];
    for (const [pid, text] of opts.peers ?? new Map<number, string>()) {
      if (!Number.isInteger(pid) || pid < 1 || pid > 0xffffffff) throw new FractosError('EINVAL', `peer id must be 1..2^32-1, got ${pid}`);
      const a = parseAddress(text);
      peers.push(a.kind === 'unix' ? [pid, text, true, a.path, 0] : [pid, text, false, a.host, a.port]);
    }
    const addrs = opts.listen.map(parseAddress);
    const { binding } = loadNative<ControllerBinding>('controller');
    const log = opts.log ?? noopLog;
    // A refused start changes nothing: a state dir made here is removed again (rmdir: only
    // while empty, i.e. holding nothing but the lock file, which release() unlinks).
    const dirExisted = existsSync(opts.stateDir);
    const lock = lockStateDir(opts.stateDir);
    const host = new binding.ControllerHost(
      {
        id: opts.id, limits, secret, peers,
        servedTimeoutMs: opts.servedTimeoutMs ?? DEFAULT_SERVED_TIMEOUT_MS,
        helloTimeoutMs: opts.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS,
        peerWaitWarnMs: opts.peerWaitWarnMs ?? DEFAULT_PEER_WAIT_WARN_MS,
      },
      (level, msg, fields) => logLine(log, level, msg, fields),
    );
    const addresses: string[] = [];
    let epoch: number;
    try {
      for (const a of addrs) if (a.kind === 'unix') await claimUnixPath(a.path);
      for (const a of addrs) addresses.push(listenOn(host, a));
      epoch = bumpEpoch(opts.stateDir);
      host.start(epoch);
    } catch (err) {
      host.close();
      for (const a of addresses) if (a.startsWith('unix:')) tryUnlink(a.slice(5));
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
    const c = new Controller(opts, limits, epoch, lock, host, addresses);
    log.info({ id: c.id, epoch, listen: addresses }, 'controller started');
    return c;
  }

  /** Addresses actually listened on (with the chosen port for tcp port 0). */
  get addresses(): string[] {
    return [...this.#addresses];
  }

  /** Number of live objects (for leak checks in tests). */
  get objectCount(): number {
    return this.#final ? this.#final.objects : this.#host.objectCount();
  }

  /** Sizes of the Controller's tables, read-only (leak checks in tests and the fuzzer); see TableSizes. */
  tableSizes(): TableSizes {
    if (this.#final) return { ...this.#final.tables };
    const t = this.#host.tableSizes();
    const core = JSON.parse(t.core) as Partial<TableSizes>;
    return {
      objects: 0, procs: 0, caps: 0, peers: 0, proxies: 0, preheld: 0, names: 0, remoteMonitors: 0, queuedInvokers: 0, queuedDeliveries: 0,
      ...core, handshaking: t.handshaking,
    };
  }

  /** Ids of connected peers. */
  get connectedPeers(): number[] {
    return this.#final ? [] : this.#host.connectedPeers();
  }

  /**
   * Peer `id` is a member at `addr` (tcp://HOST:PORT) with `epoch` (0: unknown): it joins
   * the peer list (dialled at once when its id is lower); its links of an older epoch are
   * refused and a live one is closed. For a PeerSource (controller/membership.ts).
   * Errors: EINVAL (id or address), EDISCONNECTED (closed).
   */
  addPeer(id: number, addr: string, epoch: number): void {
    if (!Number.isInteger(id) || id < 1 || id > 0xffffffff) throw new FractosError('EINVAL', `peer id must be 1..2^32-1, got ${id}`);
    if (!this.#hasSecret) throw new FractosError('EINVAL', 'peer links need a cluster secret (clusterSecret, fractos controller --cluster-secret-file FILE)');
    const a = parseAddress(addr);
    if (a.kind === 'unix') this.#host.addPeer(id, addr, true, a.path, 0, epoch >>> 0);
    else this.#host.addPeer(id, addr, false, a.host, a.port, epoch >>> 0);
  }

  /**
   * Peer `id` at `epoch` failed (its membership lease expired): its link is closed even if
   * the TCP connection still works, so its objects are revoked for their holders and
   * monitors fire 'owner-failed'; it is not dialled and its links are refused until
   * `addPeer` with a newer epoch. `why` is logged. Errors: EDISCONNECTED (closed).
   */
  failPeer(id: number, epoch: number, why: string): void {
    this.#host.failPeer(id >>> 0, epoch >>> 0, why);
  }

  /** Per-link counters, live links and closed ones. */
  stats(): LinkStats[] {
    return this.#final ? this.#final.stats.map((s) => ({ ...s })) : this.#host.stats();
  }

  /**
   * Bytes of invocations waiting for credits at this Controller: `provider` = bytes queued
   * for the Process with this id as provider; `invoker` = bytes it queued as a local invoker.
   * Both 0 when unknown. For tests and stats.
   */
  queuedDeliveryBytes(proc: number): { provider: number; invoker: number } {
    if (this.#final) return { provider: 0, invoker: 0 };
    const [provider, invoker] = this.#host.queuedDeliveryBytes(proc >>> 0);
    return { provider, invoker };
  }

  /** Close every link and listener (the loop thread is joined), and unlock the state dir. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const stats = this.#host.stats().map((s) => ({ ...s, backlogBytes: 0, closed: true }));
    this.#final = { stats, tables: this.tableSizes(), objects: this.#host.objectCount() };
    this.#host.close();
    for (const a of this.#addresses) if (a.startsWith('unix:')) tryUnlink(a.slice(5));
    this.#lock.release();
  }
}

/** A native log line (level 0 debug, 1 info, 2 warn; `fields` a JSON object text) to `log`. */
function logLine(log: NonNullable<ControllerOptions['log']>, level: number, msg: string, fields: string): void {
  let o: object;
  try {
    o = fields === '{}' ? {} : (JSON.parse(fields) as object);
  } catch {
    o = { fields };
  }
  if (level >= 2) log.warn(o, msg);
  else if (level === 1) log.info(o, msg);
  else log.debug?.(o, msg);
}

/** Listen on an address through the addon; returns it as listened on (tcp port 0 resolved). Errors: EADDRINUSE, EINVAL. */
function listenOn(host: NativeHost, a: Address): string {
  const where = formatAddress(a);
  try {
    return a.kind === 'unix' ? host.listen(where, true, a.path, 0) : host.listen(where, false, a.host, a.port);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'EADDRINUSE') throw new FractosError('EADDRINUSE', `${where} is in use`);
    throw new FractosError('EINVAL', `cannot listen on ${where}: ${(err as Error).message}`);
  }
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
export async function claimUnixPath(path: string): Promise<void> {
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

function tryUnlink(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

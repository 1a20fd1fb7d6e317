/**
 * Shared-memory queue pairs between a Process and its Controller (docs/queues.md), through
 * the `fractos_queue` addon: one sealed memfd holding a request ring (Process -> Controller)
 * and a completion/delivery ring (Controller -> Process), passed over the unix socket with
 * SCM_RIGHTS, with adaptive wake-ups (spin, yield, then sleep on an eventfd or a futex).
 *
 * `QueueChannel` is one side of a pair. Completions arrive either through `watch` (the side's
 * eventfd watched by libuv; the callback gets a batch of entries in one reused buffer) or by
 * polling (`wait` + `drain`: a synchronous spin-then-block call for latency-critical clients).
 * Entries are byte strings of at most `maxEntry` bytes (a quarter of the ring by default).
 *
 * Errors (FractosError codes): EPROTO (the peer broke the ring's rules: drop the channel),
 * ERANGE (an entry larger than maxEntry), ETIMEDOUT, EINVAL (bad argument), EDISCONNECTED (closed),
 * and the errno of a failed system call.
 */
import { FractosError } from '../../libfractos/errors.js';
import { loadNative, nativeError } from '../loader.js';

/** Which end of a pair: the Process produces requests, the Controller completions. */
export const QueueSide = { PROCESS: 0, CONTROLLER: 1 } as const;
export type QueueSide = (typeof QueueSide)[keyof typeof QueueSide];

interface NativeChannel {
  push(data: Uint8Array, publish?: boolean): boolean;
  publish(): void;
  pushWait(data: Uint8Array, timeoutMs: number): void;
  drain(out: Uint8Array): number;
  wait(timeoutMs: number): boolean;
  watch(batch: Uint8Array, cb: (bytes: number, err: number) => void): void;
  unwatch(): void;
  armSpace(): boolean;
  stats(): QueueStats;
  close(): void;
}

/** Offsets of the pair layout (docs/queues.md), for tools and tests. */
export interface QueueLayout {
  headerBytes: number;
  ctlLine: number;
  minRingBytes: number;
  maxRingBytes: number;
  entryHeader: number;
  kindData: number;
  kindWrap: number;
}

/**
 * The client's unix socket owned by the addon (src/sock.cc; used by libfractos/unix-link.ts).
 * Callbacks run from the event loop. `onFrames(buf, fds)`: `buf` holds whole frames back to
 * back (a new Buffer per batch, owned by JS); `fds` null or `[frameOffset, fd, ...]` (fds that
 * came with the frame at that offset of `buf`). `onClose(code, message)`: `'drain'` (the
 * output queue emptied after `backlog(true)`), `'done'` (a `close()` finished: the fd is
 * closed), or an error code (EDISCONNECTED, EPROTO, ...: the channel is gone).
 */
export interface NativeSock {
  connect(path: string, timeoutMs: number, cb: (code: string | null, message: string | null) => void): void;
  start(onFrames: (buf: Buffer, fds: number[] | null) => void, onClose: (code: string, message: string | null) => void): void;
  /** Write chunks (in order) now; what the kernel does not take is copied and queued. @returns backlog bytes */
  writev(chunks: Uint8Array[], quiet?: boolean): number;
  /** One frame with 1..8 fds (the caller keeps its fds). @returns backlog bytes */
  sendWithFds(frame: Uint8Array, fds: number[]): number;
  /** Bytes queued; with `wantDrain`, onClose('drain') runs once the queue is empty. */
  backlog(wantDrain?: boolean): number;
  setReading(on: boolean): void;
  close(): void;
  fd(): number;
  /** Queue mode: ring 0 carries writev's frames, ring 1's frames come through onFrames. Errors: EPROTO. */
  /**
   * `budgetFd`: the host's spinner budget page (docs/queues.md "Spinner budget"), or -1;
   * `pollNs`: our poll spin, written in the pair for the Controller (0: we do not poll).
   */
  attachQueue(memfd: number, ownEfd: number, peerEfd: number, ringBytes: number, budgetFd?: number, pollNs?: number): void;
  /** Sleep on ring 1 for every frame (true, default) or all but quiet replies (false). */
  setWakeAll(all: boolean): void;
  /** Spin up to `spinNs` (bounded, spinner budget) for ring 1 frames; a batch of whole frames, or null. */
  poll(spinNs: number): Buffer | null;
  stats(): { queue: boolean; ringBytes: number; maxEntry: number; wakes: number; polls: number; pollHits: number; queuedBytes: number; hooked: number };
  /**
   * Offer every later whole frame (but those with fds) to a native loop's frame hook
   * (native/include/frame_hook.h, a napi External) before JS; `owner` is kept alive while
   * attached; null detaches. Errors: EINVAL (not a hook of this ABI, channel not open), EBUSY.
   */
  setFrameHook(hook: object | null, owner?: object): void;
}

interface QueueBinding {
  Sock: new (maxFrameBytes: number) => NativeSock;
  createPair(ringBytes: number): number;
  doorbell(): number;
  socketpair(): [number, number];
  closeFd(fd: number): void;
  sendFds(sock: number, fds: number[], data: Uint8Array): void;
  recvFds(sock: number, want: number, cap: number): { fds: number[]; data: Buffer } | null;
  mapRaw(fd: number): ArrayBuffer;
  mapBudgetRaw(fd: number): ArrayBuffer;
  Channel: new (
    fd: number, side: number, ownEfd: number, peerEfd: number, ringBytes: number, maxEntry: number, spinNs: number, yields: number,
  ) => NativeChannel;
  layout: QueueLayout;
}

/** Counters of one side (bytes are ring positions, growing for ever). */
export interface QueueStats {
  ringBytes: number;
  maxEntry: number;
  /** End of what this side wrote to its outgoing ring. */
  txTail: number;
  /** What the peer acknowledged of it (its head: the acknowledgement, no ack frame). */
  txAcked: number;
  /** What this side consumed of its incoming ring. */
  rxHead: number;
  /** 0, or -errno of a sticky error (-71: EPROTO). */
  error: number;
}

/** Load the addon (native/loader.ts order). Throws NativeUnavailableError('queue') (ENODEV). */
export function loadQueue(): QueueBinding {
  return loadNative<QueueBinding>('queue').binding;
}

/** A new natively owned unix socket (see NativeSock). Throws NativeUnavailableError (ENODEV) without the addon. */
export function newNativeSock(maxFrameBytes: number): NativeSock {
  return new (loadQueue().Sock)(maxFrameBytes);
}

/** Path of a helper executable of the addon build (pingpong, ring_test). */
export function queueToolPath(name: 'pingpong' | 'ring_test'): string {
  return loadNative<QueueBinding>('queue').path.replace(/fractos_queue\.node$/, name);
}

function call<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw nativeError(e, what);
  }
}

/** The pair layout constants. */
export function queueLayout(): QueueLayout {
  return loadQueue().layout;
}

/**
 * Create a pair memfd: 4096 + 2 x ringBytes bytes, sealed against shrinking and growing.
 * @param ringBytes bytes per ring, a power of two in [4096, 64 MiB]. Errors: EINVAL.
 * @returns the fd (close-on-exec; close it with `closeFd` once mapped and passed on)
 */
export function createQueuePair(ringBytes: number): number {
  return call('createQueuePair', () => loadQueue().createPair(ringBytes));
}

/** A non-blocking eventfd to sleep on (a side's doorbell). */
export function createDoorbell(): number {
  return call('createDoorbell', () => loadQueue().doorbell());
}

/** A connected pair of unix stream sockets, close-on-exec (hand one end to a child through spawn's `stdio`). */
export function socketPair(): [number, number] {
  return call('socketPair', () => loadQueue().socketpair());
}

export function closeFd(fd: number): void {
  call('closeFd', () => loadQueue().closeFd(fd));
}

/** Send 1..8 fds and at least one byte in one message (SCM_RIGHTS). */
export function sendFds(sock: number, fds: number[], data: Uint8Array = new Uint8Array([0])): void {
  call('sendFds', () => loadQueue().sendFds(sock, fds, data));
}

/**
 * Receive one message carrying exactly `want` fds (close-on-exec) and up to `cap` bytes.
 * Any other count, an oversized or foreign control message: EPROTO, after closing all that
 * arrived. @returns null when the peer closed the socket. Blocks (the socket's mode).
 */
export function recvFds(sock: number, want: number, cap = 256): { fds: number[]; data: Buffer } | null {
  return call('recvFds', () => loadQueue().recvFds(sock, want, cap));
}

/** Map a verified pair whole, as a peer sees it (tools, tests of hostile writes). Errors: EPROTO. */
export function mapQueuePairRaw(fd: number): ArrayBuffer {
  return call('mapQueuePairRaw', () => loadQueue().mapRaw(fd));
}

/**
 * The host's spinner budget page (docs/queues.md "Spinner budget") mapped read-write, after
 * the same checks as a Process makes (a memfd sealed against shrinking and growing, 4096
 * bytes): tests write what a hostile Process would. Errors: EPROTO, EBADF.
 */
export function mapSpinBudgetRaw(fd: number): ArrayBuffer {
  return call('mapSpinBudgetRaw', () => loadQueue().mapBudgetRaw(fd));
}

export interface QueueAttachOptions {
  /** Which side this is (default PROCESS). */
  side?: QueueSide;
  /** The eventfd this side sleeps on; -1 (default): a futex (then `watch` is not available). */
  ownDoorbell?: number;
  /** The peer's eventfd, rung when it announced sleep; -1 (default): its futex. */
  peerDoorbell?: number;
  /** Expected bytes per ring (0, default: derived from the verified file size). */
  ringBytes?: number;
  /** Largest entry accepted and sent, bytes (0, default: a quarter of the ring minus 8). */
  maxEntry?: number;
  /** Spin before sleeping in `wait`/`pushWait`, ns (default 2000). */
  spinNs?: number;
  /** sched_yield calls after spinning, before sleeping (default 4). */
  yields?: number;
}

/** One side of a queue pair. */
export class QueueChannel {
  readonly #ch: NativeChannel;
  readonly maxEntry: number;

  /**
   * Attach to a pair memfd (the fd may be closed afterwards; the doorbells are duplicated).
   * The file is verified first (seals F_SEAL_SHRINK|F_SEAL_GROW, exact size): else EPROTO.
   */
  constructor(fd: number, o: QueueAttachOptions = {}) {
    const q = loadQueue();
    this.#ch = call('QueueChannel', () => new q.Channel(
      fd, o.side ?? QueueSide.PROCESS, o.ownDoorbell ?? -1, o.peerDoorbell ?? -1, o.ringBytes ?? 0, o.maxEntry ?? 0,
      o.spinNs ?? 2000, o.yields ?? 4,
    ));
    this.maxEntry = this.#ch.stats().maxEntry;
  }

  /**
   * Append one entry and, unless `publish` is false, make it (and earlier ones) visible and
   * wake the peer if it sleeps. @returns false when the ring is full (nothing written: retry
   * after the peer acknowledges, see `watch`/`armSpace`). Errors: ERANGE, EPROTO.
   */
  push(data: Uint8Array, publish = true): boolean {
    return call('push', () => this.#ch.push(data, publish));
  }

  /** Make pushed entries visible; wakes the peer only if it announced sleep. */
  publish(): void {
    call('publish', () => this.#ch.publish());
  }

  /** Push, waiting synchronously (spin, yield, sleep) for space up to `timeoutMs`. Errors: ETIMEDOUT, ERANGE, EPROTO. */
  pushWait(data: Uint8Array, timeoutMs: number): void {
    call('pushWait', () => this.#ch.pushWait(data, timeoutMs));
  }

  /**
   * Copy waiting entries into `out` as `[u32 LE length][bytes]...` and acknowledge them.
   * Takes entries while 4 + maxEntry bytes are left, so `out` needs at least that.
   * @returns bytes used (0: none). Errors: EPROTO (sticky; drop the channel).
   */
  drain(out: Uint8Array): number {
    return call('drain', () => this.#ch.drain(out));
  }

  /** Block synchronously (spin, yield, sleep) up to `timeoutMs` until entries are there. */
  wait(timeoutMs: number): boolean {
    return call('wait', () => this.#ch.wait(timeoutMs));
  }

  /**
   * Deliver entries from the event loop: whenever the own doorbell (eventfd) rings, the
   * entries are drained into one reused buffer of `batchBytes` bytes and `onBatch(buf, bytes)`
   * runs (bytes may be 0: the peer acknowledged, there is space to push again). A protocol
   * violation stops watching and calls `onError` (EPROTO). Needs `ownDoorbell`.
   */
  watch(onBatch: (buf: Buffer, bytes: number) => void, onError: (err: FractosError) => void, batchBytes = 64 * 1024): void {
    if (batchBytes < 4 + this.maxEntry) throw new FractosError('EINVAL', `batchBytes ${batchBytes} < 4 + maxEntry ${this.maxEntry}`);
    const buf = Buffer.alloc(batchBytes); // held by the addon while watching
    call('watch', () => this.#ch.watch(buf, (bytes, err) => {
      if (bytes > 0 || !err) onBatch(buf, bytes);
      if (err) onError(new FractosError('EPROTO', 'queue: protocol violation by the peer; channel dropped'));
    }));
  }

  unwatch(): void {
    this.#ch.unwatch();
  }

  /** Ask to be woken when the peer frees space; true when an entry of maxEntry bytes fits already. */
  armSpace(): boolean {
    return call('armSpace', () => this.#ch.armSpace());
  }

  stats(): QueueStats {
    return this.#ch.stats();
  }

  /** Stop watching, unmap, close the duplicated doorbells. Later calls: EDISCONNECTED. */
  close(): void {
    this.#ch.close();
  }
}

/**
 * Iterate the entries of a `drain`/`watch` batch: Buffer views into `buf` (no copy), valid
 * until the next batch overwrites it. Hot paths read `buf` directly instead.
 */
export function* queueEntries(buf: Buffer, bytes: number): Generator<Buffer> {
  let off = 0;
  while (off + 4 <= bytes) {
    const n = buf.readUInt32LE(off);
    yield buf.subarray(off + 4, off + 4 + n);
    off += 4 + n;
  }
}

/**
 * `UringBackend`: the `BlockBackend` over io_uring (native/uring, liburing) on an O_DIRECT
 * file or block device.
 *
 * - At most `queueDepth` ops are in the ring; the excess waits in a FIFO (never dropped) and
 *   enters the ring as completions free slots, in arrival order.
 * - Ops prepped during the current tick are submitted together by one `io_uring_submit`
 *   in a microtask (batching: prep many, submit once).
 * - Completions arrive in batches from the addon (eventfd + uv_poll, no blocking) and are
 *   dispatched through a preallocated slot table indexed by tag (tag = slot index).
 * - I/O into a sub-range of a registered buffer uses READ_FIXED / WRITE_FIXED.
 */
import { FractosError, errorCodeFromErrno } from '../libfractos/errors.js';
import { UringRing, allocAligned, loadUring, type IoLoopError, type NativeIoLoop } from '../native/uring/index.js';
import type { BlockBackend, IoCallback } from './backend.js';

/** Options of `UringBackend.open`. */
export interface UringBackendOptions {
  /** Most ops in the ring at once (1..4096); default 32. */
  queueDepth?: number;
  /** Open O_RDONLY (writes then complete with -EBADF); default false (O_RDWR). */
  readOnly?: boolean;
}

const OP_READ = 0;
const OP_WRITE = 1;
const OP_FLUSH = 2;
// Linux errno numbers of the kernel's results that the ring compares against or completes
// with itself; codes come only from errorCodeFromErrno (libfractos/errors.ts).
const EINVAL = 22;
const EBADF = 9;
const EAGAIN = 11;
const EBUSY = 16;
const EINTR = 4;

interface QueuedOp {
  op: number;
  buf: Uint8Array | null;
  offset: number;
  cb: IoCallback;
}

interface Registered {
  buffer: ArrayBufferLike;
  start: number;
  end: number;
}

export class UringBackend implements BlockBackend {
  readonly path: string;
  readonly size: number;
  readonly blockSize: number;
  readonly memAlign: number;
  readonly queueDepth: number;
  readonly readOnly: boolean;

  #ring: UringRing;
  // Slot table, indexed by tag (= slot index, < queueDepth).
  #cbs: (IoCallback | null)[];
  #bufs: (Uint8Array | null)[];
  #free: Int32Array;
  #freeTop: number;
  // Overflow FIFO (only used when more than queueDepth ops are outstanding).
  #fifo: QueuedOp[] = [];
  #fifoHead = 0;
  #unsubmitted = 0;
  #submitScheduled = false;
  #registered: Registered[] = [];
  #closing = false;
  #closed = false;
  #onDrained: (() => void) | null = null;

  private constructor(path: string, ring: UringRing, queueDepth: number, readOnly: boolean) {
    this.path = path;
    this.#ring = ring;
    this.size = ring.native.size;
    this.blockSize = ring.native.logicalBlockSize;
    this.memAlign = ring.native.memAlign;
    this.queueDepth = queueDepth;
    this.readOnly = readOnly;
    this.#cbs = new Array<IoCallback | null>(queueDepth).fill(null);
    this.#bufs = new Array<Uint8Array | null>(queueDepth).fill(null);
    this.#free = new Int32Array(queueDepth);
    for (let i = 0; i < queueDepth; i++) this.#free[i] = queueDepth - 1 - i;
    this.#freeTop = queueDepth;
  }

  /**
   * Opens `path` (a regular file or a block device) with O_DIRECT and an io_uring of
   * `queueDepth` entries. Errors (FractosError): ENODEV (addon not built), EINVAL (bad
   * queueDepth; a file system without O_DIRECT), ENOENT, EACCES, EPERM (EROFS), ...
   */
  static async open(path: string, options: UringBackendOptions = {}): Promise<UringBackend> {
    const queueDepth = options.queueDepth ?? 32;
    const readOnly = options.readOnly ?? false;
    if (!Number.isInteger(queueDepth) || queueDepth < 1 || queueDepth > 4096) {
      throw new FractosError('EINVAL', `queueDepth must be an integer in [1, 4096], got ${queueDepth}`);
    }
    let self: UringBackend | null = null;
    const ring = UringRing.open(path, { entries: queueDepth, readOnly }, (tags, res, n) => self!.#complete(tags, res, n));
    self = new UringBackend(path, ring, queueDepth, readOnly);
    return self;
  }

  /** Ops currently in the ring (prepped or submitted, not yet completed). */
  get inFlight(): number {
    return this.queueDepth - this.#freeTop;
  }

  /** Ops waiting in the overflow FIFO. */
  get queued(): number {
    return this.#fifo.length - this.#fifoHead;
  }

  /** See BlockBackend.read. Completes with -EINVAL for a negative / non-integer offset, -EBADF after close(). */
  read(buf: Uint8Array, offset: number, cb: IoCallback): void {
    this.#enqueue(OP_READ, buf, offset, cb);
  }

  /** See BlockBackend.write. */
  write(buf: Uint8Array, offset: number, cb: IoCallback): void {
    this.#enqueue(OP_WRITE, buf, offset, cb);
  }

  /** See BlockBackend.flush: IORING_OP_FSYNC on the file / device. */
  flush(cb: IoCallback): void {
    this.#enqueue(OP_FLUSH, null, 0, cb);
  }

  /**
   * Registers `bufs` as io_uring fixed buffers (replacing any previous set); later I/O whose
   * buffer lies inside one of them uses READ_FIXED/WRITE_FIXED. The buffers are pinned
   * until the next registration or close. Throws EBUSY while ops are outstanding, and the
   * kernel's error otherwise (ENOMEM: RLIMIT_MEMLOCK, EINVAL: > 1 GiB or too many buffers).
   */
  registerBuffers(bufs: Uint8Array[]): void {
    if (this.#closing) throw new FractosError('ENODEV', 'backend closed');
    if (this.inFlight > 0 || this.queued > 0) throw new FractosError('EBUSY', 'registerBuffers with ops outstanding');
    if (this.#registered.length > 0) {
      this.#ring.unregisterBuffers();
      this.#registered = [];
    }
    if (bufs.length === 0) return;
    const r = this.#ring.registerBuffers(bufs);
    if (r < 0) throw new FractosError(errorCodeFromErrno(r), `io_uring_register_buffers failed (errno ${-r})`);
    this.#registered = bufs.map((b) => ({ buffer: b.buffer, start: b.byteOffset, end: b.byteOffset + b.byteLength }));
  }

  /**
   * See BlockBackend.nativeLoop: an IoLoop (native/uring/src/ioloop.cc) on a duplicate of this
   * ring's device fd, with its own io_uring of `queueDepth` entries (at least 64). Errors:
   * ENODEV (closed, or an addon without the loop), the ring's setup errors.
   */
  nativeLoop(cfg: Uint32Array, onError: IoLoopError): NativeIoLoop {
    if (this.#closing) throw new FractosError('ENODEV', 'backend closed');
    const { IoLoop } = loadUring();
    if (!IoLoop) throw new FractosError('ENODEV', 'the uring addon has no IoLoop (rebuild: node native/build.mjs uring)');
    return new IoLoop(this.#ring.native.fd, Math.max(64, this.queueDepth), cfg, onError);
  }

  /** A zero-filled buffer of `size` bytes aligned to max(4096, blockSize, memAlign). */
  alloc(size: number): Uint8Array {
    return allocAligned(size, Math.max(4096, this.blockSize, this.memAlign));
  }

  /** Waits for queued and in-flight ops, then unregisters buffers, exits the ring and closes the fd. Idempotent. */
  close(): Promise<void> {
    this.#closing = true;
    if (this.#closed) return Promise.resolve();
    if (this.inFlight === 0 && this.queued === 0) {
      this.#finishClose();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const prev = this.#onDrained;
      this.#onDrained = () => {
        prev?.();
        resolve();
      };
    });
  }

  #finishClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#ring.close();
    this.#registered = [];
    const done = this.#onDrained;
    this.#onDrained = null;
    done?.();
  }

  #enqueue(op: number, buf: Uint8Array | null, offset: number, cb: IoCallback): void {
    if (this.#closing) {
      queueMicrotask(() => cb(-EBADF));
      return;
    }
    if (!Number.isSafeInteger(offset) || offset < 0) {
      queueMicrotask(() => cb(-EINVAL));
      return;
    }
    if (this.#freeTop === 0 || this.#fifoHead < this.#fifo.length) {
      this.#fifo.push({ op, buf, offset, cb });
      return;
    }
    this.#issue(op, buf, offset, cb);
  }

  // Preps one op into a free slot (the caller checked there is one) and schedules the submit.
  #issue(op: number, buf: Uint8Array | null, offset: number, cb: IoCallback): void {
    const tag = this.#free[--this.#freeTop];
    this.#cbs[tag] = cb;
    this.#bufs[tag] = buf;
    let r: number;
    if (op === OP_FLUSH) {
      r = this.#ring.prepFsync(tag, false);
    } else {
      const fixed = this.#fixedIndex(buf!);
      if (op === OP_READ) {
        r = fixed < 0 ? this.#ring.prepRead(tag, buf!, offset) : this.#ring.prepReadFixed(tag, buf!, offset, fixed);
      } else {
        r = fixed < 0 ? this.#ring.prepWrite(tag, buf!, offset) : this.#ring.prepWriteFixed(tag, buf!, offset, fixed);
      }
    }
    if (r < 0) {
      // No SQE (cannot happen while inFlight <= queueDepth <= SQ entries) or ring closed.
      this.#release(tag);
      queueMicrotask(() => cb(r));
      return;
    }
    this.#unsubmitted++;
    this.#scheduleSubmit();
  }

  #fixedIndex(buf: Uint8Array): number {
    const reg = this.#registered;
    for (let i = 0; i < reg.length; i++) {
      const g = reg[i];
      if (g.buffer === buf.buffer && buf.byteOffset >= g.start && buf.byteOffset + buf.byteLength <= g.end) return i;
    }
    return -1;
  }

  #scheduleSubmit(): void {
    if (this.#submitScheduled) return;
    this.#submitScheduled = true;
    queueMicrotask(this.#submit);
  }

  #submit = (): void => {
    this.#submitScheduled = false;
    if (this.#closed || this.#unsubmitted === 0) return;
    const r = this.#ring.submit();
    if (r >= 0) {
      this.#unsubmitted = Math.max(0, this.#unsubmitted - r);
      if (this.#unsubmitted > 0) this.#retrySubmit();
      return;
    }
    if (r === -EAGAIN || r === -EBUSY || r === -EINTR) {
      this.#retrySubmit();
      return;
    }
    throw new FractosError(errorCodeFromErrno(r), `io_uring_submit failed (errno ${-r}) on ${this.path}`);
  };

  #retrySubmit(): void {
    if (this.#submitScheduled) return;
    this.#submitScheduled = true;
    setImmediate(this.#submit);
  }

  #release(tag: number): void {
    this.#cbs[tag] = null;
    this.#bufs[tag] = null;
    this.#free[this.#freeTop++] = tag;
  }

  // One batch from the addon: (tags[i], res[i]) for i < n.
  #complete(tags: Uint32Array, res: Int32Array, n: number): void {
    let firstError: unknown = undefined;
    let failed = false;
    for (let i = 0; i < n; i++) {
      const tag = tags[i];
      const cb = this.#cbs[tag];
      this.#release(tag);
      if (cb === null) continue;
      try {
        cb(res[i]);
      } catch (e) {
        if (!failed) {
          failed = true;
          firstError = e;
        }
      }
    }
    this.#pump();
    if (this.#closing && this.inFlight === 0 && this.queued === 0) this.#finishClose();
    if (failed) throw firstError;
  }

  // Moves queued ops into free slots, oldest first.
  #pump(): void {
    const fifo = this.#fifo;
    while (this.#freeTop > 0 && this.#fifoHead < fifo.length) {
      const q = fifo[this.#fifoHead];
      fifo[this.#fifoHead++] = undefined as unknown as QueuedOp;
      this.#issue(q.op, q.buf, q.offset, q.cb);
    }
    if (this.#fifoHead === fifo.length) {
      fifo.length = 0;
      this.#fifoHead = 0;
    } else if (this.#fifoHead > 1024 && this.#fifoHead * 2 > fifo.length) {
      fifo.splice(0, this.#fifoHead);
      this.#fifoHead = 0;
    }
  }
}

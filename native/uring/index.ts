/**
 * Loader and thin typed wrapper of the `fractos_uring` addon (liburing).
 *
 * Loaded by native/loader.ts (`$FRACTOS_NATIVE_DIR/fractos_uring.node`, then the node-gyp
 * build output `native/uring/build/Release/fractos_uring.node`); when neither loads,
 * `loadUring()` throws `NativeUnavailableError` (code ENODEV, `addon` 'uring'), on which
 * tests skip.
 *
 * Verbs mirror liburing: `prepRead`, `prepWrite`, `prepReadFixed`, `prepWriteFixed`,
 * `prepFsync`, `submit`, `registerBuffers`. Results of I/O are bytes (>= 0) or a negative
 * errno, delivered in batches through one callback (see `UringRing.open`).
 */
import { FractosError } from '../../libfractos/errors.js';
import { loadNative, nativeError } from '../loader.js';

/** The raw ring object of the addon. Offsets and lengths are bytes; results are 0/count or -errno. */
export interface NativeRing {
  /** Queues a read of `buf.byteLength` bytes at `offset` into `buf`. 0, or -EBUSY when the SQ is full, -EBADF when closed. */
  prepRead(tag: number, buf: ArrayBufferView, offset: number): number;
  /** Queues a write of `buf` at `offset`. Same results as `prepRead`. */
  prepWrite(tag: number, buf: ArrayBufferView, offset: number): number;
  /** Like `prepRead`, with `buf` inside registered buffer `bufIndex` (IORING_OP_READ_FIXED). */
  prepReadFixed(tag: number, buf: ArrayBufferView, offset: number, bufIndex: number): number;
  /** Like `prepWrite`, with `buf` inside registered buffer `bufIndex` (IORING_OP_WRITE_FIXED). */
  prepWriteFixed(tag: number, buf: ArrayBufferView, offset: number, bufIndex: number): number;
  /** Queues an IORING_OP_FSYNC (fdatasync when `datasync`). */
  prepFsync(tag: number, datasync: boolean): number;
  /** io_uring_submit: number of SQEs submitted, or -errno. */
  submit(): number;
  /** io_uring_register_buffers: 0 or -errno (-EBUSY if already registered). Pins the views. */
  registerBuffers(bufs: ArrayBufferView[]): number;
  /** io_uring_unregister_buffers: 0 or -errno (-ENXIO if none registered). */
  unregisterBuffers(): number;
  /** Waits (blocking) for ops still in flight, dropping their results; unregisters, queue_exit, closes the fds. Idempotent. */
  close(): void;
  readonly fd: number;
  /** Device or file size, bytes (BLKGETSIZE64 or fstat). */
  readonly size: number;
  /** Alignment required of offsets and lengths, bytes (BLKSSZGET, or statx dio_offset_align / st_blksize). */
  readonly logicalBlockSize: number;
  /** Alignment required of buffer addresses, bytes (statx dio_mem_align, else logicalBlockSize). */
  readonly memAlign: number;
  readonly isBlockDevice: boolean;
  readonly sqEntries: number;
  readonly cqEntries: number;
  /** Prepped or submitted ops whose completion has not been reaped yet. */
  readonly inFlight: number;
  readonly closed: boolean;
}

interface NativeRingCtor {
  new (
    path: string,
    readOnly: boolean,
    entries: number,
    tags: Uint32Array,
    res: Int32Array,
    onComplete: (n: number) => void,
  ): NativeRing;
}

/**
 * The blockdev's native I/O loop (src/ioloop.cc, docs/blockdev-backend.md "The native I/O
 * loop"): takes read/write deliveries of volume Requests off a Process's channel through its
 * frame hook (native/include/frame_hook.h), does io_uring straight into the client's
 * registered mapping and invokes the continuation, without JS.
 */
export interface NativeIoLoop {
  /** The frame hook, a napi External (for Process.setFrameHook). */
  hook(): object;
  /** Deliveries for volume `id` address the device bytes [start, start + length). */
  setVolume(id: number, start: number, length: number): void;
  /** Later deliveries for volume `id` go to JS; I/O in flight completes. */
  removeVolume(id: number): void;
  /** The whole mapping of region `key` (the Controller's region key); kept alive while registered or in use. Errors: RangeError (4096 regions). */
  registerRegion(key: number, buffer: ArrayBuffer, writable: boolean): void;
  /** Forget region `key` if `buffer` is the mapping registered for it. */
  unregisterRegion(key: number, buffer: ArrayBuffer): void;
  stats(): IoLoopStats;
  /** Take no more deliveries; `cb` once the I/O in flight completed and the ring is closed. */
  close(cb: () => void): void;
}

/** Counters of a NativeIoLoop. */
export interface IoLoopStats {
  /** Reads / writes served natively (full length). */
  reads: number;
  writes: number;
  /** Native I/O whose result was not the full length (answered by JS's onError). */
  ioErrors: number;
  /** Continuations invoked natively that the Controller refused (EBADCAP, EREVOKED, ...). */
  invokeErrors: number;
  /** io_uring_submit calls (one per drained batch with I/O). */
  submits: number;
  /** Completion polls after a submit (FRACTOS_IOLOOP_SPIN_US set), and those that reaped (docs/queues.md "Spinner budget"). */
  spins: number;
  spinHits: number;
  inFlight: number;
  regions: number;
  volumes: number;
  attached: boolean;
  /** Deliveries of the volume tags passed to JS, by reason. */
  fallbacks: { check: number; noDescriptor: number; unmapped: number; unaligned: number; fua: number; busy: number; shape: number };
}

/** I/O error callback of a NativeIoLoop: offsets and lengths in bytes, `res` the CQE result, the three delivered cids. */
export type IoLoopError = (write: boolean, volume: number, offset: number, length: number, res: number, buf: number, ok: number, fail: number) => void;

/** The addon's exports. */
export interface UringBinding {
  Ring: NativeRingCtor;
  /**
   * new IoLoop(fd, entries, cfg, onError): `fd` the O_DIRECT device (duplicated), `cfg` a
   * Uint32Array of 14: readTag, writeTag, volume/offset/length/flags immediate offsets,
   * buffer/onSuccess/onError cap slots, IoReply's offset, max I/O bytes, block size, buffer
   * alignment, the FUA flag bit.
   */
  IoLoop: new (fd: number, entries: number, cfg: Uint32Array, onError: IoLoopError) => NativeIoLoop;
  /** A zero-filled Buffer of `size` bytes whose address is a multiple of `align` (power of two >= 8), freed by its finalizer. */
  allocAligned(size: number, align: number): Buffer;
}

/** Loads the addon once (native/loader.ts). Throws NativeUnavailableError('uring') (ENODEV) when it cannot be loaded. */
export function loadUring(): UringBinding {
  return loadNative<UringBinding>('uring').binding;
}

/** Options of `UringRing.open`. */
export interface RingOptions {
  /** SQ entries (the kernel rounds up to a power of two); default 32. */
  entries?: number;
  /** Open O_RDONLY instead of O_RDWR (always with O_DIRECT). Default false. */
  readOnly?: boolean;
}

/**
 * Called once per batch of completions: for i in [0, n), `tags[i]` is the u32 tag given
 * at prep time and `res[i]` the CQE result (bytes, or -errno). The arrays are reused by
 * the next batch: copy what you need before returning.
 */
export type CompletionBatch = (tags: Uint32Array, res: Int32Array, n: number) => void;

/** An O_DIRECT file/block device with its io_uring; completions are reaped on the libuv loop (eventfd + uv_poll). */
export class UringRing {
  readonly native: NativeRing;
  /** Batch arrays shared with the addon (length = entries). */
  readonly tags: Uint32Array;
  readonly res: Int32Array;

  private constructor(native: NativeRing, tags: Uint32Array, res: Int32Array) {
    this.native = native;
    this.tags = tags;
    this.res = res;
  }

  /**
   * Opens `path` with O_DIRECT (O_RDWR, or O_RDONLY when `readOnly`) and sets up a ring of
   * `entries` SQEs. Errors: ENODEV (addon unavailable), ENOENT/EPERM/EINVAL/... mapped from
   * the failing system call's errno, EINVAL for a bad `entries` (1..4096).
   */
  static open(path: string, options: RingOptions, onComplete: CompletionBatch): UringRing {
    const entries = options.entries ?? 32;
    if (!Number.isInteger(entries) || entries < 1 || entries > 4096) {
      throw new FractosError('EINVAL', `ring entries must be an integer in [1, 4096], got ${entries}`);
    }
    const { Ring } = loadUring();
    const batch = Math.max(entries, 16);
    const tags = new Uint32Array(batch);
    const res = new Int32Array(batch);
    let native: NativeRing;
    try {
      native = new Ring(path, options.readOnly ?? false, entries, tags, res, (n) => onComplete(tags, res, n));
    } catch (e) {
      throw nativeError(e, path);
    }
    return new UringRing(native, tags, res);
  }

  prepRead(tag: number, buf: ArrayBufferView, offset: number): number {
    return this.native.prepRead(tag, buf, offset);
  }
  prepWrite(tag: number, buf: ArrayBufferView, offset: number): number {
    return this.native.prepWrite(tag, buf, offset);
  }
  prepReadFixed(tag: number, buf: ArrayBufferView, offset: number, bufIndex: number): number {
    return this.native.prepReadFixed(tag, buf, offset, bufIndex);
  }
  prepWriteFixed(tag: number, buf: ArrayBufferView, offset: number, bufIndex: number): number {
    return this.native.prepWriteFixed(tag, buf, offset, bufIndex);
  }
  prepFsync(tag: number, datasync = false): number {
    return this.native.prepFsync(tag, datasync);
  }
  submit(): number {
    return this.native.submit();
  }
  registerBuffers(bufs: ArrayBufferView[]): number {
    return this.native.registerBuffers(bufs);
  }
  unregisterBuffers(): number {
    return this.native.unregisterBuffers();
  }
  close(): void {
    this.native.close();
  }
}

/** Allocates a zero-filled buffer aligned to `align` bytes (default 4096) for O_DIRECT I/O. Errors: ENODEV, EINVAL. */
export function allocAligned(size: number, align = 4096): Buffer {
  if (!Number.isSafeInteger(size) || size <= 0) throw new FractosError('EINVAL', `allocAligned size must be > 0, got ${size}`);
  if (!Number.isInteger(align) || align < 8 || (align & (align - 1)) !== 0) {
    throw new FractosError('EINVAL', `allocAligned align must be a power of two >= 8, got ${align}`);
  }
  try {
    return loadUring().allocAligned(size, align);
  } catch (e) {
    throw nativeError(e, 'allocAligned');
  }
}

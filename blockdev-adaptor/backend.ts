/**
 * The block-device backend interface of the blockdev adaptor: what the volume layer and the
 * Request handlers need from a device. Implemented by `UringBackend` (io_uring over an
 * O_DIRECT file or block device); an SPDK backend (NVMe queue pair in userspace) would
 * implement the same surface, see docs/blockdev-backend.md.
 *
 * Hot-path methods take callbacks, not promises: `res` is the number of bytes transferred
 * (>= 0, may be short at the end of the device) or a negative errno (`-22` = -EINVAL, ...);
 * map it with `errorCodeFromErrno` from libfractos/errors.ts. A layer above the device that
 * completes an op with a FractOS code that is not a Linux errno (EREVOKED, EBADCAP, ...)
 * passes `-errnoFromCode(code)`, in the internal range above 4095: the code survives.
 *
 * Alignment (O_DIRECT, and NVMe DMA alike): `offset` and `buf.byteLength` must be multiples
 * of `blockSize`, and the buffer's address a multiple of `memAlign`; otherwise the device
 * (the kernel) completes the op with -EINVAL. Use `alloc()` for buffers, `isAligned()` to check.
 */
import type { IoLoopError, NativeIoLoop } from '../native/uring/index.js';

/** Completion of one op: bytes transferred, or -errno. */
export type IoCallback = (res: number) => void;

export interface BlockBackend {
  /** Usable size, bytes. */
  readonly size: number;
  /** Logical block size, bytes: offsets and lengths must be multiples of it. */
  readonly blockSize: number;
  /** Required alignment of buffer addresses, bytes (<= blockSize in practice). */
  readonly memAlign: number;
  /** Most ops in the device queue at once; more are queued (FIFO) by the backend, never dropped. */
  readonly queueDepth: number;
  /** True when opened read-only: writes complete with -EBADF (io_uring) / -EPERM. */
  readonly readOnly: boolean;
  /**
   * Reads `buf.byteLength` bytes at `offset` (bytes) into `buf`; `cb(res)` with bytes read
   * (0 or short past the end) or -errno. `buf` must stay untouched until `cb` runs.
   */
  read(buf: Uint8Array, offset: number, cb: IoCallback): void;
  /** Writes `buf` at `offset` (bytes); `cb(res)` with bytes written or -errno. */
  write(buf: Uint8Array, offset: number, cb: IoCallback): void;
  /**
   * Makes every write that has *completed* before this call durable (fsync / NVMe FLUSH);
   * `cb(0)` or `cb(-errno)`. Writes still in flight are not covered: wait for them first.
   */
  flush(cb: IoCallback): void;
  /**
   * Optional: pre-registers buffers (io_uring fixed buffers, SPDK DMA-able memory) so that
   * later I/O into any sub-range of them skips per-op page pinning. Replaces a previous
   * registration. Errors (thrown): EBUSY while ops are in flight, ENOMEM/EINVAL from the kernel.
   */
  registerBuffers?(bufs: Uint8Array[]): void;
  /** A zero-filled buffer of `size` bytes suitable for I/O on this backend (aligned to memAlign and blockSize). */
  alloc(size: number): Uint8Array;
  /**
   * Optional: a native I/O loop over this device (docs/blockdev-backend.md "The native I/O
   * loop"): the C ABI of native/include/frame_hook.h is where it meets the Process's channel,
   * so any backend with a native data path (io_uring today, an SPDK poller) plugs in here.
   * `cfg` and `onError` as in native/uring/index.ts UringBinding.IoLoop. Null when this
   * backend has none. Errors (thrown): ENODEV, the ring's setup errors.
   */
  nativeLoop?(cfg: Uint32Array, onError: IoLoopError): NativeIoLoop | null;
  /** Waits for every queued and in-flight op to complete, then releases the device. Idempotent. */
  close(): Promise<void>;
}

/**
 * True when `buf`'s address (through its ArrayBuffer's base plus `byteOffset`), `offset` and
 * `len` (bytes) are all multiples of `align` (bytes, a power of two). The base address of a
 * JS ArrayBuffer is not visible from JS; buffers from `alloc()`/`allocAligned()` have an
 * aligned base, so only `byteOffset` is checked here.
 */
export function isAligned(buf: Uint8Array, offset: number, len: number, align: number): boolean {
  return buf.byteOffset % align === 0 && offset % align === 0 && len % align === 0;
}

/** Promise form of a backend op, for control paths (volume table, tests); throws nothing, resolves res. */
export function ioPromise(start: (cb: IoCallback) => void): Promise<number> {
  return new Promise((resolve) => start(resolve));
}

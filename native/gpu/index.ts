/**
 * Loader and typed wrapper of the `fractos_gpu` addon (native/gpu/): one C++ interface, two
 * backends, `cpu` (plain C++ kernels over aligned host memory) and `cuda` (Driver API,
 * dlopen'ed at run time; kernels/lbp.cu as PTX). Kernel semantics: facever-app/lbp.ts and
 * docs/facever-kernel.md. The service-level interface is gpu-adaptor/backend.ts.
 *
 * Loaded by native/loader.ts (`$FRACTOS_NATIVE_DIR/fractos_gpu.node`, then the node-gyp
 * output native/gpu/build/Release/fractos_gpu.node). The PTX is read from `lbp.ptx` in the
 * same directory as the addon.
 */
import { dirname, join } from 'node:path';
import { FractosError } from '../../libfractos/errors.js';
import { loadNative, nativeError } from '../loader.js';

/** Kernels exported by the addon (ids are the addon's `KERNELS` table). */
export type NativeKernelName = 'lbp_hist_batch' | 'lbp_chi2_batch';

/** The raw addon object (methods throw / reject plain Errors with a string `code`). */
interface RawBackend {
  readonly kind: string;
  readonly deviceName: string;
  alloc(size: number): number;
  allocExternal(ab: ArrayBuffer, offset: number, size: number): number;
  free(handle: number): void;
  size(handle: number): number;
  write(handle: number, offset: number, data: Uint8Array): Promise<void>;
  read(handle: number, offset: number, length: number): Promise<Uint8Array>;
  launch(kernel: number, buffers: number[], n: number, gridX: number, gridY: number): Promise<void>;
  close(): void;
}

interface RawAddon {
  NativeGpuBackend: new (kind: string, ptxPath: string) => RawBackend;
  KERNELS: Record<NativeKernelName, number>;
  IMAGE_WIDTH: number;
  IMAGE_HEIGHT: number;
  NUM_BINS: number;
}

/**
 * Load the addon once per process (native/loader.ts).
 * @returns the raw addon and the directory it was loaded from (where lbp.ptx lies).
 * @throws NativeUnavailableError (code ENODEV, `addon` 'gpu') when it is not built or fails to load.
 */
export function loadGpuAddon(): { addon: RawAddon; dir: string } {
  const { binding, path } = loadNative<RawAddon>('gpu');
  return { addon: binding, dir: dirname(path) };
}

function wrapSync<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw nativeError(e);
  }
}

async function wrapAsync<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw nativeError(e);
  }
}

/** One (handle, byte offset) argument of a launch. */
export interface NativeBufferArg {
  handle: number;
  offset: number;
}

/**
 * Typed view of one open backend: every error is a FractosError; copies and launches run
 * on libuv worker threads and return promises (the event loop never blocks on a batch).
 * Handles are small positive integers private to this backend object.
 */
export class NativeGpu {
  readonly #raw: RawBackend;
  readonly #kernels: Record<NativeKernelName, number>;

  /** Use `openNativeGpu`. */
  constructor(raw: RawBackend, kernels: Record<NativeKernelName, number>) {
    this.#raw = raw;
    this.#kernels = kernels;
  }

  /** 'cpu' or 'cuda'. */
  get kind(): 'cpu' | 'cuda' {
    return this.#raw.kind as 'cpu' | 'cuda';
  }

  /** Device name from the driver (cuda) or 'host CPU (N threads)'. */
  get deviceName(): string {
    return this.#raw.deviceName;
  }

  /** Allocate `size` bytes (1..2^40) of device memory, zero-filled on cpu, uninitialised on cuda. @throws EINVAL, ENOSPC */
  alloc(size: number): number {
    return wrapSync(() => this.#raw.alloc(size));
  }

  /**
   * Use `size` bytes at `offset` of `ab` (host memory, e.g. a POSIX shm region mapped by
   * native/shm) as a buffer: cpu backend only, where "device memory" is host memory, so
   * copies and launches work on those bytes in place. The addon keeps a reference to `ab`
   * until `free`/`close` (which never release the memory itself); the bytes must start
   * 64-byte aligned. @throws ENOTSUP (cuda), EINVAL (not an ArrayBuffer, size 0, misaligned,
   * detached), ERANGE (outside `ab`)
   */
  allocExternal(ab: ArrayBuffer, offset: number, size: number): number {
    return wrapSync(() => this.#raw.allocExternal(ab, offset, size));
  }

  /** Free a buffer (an external one: drop the reference only). @throws ENOENT (unknown handle), EBUSY (a copy or launch using it is in flight) */
  free(handle: number): void {
    wrapSync(() => this.#raw.free(handle));
  }

  /** Size in bytes of a buffer. @throws ENOENT */
  size(handle: number): number {
    return wrapSync(() => this.#raw.size(handle));
  }

  /**
   * Copy `data` into the buffer at byte `offset`. `data` must not change until the promise
   * settles (it is read in place by the worker thread).
   * @throws ENOENT, ERANGE (synchronously checked, reported through the promise)
   */
  write(handle: number, offset: number, data: Uint8Array): Promise<void> {
    return wrapAsync(() => this.#raw.write(handle, offset, data));
  }

  /** Copy `length` bytes at `offset` out of the buffer into a new Uint8Array. @throws ENOENT, ERANGE */
  read(handle: number, offset: number, length: number): Promise<Uint8Array> {
    return wrapAsync(() => this.#raw.read(handle, offset, length));
  }

  /**
   * Run a kernel on `n` items (see gpu-adaptor/backend.ts for the buffer lists).
   * @throws ENOENT (unknown kernel or handle), ERANGE (a buffer shorter than n items need),
   *   EINVAL (buffer count, grid out of 1..90 x 1..110, misaligned offset); device errors
   *   (EFAULT, ENOSPC, EIO, ...) from the CUresult table of src/gpu_error.cc.
   */
  launch(kernel: NativeKernelName, buffers: readonly NativeBufferArg[], n: number, gridX: number, gridY: number): Promise<void> {
    return wrapAsync(async () => {
      const id = this.#kernels[kernel];
      if (id === undefined || !Object.hasOwn(this.#kernels, kernel)) throw new FractosError('ENOENT', `unknown kernel '${kernel}'`);
      return this.#raw.launch(id, buffers.flatMap((b) => [b.handle, b.offset]), n, gridX, gridY);
    });
  }

  /** Free every buffer and release the device. Idempotent. @throws EBUSY while operations are in flight */
  close(): void {
    wrapSync(() => this.#raw.close());
  }
}

/**
 * Open one backend of the addon.
 * @throws NativeUnavailableError (ENODEV) when the addon is not built; FractosError ENODEV
 *   when the backend has no device (cuda: no libcuda.so.1, no GPU, no PTX), EINVAL for an
 *   unknown kind; other CUresult codes on driver failures.
 */
export function openNativeGpu(kind: 'cpu' | 'cuda'): NativeGpu {
  const { addon, dir } = loadGpuAddon();
  const raw = wrapSync(() => new addon.NativeGpuBackend(kind, join(dir, 'lbp.ptx')));
  return new NativeGpu(raw, addon.KERNELS);
}

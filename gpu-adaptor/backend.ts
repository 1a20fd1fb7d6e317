/**
 * The compute backend behind the GPU adaptor service (DESIGN.md §5, gpu-adaptor): device
 * memory, copies and kernel launches, on a CUDA device (`cuda`) or on the host (`cpu`, the
 * same kernels in C++), both through the `fractos_gpu` addon (native/gpu/).
 *
 * Kernels (semantics in facever-app/lbp.ts, docs/facever-kernel.md; after Ahonen, Hadid,
 * Pietikäinen, "Face Description with Local Binary Patterns: Application to Face
 * Recognition", IEEE TPAMI 28(12), 2006). Images are 92x112 u8 row-major, `IMAGE_BYTES` =
 * 10304 each, contiguous; a histogram is `histogramLength(gx, gy)` = gx*gy*59 u32
 * (little-endian on every supported host), `histogramBytes` = 4x that:
 * - `lbp_hist_batch`, buffers `[images, hists]`: hists[i] = LBP histogram of images[i],
 *   i < n. images needs n*10304 bytes, hists n*histogramBytes (offset 4-aligned).
 * - `lbp_chi2_batch`, buffers `[probes, enrolled, scores]` or
 *   `[probes, enrolled, scores, probeHists, enrolledHists]`: scores[i] = chi-square distance
 *   (f64, smaller = more similar) between the histograms of probes[i] and enrolled[i];
 *   with 5 buffers both histograms are also written out. scores needs n*8 bytes (offset
 *   8-aligned). cpu and cuda give bit-identical histograms and scores.
 * Scalars: `n` (0..2^32-1 items; 0 is a no-op), `gridX` in 1..90, `gridY` in 1..110.
 * Output buffers must not overlap the inputs.
 */
import { FractosError } from '../libfractos/errors.js';
import { openNativeGpu, type NativeGpu } from '../native/gpu/index.js';

export type BackendKind = 'cuda' | 'cpu';
export type KernelName = 'lbp_chi2_batch' | 'lbp_hist_batch';
/** Opaque handle of a device buffer, valid on the backend that allocated it. */
export type BufferHandle = number;

export const IMAGE_WIDTH = 92;
export const IMAGE_HEIGHT = 112;
/** Bytes per image: 92 * 112 = 10304. */
export const IMAGE_BYTES = IMAGE_WIDTH * IMAGE_HEIGHT;
/** Histogram bins per cell: 58 uniform LBP codes + 1 non-uniform. */
export const BINS_PER_CELL = 59;

/** u32 counts per histogram: gridX * gridY * 59. */
export function histogramLength(gridX: number, gridY: number): number {
  return gridX * gridY * BINS_PER_CELL;
}
/** Bytes per histogram: 4 * histogramLength. */
export function histogramBytes(gridX: number, gridY: number): number {
  return 4 * histogramLength(gridX, gridY);
}

/** A loaded kernel: its name and the roles of its buffers, in order (optional ones marked `?`). */
export interface Kernel {
  readonly name: KernelName;
  readonly buffers: readonly string[];
}

/** A kernel buffer argument: a handle and a byte offset into it (default 0). */
export interface BufferArg {
  handle: BufferHandle;
  offset?: number;
}

/** Arguments of one launch. */
export interface LaunchArgs {
  buffers: readonly BufferArg[];
  scalars: { n: number; gridX: number; gridY: number };
}

/**
 * A compute backend. Every error is a `FractosError`. Copies and launches run off the JS
 * thread and settle a promise; the range checks run first, so a bad range rejects at once
 * without touching the device.
 */
export interface GpuBackend {
  readonly kind: BackendKind;
  /** Driver device name (cuda) or 'host CPU (N threads)'. */
  readonly deviceName: string;
  /** Allocate `size` bytes (1..2^40). @throws EINVAL, ENOSPC */
  alloc(size: number): BufferHandle;
  /**
   * Whether `allocExternal` works: the kernels run on host memory (cpu), so caller-owned
   * host memory (a shared region the Controller maps) can be device memory with no copies.
   */
  readonly hostAddressable: boolean;
  /**
   * Use `size` bytes at `offset` of `ab` as a buffer (kept referenced until `free`; the
   * memory itself is the caller's). @throws ENOTSUP (not hostAddressable), EINVAL (size,
   * 64-byte alignment, detached), ERANGE (outside `ab`)
   */
  allocExternal(ab: ArrayBuffer, offset: number, size: number): BufferHandle;
  /** Free a buffer. @throws ENOENT (unknown), EBUSY (in use by a copy or launch in flight) */
  free(handle: BufferHandle): void;
  /** Copy `data` to `[offset, offset+data.length)`; `data` must not change until settled. Rejects ENOENT, ERANGE. */
  write(handle: BufferHandle, offset: number, data: Uint8Array): Promise<void>;
  /** Copy `[offset, offset+length)` out into a new array. Rejects ENOENT, ERANGE. */
  read(handle: BufferHandle, offset: number, length: number): Promise<Uint8Array>;
  /** Look up a kernel by name. @throws ENOENT for an unknown name */
  loadKernel(name: string): Kernel;
  /**
   * Launch `kernel` (buffer lists and sizes in the module docstring); resolves when the
   * results are in the output buffers. Rejects EINVAL (bad scalars, buffer count,
   * alignment), ENOENT (kernel not from loadKernel, unknown handle), ERANGE (a buffer too
   * short for n), device codes (EFAULT, ENOSPC, EIO).
   */
  launch(kernel: Kernel, args: LaunchArgs): Promise<void>;
  /** Free all buffers and release the device; idempotent. @throws EBUSY while work is in flight */
  close(): void;
}

const KERNELS: Readonly<Record<KernelName, Kernel>> = Object.freeze({
  lbp_hist_batch: Object.freeze({ name: 'lbp_hist_batch', buffers: Object.freeze(['images', 'hists']) }),
  lbp_chi2_batch: Object.freeze({
    name: 'lbp_chi2_batch',
    buffers: Object.freeze(['probes', 'enrolled', 'scores', 'probeHists?', 'enrolledHists?']),
  }),
});

function checkInt(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new FractosError('EINVAL', `${what} must be an integer in ${min}..${max}, got ${String(v)}`);
  }
  return v;
}

class NativeBackend implements GpuBackend {
  readonly #gpu: NativeGpu;
  constructor(gpu: NativeGpu) {
    this.#gpu = gpu;
  }
  get kind(): BackendKind {
    return this.#gpu.kind;
  }
  get deviceName(): string {
    return this.#gpu.deviceName;
  }
  alloc(size: number): BufferHandle {
    return this.#gpu.alloc(checkInt(size, 'size', 1, 2 ** 40));
  }
  get hostAddressable(): boolean {
    return this.#gpu.kind === 'cpu';
  }
  allocExternal(ab: ArrayBuffer, offset: number, size: number): BufferHandle {
    if (!(ab instanceof ArrayBuffer)) throw new FractosError('EINVAL', 'ab must be an ArrayBuffer');
    checkInt(offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
    checkInt(size, 'size', 1, 2 ** 40);
    return this.#gpu.allocExternal(ab, offset, size);
  }
  free(handle: BufferHandle): void {
    this.#gpu.free(checkInt(handle, 'handle', 0, 2 ** 32 - 1));
  }
  async write(handle: BufferHandle, offset: number, data: Uint8Array): Promise<void> {
    checkInt(handle, 'handle', 0, 2 ** 32 - 1);
    checkInt(offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
    if (!(data instanceof Uint8Array)) throw new FractosError('EINVAL', 'data must be a Uint8Array');
    return this.#gpu.write(handle, offset, data);
  }
  async read(handle: BufferHandle, offset: number, length: number): Promise<Uint8Array> {
    checkInt(handle, 'handle', 0, 2 ** 32 - 1);
    checkInt(offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
    checkInt(length, 'length', 0, 2 ** 31 - 1);
    return this.#gpu.read(handle, offset, length);
  }
  loadKernel(name: string): Kernel {
    if (!Object.hasOwn(KERNELS, name)) throw new FractosError('ENOENT', `unknown kernel '${name}'`);
    return KERNELS[name as KernelName];
  }
  async launch(kernel: Kernel, args: LaunchArgs): Promise<void> {
    if (!kernel || KERNELS[kernel.name] !== kernel) throw new FractosError('ENOENT', 'kernel not obtained from loadKernel');
    const { n, gridX, gridY } = args.scalars;
    checkInt(n, 'n', 0, 2 ** 32 - 1);
    checkInt(gridX, 'gridX', 1, IMAGE_WIDTH - 2);
    checkInt(gridY, 'gridY', 1, IMAGE_HEIGHT - 2);
    const bufs = args.buffers.map((b, i) => ({
      handle: checkInt(b.handle, `buffers[${i}].handle`, 0, 2 ** 32 - 1),
      offset: checkInt(b.offset ?? 0, `buffers[${i}].offset`, 0, Number.MAX_SAFE_INTEGER),
    }));
    return this.#gpu.launch(kernel.name, bufs, n, gridX, gridY);
  }
  close(): void {
    this.#gpu.close();
  }
}

/**
 * Open a backend. `auto` = `cuda` when a device answers, else `cpu`.
 * @throws NativeUnavailableError (ENODEV) when the addon is not built; FractosError ENODEV
 *   for `cuda` without a driver, device or PTX; EINVAL for an unknown kind.
 */
export function openBackend(kind: BackendKind | 'auto'): GpuBackend {
  if (kind === 'auto') {
    try {
      return new NativeBackend(openNativeGpu('cuda'));
    } catch (e) {
      if (e instanceof FractosError && e.code === 'ENODEV' && e.name !== 'NativeUnavailableError') return openBackend('cpu');
      throw e;
    }
  }
  if (kind !== 'cpu' && kind !== 'cuda') throw new FractosError('EINVAL', `unknown backend kind '${String(kind)}'`);
  return new NativeBackend(openNativeGpu(kind));
}

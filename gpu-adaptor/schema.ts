/**
 * Request schemas of the GPU adaptor (DESIGN.md §5, paper §5). Schema-only.
 *
 * Bootstrap: the adaptor publishes `gpu.init` (prefix `--name`, default `gpu`).
 * init -> {alloc, load, cleanup} for a new context; per-client resources are freed on
 * cleanup or when the client's caps are gone (monitor_delegate).
 */
import { defineReply, defineRequest } from '../libfractos/schema.js';

export const Init = defineRequest('gpu.init', {}, ['onSuccess', 'onError'] as const);
/** backend: 0 = cpu, 1 = cuda. */
export const InitReply = defineReply('gpu.inited', { context: 'u32', backend: 'u8', device: { str: 64 } }, ['alloc', 'load', 'cleanup'] as const);
/**
 * alloc(size bytes) (context preset) -> a Memory cap on device memory: served (cuda) or
 * shared (cpu backend: a host shm region the Controller maps). Errors: EINVAL, ENOSPC.
 */
export const Alloc = defineRequest('gpu.alloc', { context: 'u32', size: 'u64' }, ['onSuccess', 'onError'] as const);
export const AllocReply = defineReply('gpu.allocated', { size: 'u64' }, ['memory'] as const);
/** load(kernel name) (context preset) -> an invoke Request for that kernel. Errors: ENOENT. */
export const Load = defineRequest('gpu.load', { context: 'u32', kernel: { str: 64 } }, ['onSuccess', 'onError'] as const);
export const LoadReply = defineReply('gpu.loaded', {}, ['invoke'] as const);
/**
 * Kernel invocation (context and kernel preset by load). Buffers are Memory caps that must
 * be this adaptor's device memory (alloc). Scalars: n pairs, grid cells gridX x gridY.
 * `expect` > 1 makes a barrier: the kernel runs when `expect` invocations carrying the
 * same `batch` have arrived (e.g. one per DAX read completion), with the arguments of the
 * first one that carries arguments (not `arrive`). If `out` is set, the `scores` buffer (n x f64) is copied into it before
 * onSuccess is invoked (the chain design's "copy scores to the app").
 * `stride` (added): bytes between consecutive enrolled images in `enrolled` (0 = 10304,
 * packed); a larger stride lets block-aligned DAX reads land in per-image slots (the
 * adaptor packs them on the device before the launch).
 * `slots` and `gather` (added): when `slots` > 0, `enrolled` holds `slots` distinct images
 * (at `stride`) and pair i uses image `gather[i]` (u8; n <= 256): a batch reads each
 * enrolled photo once however many pairs name it, and the adaptor gathers on the device.
 * `arrive` (added): 1 = a bare barrier arrival for `batch`: it only counts towards the
 * `expect` of the invocation of that batch that carries the arguments (whichever comes
 * first), so continuations that just signal "my part is done" (the chain's DAX reads) need
 * no caps: a Request derived once with {batch, arrive: 1} and nothing else.
 * Errors (onError): EINVAL (n, grid, stride, gather), ERANGE (buffers too small), ETYPE/EPERM (not
 * device memory), ETIMEDOUT (barrier incomplete after the adaptor's barrier timeout).
 */
/** Most pairs of a gathered invoke (`gather` holds one u8 slot index per pair). */
export const GATHER_MAX = 256;
export const Invoke = defineRequest(
  'gpu.invoke',
  { context: 'u32', kernel: 'u32', n: 'u32', gridX: 'u16', gridY: 'u16', batch: 'u32', expect: 'u32', stride: 'u32', slots: 'u16', gather: { bytes: 256 }, arrive: 'u8' },
  ['probes', 'enrolled', 'scores', 'histograms', 'out', 'onSuccess', 'onError'] as const,
);
/** kernelNs: launch time; packNs: stride packing; copyNs: the `out` copy (ns). */
export const InvokeReply = defineReply('gpu.done', { n: 'u32', kernelNs: 'u64', packNs: 'u64', copyNs: 'u64' }, [] as const);
export const Cleanup = defineRequest('gpu.cleanup', { context: 'u32' }, ['onSuccess', 'onError'] as const);
export const DoneReply = defineReply('gpu.ok', {}, [] as const);

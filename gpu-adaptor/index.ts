/** GPU adaptor: the service, its client helper, the Request contract and the compute backends. */
export { GpuService, MAX_PAIRS } from './service.js';
export type { GpuServiceOptions, GpuServiceStats } from './service.js';
export { GpuContext } from './client.js';
export * from './schema.js';
export { openBackend, IMAGE_BYTES, IMAGE_WIDTH, IMAGE_HEIGHT, histogramBytes, histogramLength } from './backend.js';
export type { GpuBackend, BackendKind, KernelName } from './backend.js';

/** The Controller: public surface. */
// TRANSITIONAL: `Controller` is the TypeScript one (legacy-controller.ts) until the native
// core (branch ccore, controller/src/core.cc) is merged; then this line exports the native
// host's class from './controller.js' and legacy-controller.ts goes.
export { Controller } from './legacy-controller.js';
export { Controller as NativeController, DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_SERVED_TIMEOUT_MS, bumpEpoch, lockStateDir } from './controller.js';
export type { ControllerOptions, LinkStats, StateDirLock, TableSizes } from './controller.js';
export { mergeArgs } from './legacy-controller.js';
export { CLUSTER_SECRET_ENV, ensureClusterSecretFile, readClusterSecretFile } from './peer-auth.js';

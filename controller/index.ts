/** The Controller: public surface. */
export { Controller, DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_SERVED_TIMEOUT_MS, bumpEpoch, lockStateDir, mergeArgs } from './controller.js';
export type { ControllerOptions, LinkStats, StateDirLock } from './controller.js';
export { CLUSTER_SECRET_ENV, ensureClusterSecretFile, readClusterSecretFile } from './peer-auth.js';

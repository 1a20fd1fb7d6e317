/** The Controller: public surface (the native Controller and its thin JS host, controller.ts). */
export { Controller, DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_PEER_WAIT_WARN_MS, DEFAULT_SERVED_TIMEOUT_MS, bumpEpoch, lockStateDir } from './controller.js';
export type { ControllerOptions, LinkStats, StateDirLock, TableSizes } from './controller.js';
export { CLUSTER_SECRET_ENV, ensureClusterSecretFile, readClusterSecretFile } from './peer-auth.js';

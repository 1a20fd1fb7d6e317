/** The Controller: public surface. */
import { Controller as NativeController } from './controller.js';
import { Controller as LegacyController } from './legacy-controller.js';

// TRANSITIONAL, until the native core (branch ccore, controller/src/core.cc) passes the
// suite: `Controller` is the TypeScript one (legacy-controller.ts) unless
// FRACTOS_CONTROLLER=native selects the native one (controller.ts, same public API). Then
// this becomes `export { Controller } from './controller.js'` and legacy-controller.ts goes.
export const Controller: typeof LegacyController =
  process.env['FRACTOS_CONTROLLER'] === 'native' ? (NativeController as unknown as typeof LegacyController) : LegacyController;
export type Controller = LegacyController;
export { NativeController };
export { DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_SERVED_TIMEOUT_MS, bumpEpoch, lockStateDir } from './controller.js';
export type { ControllerOptions, LinkStats, StateDirLock, TableSizes } from './controller.js';
export { mergeArgs } from './legacy-controller.js';
export { CLUSTER_SECRET_ENV, ensureClusterSecretFile, readClusterSecretFile } from './peer-auth.js';

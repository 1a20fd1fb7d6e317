/** The Controller: public surface. */
export { Controller, bumpEpoch, mergeArgs } from './controller.js';
export type { ControllerOptions, LinkStats } from './controller.js';

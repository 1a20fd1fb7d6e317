/** Resource manager: the service, its client helpers and the Request contract (docs/rm.md). */
export { RmService, DEFAULT_RM_LIMITS } from './service.js';
export type { RmLimits, RmServiceOptions, RmInstance } from './service.js';
export { RmClient, Grant, Registration, keepRegistered } from './client.js';
export type { InstanceSpec, AcquireOptions, KeptRegistration } from './client.js';
export * from './schema.js';

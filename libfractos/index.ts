/** libfractos: the Process library and wire protocol of FractOS-TS. */
export { connect, Process } from './process.js';
export type { ConnectOptions, RequestHandler, ServedBacking, SharedRegion, SharedRegionOptions, MemoryMapping, MemoryStat, MonitorEvent, ControllerStats, ListedName } from './process.js';
export { RegionMaps } from './region-maps.js';
export type { RegionMapsOptions } from './region-maps.js';
export { FractosError, NativeUnavailableError, ERROR_CODES, errorCodeFromErrno, errnoFromCode, errnoFromError } from './errors.js';
export type { ErrorCode } from './errors.js';
export { Perm, DEFAULT_LIMITS } from './protocol.js';
export type { Limits, ObjectRef, RequestArgs, ImmRange, CapArg } from './protocol.js';
export { defineRequest, defineReply, RequestSchema, ErrorReply, tagOf, REPLY_IMM_BASE, REPLY_SLOT_BASE } from './schema.js';
export type { Invocation, FieldType, ImmValues, CapValues, MemoryDescriptor } from './schema.js';
export { parseAddress, formatAddress } from './link.js';
export { decodeIntrospect } from './introspect.js';
export type { Introspection, IntrospectProcess, IntrospectInvocation } from './introspect.js';

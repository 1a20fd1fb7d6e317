/**
 * Request schemas of the resource manager (docs/rm.md). Schema-only.
 *
 * Bootstrap: the RM publishes `${name}.open` (default `rm.open`). `open` makes a session:
 * four Requests with the session id preset (register, acquire, release, close), so that
 * whatever a Process registers or is granted is counted against its session (the
 * Controller does not tell a service who invoked it: a session is the unit of the bounds).
 *
 * - register(kind, name, node, capacity, load, names; r0..r23) -> {id; update, unregister}:
 *   an instance of `kind` (`gpu`, `fs`, `blockdev`, ...) whose Requests are r0..r(k-1),
 *   named by `names` (comma-separated, k <= 8). `update` and `unregister` have the
 *   registration preset: only their holder changes or ends it.
 * - acquire(kind, node, affinity) -> {grant, name, node, load, capacity, names; r0..r23}:
 *   revocation-tree children of a live instance's Requests, chosen by policy.
 * - release(grant): the RM revokes that grant's caps.
 * - close(): end the session (also when every session Request held by the client is gone).
 */
import { defineReply, defineRequest } from '../libfractos/schema.js';

/** Most Requests one registration carries (cap slots r0..r23: the FS registers its 22 roots). */
export const MAX_REQUESTS = 24;
/** Bytes of the fields (UTF-8): kind, instance name, the comma-separated Request names. */
export const KIND_BYTES = 16;
export const NAME_BYTES = 64;
export const NAMES_BYTES = 400;

export const R_SLOTS = [
  'r0', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'r16', 'r17', 'r18', 'r19', 'r20', 'r21', 'r22', 'r23',
] as const;

/** Affinity of an acquire: 0 any node (least loaded), 1 prefer `node`, 2 only `node`. */
export const Affinity = { ANY: 0, PREFER: 1, REQUIRE: 2 } as const;

export const Open = defineRequest('rm.open', {}, ['onSuccess', 'onError'] as const);
export const OpenReply = defineReply('rm.opened', { session: 'u32' }, ['register', 'acquire', 'release', 'close'] as const);

/**
 * Errors (onError): EINVAL (kind, name, names, capacity 0, names and set slots differ),
 * ETYPE (a Memory cap where a Request is needed), EEXIST (the name is registered by a live
 * instance), ENOSPC (the session's or the RM's registrations or metadata bytes are full),
 * EREVOKED (a Request is already dead), EARGSET (preset session overwritten, by the Controller).
 */
export const Register = defineRequest(
  'rm.register',
  { session: 'u32', kind: { str: KIND_BYTES }, name: { str: NAME_BYTES }, node: 'u32', capacity: 'u32', load: 'u32', names: { str: NAMES_BYTES } },
  [...R_SLOTS, 'onSuccess', 'onError'] as const,
);
export const RegisterReply = defineReply('rm.registered', { id: 'u32' }, ['update', 'unregister'] as const);

/** Load update (registration preset). `capacity` 0 keeps the current one. May be invoked one-way. Errors: ENOENT (gone). */
export const Update = defineRequest('rm.update', { reg: 'u32', load: 'u32', capacity: 'u32' }, ['onSuccess', 'onError'] as const);
/** End a registration (preset): every grant of it is revoked. Errors: ENOENT (gone). */
export const Unregister = defineRequest('rm.unregister', { reg: 'u32' }, ['onSuccess', 'onError'] as const);

/**
 * Errors (onError): EINVAL (kind, affinity), ENOENT (no live instance of `kind`, on `node`
 * for REQUIRE), ENOSPC (the session's or the RM's grants are full).
 */
export const Acquire = defineRequest('rm.acquire', { session: 'u32', kind: { str: KIND_BYTES }, node: 'u32', affinity: 'u8' }, ['onSuccess', 'onError'] as const);
export const AcquireReply = defineReply(
  'rm.granted',
  { grant: 'u32', name: { str: NAME_BYTES }, node: 'u32', load: 'u32', capacity: 'u32', names: { str: NAMES_BYTES } },
  [...R_SLOTS] as const,
);
/** Give a grant back (session preset): its caps are revoked. Errors: ENOENT (not a live grant of this session). */
export const Release = defineRequest('rm.release', { session: 'u32', grant: 'u32' }, ['onSuccess', 'onError'] as const);
/** End the session: its registrations and grants end. */
export const Close = defineRequest('rm.close', { session: 'u32' }, ['onSuccess', 'onError'] as const);
export const OkReply = defineReply('rm.ok', {}, [] as const);

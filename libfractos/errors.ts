/**
 * Typed errors of FractOS-TS. Every failure that crosses a component boundary is a
 * `FractosError` with a string `code`; the wire protocol carries the code as a u16
 * (see `ERROR_CODES` and docs/protocol.md).
 */

/** Error codes, in wire order (index = u16 on the wire). Never reorder; append only. */
export const ERROR_CODES = [
  'OK',
  'EBADCAP', // cid not in the caller's capability space
  'EREVOKED', // object revoked, or its owner's epoch is newer than the cap's
  'EPERM', // the cap lacks the rights the operation needs
  'ERANGE', // offset/size outside the object, or a copy that does not fit
  'EARGSET', // refining an immediate range or cap slot that is already set
  'EPROTO', // malformed or oversized frame, unknown op
  'EDISCONNECTED', // the channel or a peer link closed
  'ETYPE', // wrong object type (a Memory cid where a Request is needed, ...)
  'ENOSPC', // cap space, volume table or device full
  'EAGAIN', // back-pressure: too many outstanding deliveries
  'ENOENT', // name, file or volume not found
  'EEXIST', // name or file already exists
  'EINVAL', // bad argument (alignment, mode, size)
  'EIO', // device I/O error
  'ENODEV', // device or driver not present
  'ETIMEDOUT', // a call or RPC timed out
  'ENOTLOCAL', // memory that cannot be mapped from this host
  'EBUSY', // resource in use
  'ENOTSUP', // unsupported option or operation
  'EFAULT', // a Process failed while serving a memory read/write
  'EISDIR', // directory where a file was expected
  'ENOTDIR',
  'ENOTEMPTY',
  'EADDRINUSE', // a listen address is taken (a live socket answers there)
  'ENAMETOOLONG', // a name (path component) longer than 255 bytes
  'EACCES', // permission bits deny the caller (EPERM: an operation only the owner or root may do)
  'EXDEV', // a link or rename across file systems
  'EMLINK', // too many links
  'ENFILE', // too many open files (the service's bound)
  'ELOOP', // too many symlinks, or a directory moved under itself
  'EBADF', // an fd passed to the Controller is not what the operation needs (a region fd that is not a memfd open read-write); kernel errno 9 stays EIO (a device's bad-fd completion is an I/O failure)
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

const CODE_INDEX: ReadonlyMap<string, number> = new Map(ERROR_CODES.map((c, i) => [c, i]));

/**
 * `message` without leading copies of `CODE: ` (the form of a FractosError's message), so
 * that a message passed on from one error to the next (an error reply, a service's
 * `replyError(code, err.message)`) does not repeat its code.
 */
export function withoutCode(code: string, message: string): string {
  const prefix = `${code}: `;
  while (message.startsWith(prefix)) message = message.slice(prefix.length);
  return message === code ? '' : message;
}

/**
 * An error with a stable string `code` (one of `ERROR_CODES`). Its message is `CODE: message`
 * (or `CODE`), with the code once however many times `message` already starts with it.
 */
export class FractosError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message?: string) {
    const m = message ? withoutCode(code, message) : '';
    super(m ? `${code}: ${m}` : code);
    this.name = 'FractosError';
    this.code = code;
  }
}

/** u16 wire value of a code. Unknown codes map to EPROTO. */
export function errorCodeToWire(code: ErrorCode): number {
  return CODE_INDEX.get(code) ?? CODE_INDEX.get('EPROTO')!;
}

/** Code of a u16 wire value. Out-of-table values map to EPROTO. */
export function errorCodeFromWire(n: number): ErrorCode {
  return ERROR_CODES[n] ?? 'EPROTO';
}

// ---------------------------------------------------------------------------------------
// errno <-> code: the one mapping (native addons, io_uring results, Node fs errors, the
// blockdev's completions). Codes that are Linux errnos (same name, same meaning) map to their
// number; the others (EBADCAP, EREVOKED, ETYPE, ...) map to FRACTOS_ERRNO_BASE + their wire
// index, a range no kernel errno reaches (Linux MAX_ERRNO is 4095). So every code survives a
// round trip through a completion's `-errno`: errorCodeFromErrno(-errnoFromCode(c)) === c.

/** First errno of the internal range of codes that are not Linux errnos (above MAX_ERRNO 4095). */
export const FRACTOS_ERRNO_BASE = 4096;

/** Codes that are Linux errnos of the same meaning, with their numbers (ENOTSUP = EOPNOTSUPP = 95 on Linux). */
const CODE_ERRNO: ReadonlyMap<ErrorCode, number> = new Map<ErrorCode, number>([
  ['EPERM', 1], ['ENOENT', 2], ['EIO', 5], ['EAGAIN', 11], ['EBUSY', 16], ['EEXIST', 17], ['ENODEV', 19], ['ENOTDIR', 20],
  ['EISDIR', 21], ['EINVAL', 22], ['ENOSPC', 28], ['ERANGE', 34], ['ENOTEMPTY', 39], ['ENOTSUP', 95], ['ETIMEDOUT', 110],
  ['ENAMETOOLONG', 36], ['EACCES', 13], ['EXDEV', 18], ['EMLINK', 31], ['ENFILE', 23], ['ELOOP', 40],
]);

/** Other errnos (name, Linux number) and the code of the closest meaning: many errnos, one code, one way only. */
const ERRNO_ALIASES: readonly (readonly [string, number, ErrorCode])[] = [
  ['EOPNOTSUPP', 95, 'ENOTSUP'], ['EWOULDBLOCK', 11, 'EAGAIN'], ['ENOSYS', 38, 'ENOTSUP'],
  ['EROFS', 30, 'EPERM'], ['EFBIG', 27, 'ERANGE'], ['EOVERFLOW', 75, 'ERANGE'], ['ENXIO', 6, 'ENODEV'], ['ENOMEM', 12, 'ENOSPC'],
];

const NUMBER_CODE: ReadonlyMap<number, ErrorCode> = new Map([
  ...[...CODE_ERRNO].map(([code, n]) => [n, code] as const),
  ...ERRNO_ALIASES.map(([, n, code]) => [n, code] as const),
]);
const NAME_CODE: ReadonlyMap<string, ErrorCode> = new Map([
  ...[...CODE_ERRNO.keys()].map((code) => [code as string, code] as const),
  ...ERRNO_ALIASES.map(([name, , code]) => [name, code] as const),
]);

/**
 * The code of an errno: a negative or positive number (io_uring results and addon errors
 * are negative; `FRACTOS_ERRNO_BASE + i` is the internal range of `errnoFromCode`), or a
 * Node errno name (`err.code` of fs errors, e.g. 'ENOENT'). Aliases: EROFS -> EPERM,
 * EFBIG/EOVERFLOW -> ERANGE, ENOSYS/EOPNOTSUPP -> ENOTSUP, ENXIO -> ENODEV, ENOMEM -> ENOSPC;
 * any other errno (and 0) -> EIO.
 */
export function errorCodeFromErrno(errno: number | string): ErrorCode {
  if (typeof errno === 'string') return NAME_CODE.get(errno) ?? 'EIO';
  const n = Math.abs(errno);
  if (n >= FRACTOS_ERRNO_BASE) {
    const code = ERROR_CODES[n - FRACTOS_ERRNO_BASE];
    return code && code !== 'OK' ? code : 'EIO';
  }
  return NUMBER_CODE.get(n) ?? 'EIO';
}

/**
 * The errno (positive) standing for a code: its Linux errno (EIO -> 5, ENOTSUP -> 95, ...)
 * where it has one of the same meaning, else `FRACTOS_ERRNO_BASE` + its wire index
 * (EREVOKED -> 4098). 'OK' -> 0. Inverse of `errorCodeFromErrno` on every code.
 */
export function errnoFromCode(code: ErrorCode): number {
  if (code === 'OK') return 0;
  return CODE_ERRNO.get(code) ?? FRACTOS_ERRNO_BASE + errorCodeToWire(code);
}

/**
 * The errno (positive) of an error, for a `-errno` completion: a FractosError's code
 * (`errnoFromCode`), else a Node errno name in `err.code`, else EIO (5).
 */
export function errnoFromError(err: unknown): number {
  if (err instanceof FractosError) return errnoFromCode(err.code);
  const name = (err as { code?: unknown } | null)?.code;
  return errnoFromCode(typeof name === 'string' ? errorCodeFromErrno(name) : 'EIO');
}

/**
 * Thrown by the native addon loader (native/loader.ts) when an addon is not built or cannot
 * be loaded; code ENODEV. `addon` is its short name ('shm', 'uring', 'gpu'), `tried` the paths
 * looked at, in order. Tests skip on it: `err instanceof NativeUnavailableError && err.addon === 'uring'`.
 */
export class NativeUnavailableError extends FractosError {
  readonly addon: string;
  readonly tried: readonly string[];
  constructor(addon: string, cause?: unknown, tried: readonly string[] = []) {
    const why = cause instanceof Error ? `: ${cause.message}` : '';
    super('ENODEV', `native addon '${addon}' unavailable${why}${tried.length ? ` (tried ${tried.join(', ')})` : ''}`);
    this.name = 'NativeUnavailableError';
    this.addon = addon;
    this.tried = tried;
  }
}

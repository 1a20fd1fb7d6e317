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
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

const CODE_INDEX: ReadonlyMap<string, number> = new Map(ERROR_CODES.map((c, i) => [c, i]));

/** An error with a stable string `code` (one of `ERROR_CODES`). */
export class FractosError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message?: string) {
    super(message ? `${code}: ${message}` : code);
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

/** Map a negative errno (as returned by io_uring, liburing) or a Node errno string to a code. */
export function errorCodeFromErrno(errno: number | string): ErrorCode {
  const name = typeof errno === 'string' ? errno : ERRNO_NAMES[-errno] ?? 'EIO';
  switch (name) {
    case 'ENOENT':
    case 'ENOSPC':
    case 'EEXIST':
    case 'EINVAL':
    case 'EIO':
    case 'ENODEV':
    case 'EPERM':
    case 'EAGAIN':
    case 'EBUSY':
    case 'ETIMEDOUT':
    case 'EISDIR':
    case 'ENOTDIR':
    case 'ENOTEMPTY':
    case 'ERANGE':
      return name;
    case 'EACCES':
    case 'EROFS':
      return 'EPERM';
    case 'EFBIG':
    case 'EOVERFLOW':
      return 'ERANGE';
    case 'EOPNOTSUPP':
    case 'ENOSYS':
      return 'ENOTSUP';
    case 'ENXIO':
      return 'ENODEV';
    default:
      return 'EIO';
  }
}

/** Linux errno numbers to names, for the codes above. */
const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 5: 'EIO', 6: 'ENXIO', 11: 'EAGAIN', 13: 'EACCES', 14: 'EFAULT', 16: 'EBUSY',
  17: 'EEXIST', 19: 'ENODEV', 20: 'ENOTDIR', 21: 'EISDIR', 22: 'EINVAL', 27: 'EFBIG', 28: 'ENOSPC', 30: 'EROFS',
  34: 'ERANGE', 38: 'ENOSYS', 39: 'ENOTEMPTY', 75: 'EOVERFLOW', 95: 'EOPNOTSUPP', 110: 'ETIMEDOUT',
};

/** Thrown by native loaders when an addon is not built or cannot load; tests skip on it. */
export class NativeUnavailableError extends FractosError {
  constructor(addon: string, cause?: unknown) {
    super('ENODEV', `native addon '${addon}' unavailable${cause instanceof Error ? `: ${cause.message}` : ''}`);
    this.name = 'NativeUnavailableError';
  }
}

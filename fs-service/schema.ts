/**
 * Request schemas of the FS service (DESIGN.md §5). Schema-only.
 *
 * Bootstrap: the FS publishes one root Request per operation under `fs.create`,
 * `fs.open`, `fs.stat`, `fs.list`, `fs.delete`, `fs.truncate` (prefix `--name`, default `fs`).
 * Paths are absolute, '/'-separated, at most 255 UTF-8 bytes.
 */
import { defineReply, defineRequest } from '../libfractos/schema.js';

/** Open modes (bitmask). */
export const OpenMode = { READ: 1, WRITE: 2, RW: 3 } as const;

/** Most extents an OpenReply carries (a file with more is EFBIG-like ERANGE on DAX open). */
export const MAX_DAX_EXTENTS = 14;

export const Create = defineRequest('fs.create', { path: { str: 255 } }, ['onSuccess', 'onError'] as const);
/**
 * open(path, mode, dax, create). Mediated (dax = 0): the reply carries `read`/`write`
 * Requests served by the FS (through its LRU block cache). DAX (dax = 1): the reply
 * carries, per extent i, the blockdev's `read`/`write` Requests of that extent's volume
 * (slots x{i}r / x{i}w), derived and on a revocation tree: close/delete revoke them.
 * `write` caps are absent (0) for a read-only open. Errors: ENOENT, EISDIR, EINVAL, ERANGE.
 */
export const Open = defineRequest('fs.open', { path: { str: 255 }, mode: 'u8', dax: 'u8', create: 'u8' }, ['onSuccess', 'onError'] as const);
/**
 * Reply of open. `extents` holds nExtents x (u64 fileOffset, u64 length) little-endian.
 * DAX I/O at file offset F goes to extent i with fileOffset <= F < fileOffset+length, at
 * volume offset F - fileOffset.
 */
export const OpenReply = defineReply(
  'fs.opened',
  { handle: 'u32', size: 'u64', dax: 'u8', blockSize: 'u32', nExtents: 'u16', extents: { bytes: 16 * MAX_DAX_EXTENTS } },
  ['read', 'write', 'close',
    'x0r', 'x0w', 'x1r', 'x1w', 'x2r', 'x2w', 'x3r', 'x3w', 'x4r', 'x4w', 'x5r', 'x5w', 'x6r', 'x6w',
    'x7r', 'x7w', 'x8r', 'x8w', 'x9r', 'x9w', 'x10r', 'x10w', 'x11r', 'x11w', 'x12r', 'x12w', 'x13r', 'x13w'] as const,
);
/** Mediated read/write on an open file (`handle` preset): file offset and length in bytes; any alignment. */
export const Read = defineRequest('fs.read', { handle: 'u32', offset: 'u64', length: 'u32' }, ['buffer', 'onSuccess', 'onError'] as const);
export const Write = defineRequest('fs.write', { handle: 'u32', offset: 'u64', length: 'u32' }, ['buffer', 'onSuccess', 'onError'] as const);
/** Bytes read or written (a read at EOF answers fewer bytes). */
export const IoReply = defineReply('fs.io', { bytes: 'u32' }, [] as const);
/** close (handle preset): revokes the open's Requests (DAX ones included). */
export const Close = defineRequest('fs.close', { handle: 'u32' }, ['onSuccess', 'onError'] as const);
export const Stat = defineRequest('fs.stat', { path: { str: 255 } }, ['onSuccess', 'onError'] as const);
export const StatReply = defineReply('fs.statted', { size: 'u64', extents: 'u32', allocated: 'u64' }, [] as const);
/** list(prefix): names ('\n'-separated, UTF-8) written into `buffer`; ERANGE if it does not fit. */
export const List = defineRequest('fs.list', { path: { str: 255 } }, ['buffer', 'onSuccess', 'onError'] as const);
export const ListReply = defineReply('fs.listed', { bytes: 'u32', count: 'u32' }, [] as const);
export const Delete = defineRequest('fs.delete', { path: { str: 255 } }, ['onSuccess', 'onError'] as const);
export const Truncate = defineRequest('fs.truncate', { path: { str: 255 }, size: 'u64' }, ['onSuccess', 'onError'] as const);
export const DoneReply = defineReply('fs.done', {}, [] as const);

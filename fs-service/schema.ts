/**
 * Request schemas of the FS service (DESIGN.md §5). Schema-only.
 *
 * Bootstrap: the FS publishes one root Request per operation under `fs.create`,
 * `fs.open`, `fs.stat`, `fs.list`, `fs.delete`, `fs.truncate` (prefix `--name`, default `fs`).
 * Paths are absolute, '/'-separated, at most PATH_MAX UTF-8 bytes, each component at most 255
 * (ENAMETOOLONG); they are resolved from the root directory without following symlinks, as uid 0.
 * The inode-based Requests (what a FUSE client uses) are in contract.ts.
 */
import { defineReply, defineRequest, type FieldType } from '../libfractos/schema.js';

/** Longest path of the path-based Requests, UTF-8 bytes (PATH_MAX - 1); each component at most 255 (ENAMETOOLONG). */
export const PATH_MAX = 4095;
const PATH = { str: PATH_MAX } as const;

/**
 * The attributes of an inode (struct stat's fields): ino, generation, mode (type | perm),
 * nlink, uid, gid, size (bytes), blocks (512-byte units allocated), blksize, and the times
 * (seconds since the epoch and nanoseconds). contract.ts's AttrReply and OpenReply carry them.
 */
export const ATTR_FIELDS = {
  ino: 'u64', generation: 'u64', mode: 'u32', nlink: 'u32', uid: 'u32', gid: 'u32', size: 'u64', blocks: 'u64', blksize: 'u32',
  atimeSec: 'u64', atimeNsec: 'u32', mtimeSec: 'u64', mtimeNsec: 'u32', ctimeSec: 'u64', ctimeNsec: 'u32',
} as const satisfies Record<string, FieldType>;

/** Open modes (bitmask). */
export const OpenMode = { READ: 1, WRITE: 2, RW: 3 } as const;

/** Most extents an OpenReply or a DaxMapReply carries (a client pages through more with the open's `map` Request). */
export const MAX_DAX_EXTENTS = 14;

export const Create = defineRequest('fs.create', { path: PATH }, ['onSuccess', 'onError'] as const);
/**
 * open(path, mode, dax, create). Mediated (dax = 0): the reply carries `read`/`write`
 * Requests served by the FS (through its LRU block cache). DAX (dax = 1): the reply
 * carries, per extent i, the blockdev's `read`/`write` Requests of that extent's volume
 * (slots x{i}r / x{i}w), derived and on a revocation tree: close/delete revoke them.
 * `write` caps are absent (0) for a read-only open. Errors: ENOENT, EISDIR, EINVAL, ENFILE.
 */
export const Open = defineRequest('fs.open', { path: PATH, mode: 'u8', dax: 'u8', create: 'u8' }, ['onSuccess', 'onError'] as const);
/**
 * Reply of open (and of contract.ts's openino/createino). `extents` holds nExtents x (u64
 * fileOffset, u64 length) little-endian: the first page (at most MAX_DAX_EXTENTS) of the
 * file's `total` extents; `map` (DAX opens) answers the others (contract.ts DaxMap).
 * DAX I/O at file offset F goes to extent i with fileOffset <= F < fileOffset+length, at
 * volume offset F - fileOffset. The attribute fields are the file's at open.
 */
export const OpenReply = defineReply(
  'fs.opened',
  { handle: 'u32', dax: 'u8', blockSize: 'u32', total: 'u32', nExtents: 'u16', extents: { bytes: 16 * MAX_DAX_EXTENTS }, ...ATTR_FIELDS },
  ['read', 'write', 'close', 'map',
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
export const Stat = defineRequest('fs.stat', { path: PATH }, ['onSuccess', 'onError'] as const);
export const StatReply = defineReply('fs.statted', { size: 'u64', extents: 'u32', allocated: 'u64' }, [] as const);
/** list(prefix): names ('\n'-separated, UTF-8) written into `buffer`; ERANGE if it does not fit. */
export const List = defineRequest('fs.list', { path: PATH }, ['buffer', 'onSuccess', 'onError'] as const);
export const ListReply = defineReply('fs.listed', { bytes: 'u32', count: 'u32' }, [] as const);
export const Delete = defineRequest('fs.delete', { path: PATH }, ['onSuccess', 'onError'] as const);
export const Truncate = defineRequest('fs.truncate', { path: PATH, size: 'u64' }, ['onSuccess', 'onError'] as const);
export const DoneReply = defineReply('fs.done', {}, [] as const);

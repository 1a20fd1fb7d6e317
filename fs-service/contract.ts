/**
 * The inode-based Request contract of the FS service (issue #9): what a FUSE low-level client
 * (fs-mount/) and any other Process use to reach the hierarchical namespace. Schema-only.
 * The path-based Requests of schema.ts (create/open/stat/list/delete/truncate) remain, served
 * on top of the same namespace; the open-file Requests (read/write/close, DAX) are shared.
 *
 * Bootstrap: the FS publishes one root Request per operation under `${name}.${op}` (name
 * default `fs`) for op in NS_OPS (lookup, getattr, ...). Every Request below takes the
 * caller's identity (`uid`, `gid`: what FUSE passes in fuse_ctx) for permission checks; uid 0
 * bypasses read/write checks (and execute on directories) as on Linux. The FS trusts that
 * identity the way NFS AUTH_SYS does: a Process that holds the FS's root Requests is trusted
 * to say who its caller is (the mount asserts the kernel's word).
 *
 * Inodes: `ino` is a u64 (< 2^53) never reused while the FS lives (persisted), so `generation`
 * is constant (1); FUSE_ROOT_ID = 1 is the root directory. There is no lookup count: an ino
 * stays valid until its last link is gone and its last open closed (ENOENT after); `forget`
 * needs no Request.
 *
 * Names: one path component, 1..NAME_MAX (255) UTF-8 bytes, not '.' or '..' where an entry
 * is made, without '/' or NUL: ENAMETOOLONG beyond 255 bytes, EINVAL for '/' or NUL or empty.
 * The name field is wider than NAME_MAX so the FS itself answers ENAMETOOLONG.
 *
 * Times: seconds since the epoch (u64, so not before 1970: EINVAL) and nanoseconds (u32 < 1e9).
 *
 * Errors (by code, on onError): ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, ENAMETOOLONG,
 * EINVAL, ENOSPC (metadata image, a directory's bytes or the device full), EACCES (mode bits
 * say no), EPERM (owner-only operations, chown by non-root), EMLINK (MAX_LINKS), EXDEV (never
 * within one FS; for clients that span several), ENFILE (MAX_OPENS open handles), ENOTSUP.
 */
import { defineReply, defineRequest, type FieldType } from '../libfractos/schema.js';
import { ATTR_FIELDS, MAX_DAX_EXTENTS } from './schema.js';

export { ATTR_FIELDS };

/** Longest name (one component), UTF-8 bytes. */
export const NAME_MAX = 255;
/** Width of a name field: wider than NAME_MAX so the FS answers ENAMETOOLONG (a client cannot send more). */
export const NAME_FIELD = 511;
/** Longest symlink target, bytes (PATH_MAX - 1). */
export const SYMLINK_MAX = 4095;
/** Most hard links of one inode (EMLINK beyond). */
export const MAX_LINKS = 65000;
/** Most open handles of the FS, all clients together (ENFILE beyond). */
export const MAX_OPENS = 65536;
/** Most bytes of one directory's entries (each counts its name's bytes + DIRENT_OVERHEAD; ENOSPC beyond). */
export const MAX_DIR_BYTES = 4 << 20;
/** Per-entry overhead counted against MAX_DIR_BYTES. */
export const DIRENT_OVERHEAD = 32;
/** FUSE_ROOT_ID: the root directory's ino. */
export const ROOT_INO = 1;

/** File type bits of `mode` (S_IFMT) and the types the FS stores. */
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
/** Permission bits the FS keeps (rwx for u/g/o, setuid, setgid, sticky). */
export const MODE_PERM = 0o7777;

/** setattr's `valid` bits: the values of FUSE_SET_ATTR_* (fuse_lowlevel.h), so a FUSE client passes `to_set` as is. */
export const SetAttr = { MODE: 1, UID: 2, GID: 4, SIZE: 8, ATIME: 16, MTIME: 32, ATIME_NOW: 128, MTIME_NOW: 256, CTIME: 1024 } as const;
/** rename's `flags`: Linux's RENAME_NOREPLACE and RENAME_EXCHANGE (RENAME_WHITEOUT and others: EINVAL). */
export const RenameFlags = { NOREPLACE: 1, EXCHANGE: 2 } as const;
/** open/create `flags` beyond the OpenMode: TRUNC (O_TRUNC: size 0, needs write), EXCL (create only: EEXIST when the name exists). */
export const OpenFlags = { TRUNC: 1, EXCL: 2 } as const;
/** readdir entry types (d_type, DT_*). */
export const DirType = { DIR: 4, REG: 8, LNK: 10 } as const;

/** Caller identity carried by every namespace Request. */
const WHO = { uid: 'u32', gid: 'u32' } as const satisfies Record<string, FieldType>;
const NAME = { str: NAME_FIELD } as const;
const DONE_CAPS = ['onSuccess', 'onError'] as const;

/** An inode's attributes as AttrReply carries them (times split in s + ns). */
export interface Attr {
  ino: number;
  generation: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  size: number;
  blocks: number;
  blksize: number;
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
}

/**
 * Reply of lookup/getattr/setattr: the inode's attributes. Also the reply of unlink and rmdir,
 * with the parent directory's attributes after the change (so a client can answer the
 * directory's next getattr without a Request: fs-mount's directory attribute cache).
 */
export const AttrReply = defineReply('fs.attr', ATTR_FIELDS, [] as const);

type AttrKey = keyof typeof ATTR_FIELDS;
/** ATTR_FIELDS under names prefixed with `p` (`p` + the capitalised name: pIno, pMode, ...). */
export type PrefixedAttrFields<P extends string> = { [K in AttrKey as `${P}${Capitalize<K>}`]: (typeof ATTR_FIELDS)[K] };
function prefixedAttrFields<P extends string>(p: P): PrefixedAttrFields<P> {
  return Object.fromEntries(Object.entries(ATTR_FIELDS).map(([k, v]) => [p + k[0]!.toUpperCase() + k.slice(1), v])) as PrefixedAttrFields<P>;
}
/**
 * Reply of mknod/mkdir/symlink/link: the new entry's inode's attributes (ATTR_FIELDS) and the
 * parent directory's after the change (`p`-prefixed: pIno, pMode, ... pCtimeNsec).
 */
export const EntryReply = defineReply('fs.entry', { ...ATTR_FIELDS, ...prefixedAttrFields('p') }, [] as const);
/** Reply of rename: both directories' attributes after the move (`p`: parent, `n`: newParent; the same directory twice for a rename within one). */
export const RenameReply = defineReply('fs.renamed', { ...prefixedAttrFields('p'), ...prefixedAttrFields('n') }, [] as const);

/** lookup(parent, name) -> AttrReply. Needs X on parent. Errors: ENOENT, ENOTDIR, ENAMETOOLONG, EINVAL, EACCES. */
export const Lookup = defineRequest('fs.lookup', { parent: 'u64', name: NAME, ...WHO }, DONE_CAPS);
/** getattr(ino) -> AttrReply. Errors: ENOENT. */
export const GetAttr = defineRequest('fs.getattr', { ino: 'u64', ...WHO }, DONE_CAPS);
/**
 * setattr(ino, valid, ...) -> AttrReply: the fields whose SetAttr bit is in `valid`, in one
 * durable change (ctime set to now unless CTIME gives it). MODE: owner or root (EPERM);
 * setgid dropped when a non-root caller is not in the file's group. UID: root only (EPERM);
 * GID: root, or the owner to its own gid (EPERM). SIZE: regular files only (EISDIR, EINVAL),
 * needs W (EACCES) unless `handle` is a writable open of this ino; grows read as zeros.
 * ATIME/MTIME with an explicit time: owner or root (EPERM); ATIME_NOW/MTIME_NOW (utimens
 * UTIME_NOW): owner, root, or W (EACCES); a time bit without its _NOW bit and without its
 * plain bit is UTIME_OMIT. Changing uid/gid by non-root clears setuid/setgid.
 * Errors: ENOENT, EPERM, EACCES, EISDIR, EINVAL, ENOSPC.
 */
export const SetAttrReq = defineRequest('fs.setattr', {
  ino: 'u64', valid: 'u32', mode: 'u32', newUid: 'u32', newGid: 'u32', size: 'u64',
  atimeSec: 'u64', atimeNsec: 'u32', mtimeSec: 'u64', mtimeNsec: 'u32', ctimeSec: 'u64', ctimeNsec: 'u32', handle: 'u32', ...WHO,
}, DONE_CAPS);
/**
 * mknod(parent, name, mode) -> EntryReply: a regular file (S_IFREG or type 0; other types
 * ENOTSUP), owned by (uid, gid) — gid of the parent when it is setgid —, mode & ~umask.
 * Needs W+X on parent. Errors: EEXIST, ENOENT, ENOTDIR, ENAMETOOLONG, EINVAL, EACCES, ENOSPC, ENOTSUP.
 */
export const Mknod = defineRequest('fs.mknod', { parent: 'u64', name: NAME, mode: 'u32', umask: 'u32', ...WHO }, DONE_CAPS);
/** mkdir(parent, name, mode) -> EntryReply (nlink 2; parent's nlink + 1). As mknod; EMLINK when the parent has MAX_LINKS. */
export const Mkdir = defineRequest('fs.mkdir', { parent: 'u64', name: NAME, mode: 'u32', umask: 'u32', ...WHO }, DONE_CAPS);
/** symlink(parent, name, target) -> EntryReply (mode 0777 | S_IFLNK, size = target bytes). Errors: as mknod; ENAMETOOLONG (target > SYMLINK_MAX), EINVAL (empty target). */
export const Symlink = defineRequest('fs.symlink', { parent: 'u64', name: NAME, target: { str: SYMLINK_MAX }, ...WHO }, DONE_CAPS);
/** readlink(ino) -> LinkReply. Errors: ENOENT, EINVAL (not a symlink). */
export const Readlink = defineRequest('fs.readlink', { ino: 'u64', ...WHO }, DONE_CAPS);
export const LinkReply = defineReply('fs.linktarget', { target: { str: SYMLINK_MAX } }, [] as const);
/** link(ino, newParent, newName) -> EntryReply (newParent as the parent; nlink + 1, ctime). Errors: EEXIST, EPERM (a directory), EMLINK, ENOENT, ENOTDIR, EACCES, ENAMETOOLONG, EINVAL, ENOSPC. */
export const Link = defineRequest('fs.link', { ino: 'u64', newParent: 'u64', newName: NAME, ...WHO }, DONE_CAPS);
/**
 * unlink(parent, name) -> AttrReply of the parent. A file whose last link goes keeps its data while opens
 * of it remain (read/write keep working); the last close frees it. Sticky parent: only the
 * owner of the file or of the directory, or root (EACCES... as Linux: EPERM).
 * Errors: ENOENT, EISDIR, ENOTDIR, EACCES, EPERM, ENAMETOOLONG, EINVAL.
 */
export const Unlink = defineRequest('fs.unlink', { parent: 'u64', name: NAME, ...WHO }, DONE_CAPS);
/** rmdir(parent, name) -> AttrReply of the parent. Errors: ENOTEMPTY, ENOTDIR, ENOENT, EINVAL ('.'), EBUSY (the root), EACCES, EPERM. */
export const Rmdir = defineRequest('fs.rmdir', { parent: 'u64', name: NAME, ...WHO }, DONE_CAPS);
/**
 * rename(parent, name, newParent, newName, flags) -> RenameReply, atomic and durable: an
 * existing target is replaced in the same metadata image (a file by a file, a directory by
 * an empty directory), across directories too. NOREPLACE: EEXIST when the target exists;
 * EXCHANGE: both must exist, swapped. Both flags, or others: EINVAL. Moving a directory
 * under itself: EINVAL. Errors: ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, EINVAL, EACCES,
 * EPERM (sticky), EMLINK, ENAMETOOLONG, ENOSPC.
 */
export const Rename = defineRequest('fs.rename', { parent: 'u64', name: NAME, newParent: 'u64', newName: NAME, flags: 'u32', ...WHO }, DONE_CAPS);
/**
 * open(ino, mode, flags, dax) -> OpenReply. `mode` is an OpenMode (READ, WRITE, RW): needs R
 * and/or W on the file (EACCES); directories and symlinks: EISDIR / EINVAL. flags: OpenFlags.TRUNC.
 * Errors: ENOENT, EISDIR, EINVAL, EACCES, ENFILE.
 */
export const OpenIno = defineRequest('fs.openino', { ino: 'u64', mode: 'u8', flags: 'u32', dax: 'u8', ...WHO }, DONE_CAPS);
/**
 * create(parent, name, fileMode, umask, mode, flags, dax) -> OpenReply: open the file `name`
 * of `parent`, made (as mknod) when missing; with OpenFlags.EXCL an existing name is EEXIST.
 * The reply's attributes are the file's. Errors: those of mknod and open.
 */
export const CreateIno = defineRequest('fs.createino', { parent: 'u64', name: NAME, fileMode: 'u32', umask: 'u32', mode: 'u8', flags: 'u32', dax: 'u8', ...WHO }, DONE_CAPS);
/**
 * fsync(ino, datasync) -> DoneReply once every write answered before it, and the file's
 * attributes, are durable (metadata image with FUA; the flush covers DAX writes to the
 * device completed before it too). Errors: ENOENT.
 */
export const Fsync = defineRequest('fs.fsync', { ino: 'u64', datasync: 'u8', ...WHO }, DONE_CAPS);
/**
 * readdir(ino, cookie, max, plus) -> ReaddirReply: entries after `cookie` (0 = from the start)
 * in a stable order, as many as fit DIRENT_BYTES and `max` (0 = no limit). '.' (cookie 1) and
 * '..' (cookie 2) come first. Each entry's cookie stays its own until it is removed (a rename
 * gives the new entry a new cookie), so entries neither added nor removed during a listing
 * are returned exactly once. `plus` = 1 (readdirplus): each record also carries the entry's
 * attributes (DIRENT_ATTR_BYTES), so a client needs no lookup per entry. Needs R on the
 * directory. Errors: ENOENT, ENOTDIR, EACCES.
 */
export const Readdir = defineRequest('fs.readdir', { ino: 'u64', cookie: 'u64', max: 'u32', ...WHO, plus: 'u8' }, DONE_CAPS);
/**
 * Bytes of the attributes after a readdirplus record's name, little-endian: u32 mode, nlink,
 * uid, gid; u64 size, blocks (512 B); atime, mtime, ctime each u64 s + u32 ns.
 */
export const DIRENT_ATTR_BYTES = 68;
/** Bytes of a ReaddirReply's `entries`. */
export const DIRENT_BYTES = 16384;
/**
 * `entries`: `count` records, little-endian: u64 ino, u64 cookie (pass it back to continue
 * after this entry), u8 type (DirType), u16 name length, the name's bytes, and with `plus`
 * the entry's attributes (DIRENT_ATTR_BYTES). `end` = 1 when the listing is complete.
 */
export const ReaddirReply = defineReply('fs.dirents', { count: 'u32', end: 'u8', bytes: 'u32', entries: { bytes: DIRENT_BYTES } }, [] as const);
/** statfs() -> StatfsReply (counts in `bsize` blocks; `files` = inodes in use, `ffree` what the metadata still holds, estimated). */
export const Statfs = defineRequest('fs.statfs', { ...WHO }, DONE_CAPS);
export const StatfsReply = defineReply('fs.statfs', {
  bsize: 'u32', frsize: 'u32', blocks: 'u64', bfree: 'u64', bavail: 'u64', files: 'u64', ffree: 'u64', namemax: 'u32',
}, [] as const);
/**
 * dax_map(first) on an open (`handle` preset; the OpenReply's `map` cap): the DAX extents
 * from index `first`, at most MAX_DAX_EXTENTS, with their blockdev Requests (on the open's
 * revocation trees) in DaxMapReply's x{i}r/x{i}w slots. An OpenReply carries the first
 * page; a client fetches the rest, and re-fetches after the file grew. Errors: ENOENT (not
 * open), EINVAL (not a DAX open), ERANGE (`first` past the extents).
 */
export const DaxMap = defineRequest('fs.daxmap', { handle: 'u32', first: 'u32' }, DONE_CAPS);
export const DaxMapReply = defineReply(
  'fs.daxmapped',
  { total: 'u32', first: 'u32', nExtents: 'u16', extents: { bytes: 16 * MAX_DAX_EXTENTS } },
  ['x0r', 'x0w', 'x1r', 'x1w', 'x2r', 'x2w', 'x3r', 'x3w', 'x4r', 'x4w', 'x5r', 'x5w', 'x6r', 'x6w',
    'x7r', 'x7w', 'x8r', 'x8w', 'x9r', 'x9w', 'x10r', 'x10w', 'x11r', 'x11w', 'x12r', 'x12w', 'x13r', 'x13w'] as const,
);

/** The root Requests of the inode contract, published as `${name}.${op}`, and their schemas. */
export const NS_OPS = {
  lookup: Lookup, getattr: GetAttr, setattr: SetAttrReq, mknod: Mknod, mkdir: Mkdir, symlink: Symlink, readlink: Readlink,
  link: Link, unlink: Unlink, rmdir: Rmdir, rename: Rename, openino: OpenIno, createino: CreateIno, fsync: Fsync,
  readdir: Readdir, statfs: Statfs,
} as const;
export type NsOp = keyof typeof NS_OPS;

/**
 * Attributes, times and permissions of inodes: the checks every namespace operation makes for
 * its caller (POSIX's rules as Linux applies them, without ACLs or supplementary groups: the
 * caller is one uid and one gid, as FUSE's fuse_ctx carries them), the attributes as
 * AttrReply carries them, and setattr's changes other than the size (namespace.ts truncates).
 *
 * Invariants:
 * - uid 0 passes every read/write check and execute on directories; execute on a file needs
 *   one x bit (Linux's rule). Owner-only operations (chmod, explicit times, chown) answer
 *   EPERM; mode bits that deny answer EACCES.
 * - A change answers with ctime now (unless CTIME sets it), in the same in-memory step as
 *   the change, so one metadata image holds both.
 */
import { FractosError } from '../libfractos/errors.js';
import { MODE_PERM, NAME_MAX, type Attr, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, SetAttr } from './contract.js';
import { allocatedOf, BLOCK, now, type Inode, type Time } from './inode.js';

/** The caller of an operation (FUSE's uid/gid). */
export interface Who {
  uid: number;
  gid: number;
}

/** The FS itself and the path-based API: root. */
export const ROOT_WHO: Who = { uid: 0, gid: 0 };

/** Access bits (as access(2)): read, write, execute/search. */
export const R = 4;
export const W = 2;
export const X = 1;

const S_ISUID = 0o4000;
const S_ISGID = 0o2000;
const S_ISVTX = 0o1000;

export const isDir = (ino: Inode): boolean => (ino.mode & S_IFMT) === S_IFDIR;
export const isReg = (ino: Inode): boolean => (ino.mode & S_IFMT) === S_IFREG;
export const isLnk = (ino: Inode): boolean => (ino.mode & S_IFMT) === S_IFLNK;

/** Errors: EACCES unless `who` may access `ino` for every bit of `want` (R, W, X). */
export function access(ino: Inode, who: Who, want: number): void {
  if (who.uid === 0) {
    if (want & X && !isDir(ino) && !(ino.mode & 0o111)) throw new FractosError('EACCES', `ino ${ino.id} is not executable`);
    return;
  }
  const bits = who.uid === ino.uid ? (ino.mode >> 6) & 7 : who.gid === ino.gid ? (ino.mode >> 3) & 7 : ino.mode & 7;
  if ((bits & want) !== want) throw new FractosError('EACCES', `uid ${who.uid} may not ${want & W ? 'write' : want & R ? 'read' : 'search'} '${ino.path}'`);
}

/** Errors: EPERM when `parent` is sticky and `who` owns neither it nor `child` (and is not root). */
export function sticky(parent: Inode, child: Inode, who: Who): void {
  if (parent.mode & S_ISVTX && who.uid !== 0 && who.uid !== parent.uid && who.uid !== child.uid) {
    throw new FractosError('EPERM', `'${child.path}' is in a sticky directory and not the caller's`);
  }
}

/**
 * Errors: ENAMETOOLONG (over NAME_MAX bytes), EINVAL (empty, '/' or NUL in it; '.' or '..'
 * when `entry`, i.e. a name an entry is made or removed under).
 */
export function checkName(name: string, entry = true): void {
  if (name.length === 0 || name.includes('/') || name.includes('\0')) throw new FractosError('EINVAL', `bad name '${name.replace(/\0/g, '\\0')}'`);
  if (Buffer.byteLength(name, 'utf8') > NAME_MAX) throw new FractosError('ENAMETOOLONG', `name of ${Buffer.byteLength(name, 'utf8')} bytes > ${NAME_MAX}`);
  if (entry && (name === '.' || name === '..')) throw new FractosError('EINVAL', `'${name}' names no entry`);
}

/** Errors: EINVAL unless a time (s, ns) is whole and ns < 1e9. */
function checkTime(s: number, ns: number): Time {
  if (!Number.isSafeInteger(s) || s < 0 || !Number.isInteger(ns) || ns < 0 || ns >= 1e9) throw new FractosError('EINVAL', `bad time ${s}.${ns}`);
  return [s, ns];
}

/** The mode of a new inode: type | (perm & ~umask); setgid of a directory is inherited from a setgid parent. */
export function newMode(type: number, perm: number, umask: number, parent: Inode): number {
  let m = perm & MODE_PERM & ~(umask & 0o777);
  if (type === S_IFDIR && parent.mode & S_ISGID) m |= S_ISGID;
  return type | m;
}

/** The group of a new inode: the parent's when it is setgid (BSD semantics), else the caller's. */
export function newGid(parent: Inode, who: Who): number {
  return parent.mode & S_ISGID ? parent.gid : who.gid;
}

/** `ino`'s attributes as AttrReply's fields (ATTR_FIELDS). */
export function attrOf(ino: Inode): Record<string, number> {
  const alloc = Math.min(allocatedOf(ino), Math.ceil(ino.size / BLOCK) * BLOCK);
  return {
    ino: ino.id, generation: 1, mode: ino.mode, nlink: ino.nlink, uid: ino.uid, gid: ino.gid, size: ino.size,
    blocks: Math.ceil(alloc / 512), blksize: BLOCK,
    atimeSec: ino.atime[0], atimeNsec: ino.atime[1], mtimeSec: ino.mtime[0], mtimeNsec: ino.mtime[1], ctimeSec: ino.ctime[0], ctimeNsec: ino.ctime[1],
  };
}

/** [field, p-prefixed field] of each attribute, per prefix (made once). */
const PREFIXED = new Map<string, [string, string][]>();

/** `ino`'s attributes as `p`-prefixed fields (EntryReply's and RenameReply's pIno, pMode, ...), added to `into`. */
export function prefixedAttrOf(p: string, ino: Inode, into: Record<string, number>): Record<string, number> {
  const a = attrOf(ino);
  let keys = PREFIXED.get(p);
  if (!keys) PREFIXED.set(p, (keys = Object.keys(a).map((k) => [k, p + k[0]!.toUpperCase() + k.slice(1)])));
  for (const [k, pk] of keys) into[pk] = a[k]!;
  return into;
}

/** Mark `ino` changed (ctime now); with `modified`, its contents too (mtime). */
export function touch(ino: Inode, modified: boolean): void {
  const t = now();
  ino.ctime = t;
  if (modified) ino.mtime = [...t];
  ino.dirty = true;
}

/** What setattr asks besides the size (contract.ts SetAttrReq's fields). */
export type AttrChange = { valid: number; mode: number; newUid: number; newGid: number } & Pick<Attr, 'atimeSec' | 'atimeNsec' | 'mtimeSec' | 'mtimeNsec' | 'ctimeSec' | 'ctimeNsec'>;

/**
 * Check every change of `c` other than SIZE against `who` (all before any is applied), and
 * answer a function that applies them (ctime now unless CTIME). Errors: EPERM, EACCES, EINVAL.
 */
export function planSetattr(ino: Inode, c: AttrChange, who: Who): () => void {
  const v = c.valid;
  const owner = who.uid === 0 || who.uid === ino.uid;
  const steps: (() => void)[] = [];
  if (v & SetAttr.UID && c.newUid !== ino.uid && who.uid !== 0) throw new FractosError('EPERM', 'only root changes the owner');
  if (v & SetAttr.GID && c.newGid !== ino.gid && who.uid !== 0 && !(who.uid === ino.uid && c.newGid === who.gid)) throw new FractosError('EPERM', 'only root, or the owner to its own group, changes the group');
  if (v & (SetAttr.UID | SetAttr.GID)) {
    const uid = v & SetAttr.UID ? c.newUid : ino.uid;
    const gid = v & SetAttr.GID ? c.newGid : ino.gid;
    steps.push(() => {
      // chown clears setuid/setgid of a non-directory unless root made it (Linux clears for everyone on regular files when group-exec).
      if ((uid !== ino.uid || gid !== ino.gid) && !isDir(ino) && who.uid !== 0) ino.mode &= ~(S_ISUID | S_ISGID);
      ino.uid = uid;
      ino.gid = gid;
    });
  }
  if (v & SetAttr.MODE) {
    if (!owner) throw new FractosError('EPERM', 'only the owner or root changes the mode');
    let perm = c.mode & MODE_PERM;
    if (who.uid !== 0 && who.gid !== ino.gid) perm &= ~S_ISGID;
    steps.push(() => (ino.mode = (ino.mode & S_IFMT) | perm));
  }
  const times: [number, number, number, (t: Time) => void][] = [
    [SetAttr.ATIME, SetAttr.ATIME_NOW, 0, (t) => (ino.atime = t)],
    [SetAttr.MTIME, SetAttr.MTIME_NOW, 1, (t) => (ino.mtime = t)],
  ];
  for (const [bit, nowBit, which, set] of times) {
    if (v & nowBit) {
      if (!owner) access(ino, who, W);
      steps.push(() => set(now()));
    } else if (v & bit) {
      if (!owner) throw new FractosError('EPERM', 'only the owner or root sets explicit times');
      const t = which === 0 ? checkTime(c.atimeSec, c.atimeNsec) : checkTime(c.mtimeSec, c.mtimeNsec);
      steps.push(() => set(t));
    }
  }
  const ctime = v & SetAttr.CTIME ? checkTime(c.ctimeSec, c.ctimeNsec) : null;
  if (ctime && !owner) throw new FractosError('EPERM', 'only the owner or root sets the ctime');
  return () => {
    for (const s of steps) s();
    ino.ctime = ctime ?? now();
    ino.dirty = true;
  };
}

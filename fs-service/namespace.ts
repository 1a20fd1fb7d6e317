/**
 * The FS's namespace: inodes and directories (entries, hard links, symlinks, rename), the
 * life of an inode (unlinked while open: alive until its last close), and truncate.
 * Attributes and permission rules are attrs.ts's; the path-based API is paths.ts's.
 *
 * Invariants:
 * - `#inodes` holds every linked inode (nlink > 0), the root (ino 1, its own parent) first;
 *   `#orphans` the unlinked regular files still open. The metadata image is `#inodes`: an
 *   orphan is in no image, so a crash frees it (its volumes are reclaimed at start-up).
 * - Every directory entry names an inode of `#inodes`; a regular file's or symlink's nlink is
 *   the number of entries naming it; a directory's is 2 + its subdirectories; a directory has
 *   one entry naming it (no hard links to directories) and `dir.parent` is that entry's directory.
 * - An operation makes all of its in-memory changes in one synchronous step after its checks
 *   (no await between check and change), then `persist()`s before it answers: one metadata
 *   image holds the whole change (rename and link included) or none of it. Volumes are freed
 *   only after an image without them is durable.
 * - Change tracking for the metadata log (metadata.ts): an inode whose persisted fields
 *   change is `dirty`; entry changes are recorded in order in `#entryOps` and inodes that left
 *   in `#removed`; `delta()` hands them out (and resets them), `image()` resets them.
 * - Inode ids are never reused (`nextIno` is persisted), so generation is always 1.
 * - Bounded: names NAME_MAX bytes, symlink targets SYMLINK_MAX, a directory's entries
 *   MAX_DIR_BYTES, nlink MAX_LINKS, the whole image META_SLOT_BYTES (estimated in
 *   `#metaBytes` before a change is made: ENOSPC instead of an image that cannot be written).
 * - A shrink zeroes the cut-off bytes of the kept extents (FUA) before persisting the smaller
 *   size, so a later grow never exposes old bytes; a grow through setattr leaves a hole
 *   (no allocation; holes read as zeros), the path-based truncate allocates (as before).
 */
import { FractosError } from '../libfractos/errors.js';
import { writeU64 } from '../libfractos/protocol.js';
import {
  DIRENT_ATTR_BYTES, DIRENT_BYTES, DIRENT_OVERHEAD, DirType, MAX_DIR_BYTES, MAX_LINKS, RenameFlags, ROOT_INO, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, SYMLINK_MAX,
} from './contract.js';
import { allocatedOf, BLOCK, newInode, serialized, type Dir, type Extent, type Inode } from './inode.js';
import { META_SLOT_BYTES, type MetaDelta, type MetaImage, type MetaInode } from './metadata.js';
import { access, attrOf, checkName, isDir, isLnk, isReg, newGid, newMode, R, ROOT_WHO, sticky, touch, W, X, type Who } from './attrs.js';

/** What the namespace's operations need from the rest of the FS. */
export interface NamespaceDeps {
  /** Make the in-memory metadata durable (metadata.ts). */
  persist(): Promise<void>;
  /** Open handles of `ino` (opens.ts). */
  openCount(ino: Inode): number;
  /** Drop `ino`'s cached blocks from `fromBlock` on (cache.ts). */
  invalidate(ino: Inode, fromBlock: number): void;
  /** Grow `ino`'s extents to cover `end` bytes (extents.ts). */
  ensureAllocated(ino: Inode, end: number): Promise<void>;
  /** Revoke DAX grants on, and delete, the volumes of `gone` (extents.ts). */
  free(ino: Inode, gone: Extent[]): Promise<void>;
  /** Zero file range [from, end) on the device, FUA (mediated.ts). */
  zeroRange(ino: Inode, from: number, end: number): Promise<void>;
}

/** Estimated image bytes of an inode (its tuple) and of an entry beyond its name. */
const META_INODE = 160;
const META_ENTRY = 24;
/** Image bytes kept free so an estimate's error never makes a persist fail. */
const META_MARGIN = 256 << 10;

const typeOf = (ino: Inode): number => (isDir(ino) ? DirType.DIR : isLnk(ino) ? DirType.LNK : DirType.REG);

export class Namespace {
  readonly #deps: NamespaceDeps;
  readonly #inodes = new Map<number, Inode>();
  readonly #orphans = new Map<number, Inode>();
  #nextIno = ROOT_INO + 1;
  #metaBytes = 0;
  #files = 0;
  #entryOps: (string | number)[] = [];
  #removed: number[] = [];
  /** Inodes marked dirty since the last image or delta (Inode.changes points here). */
  readonly #changed = new Set<Inode>();

  constructor(deps: NamespaceDeps) {
    this.#deps = deps;
    const root = newInode(ROOT_INO, '/', S_IFDIR | 0o755, 0, 0, 2);
    root.dir = { entries: new Map(), nextCookie: 3, parent: ROOT_INO, bytes: 0 };
    this.#put(root);
  }

  /** Regular files linked in the namespace. */
  get size(): number {
    return this.#files;
  }

  /** Inodes in use (linked, and unlinked but open). */
  get inodes(): number {
    return this.#inodes.size + this.#orphans.size;
  }

  /** Inodes the metadata image still has room for, estimated (statfs's ffree). */
  get inodesFree(): number {
    return Math.max(0, Math.floor((META_SLOT_BYTES - META_MARGIN - this.#metaBytes) / (META_INODE + META_ENTRY + 16)));
  }

  /** Whether `ino` is alive: linked, or unlinked and still open (not freed). */
  isCurrent(ino: Inode): boolean {
    return this.#inodes.get(ino.id) === ino || this.#orphans.get(ino.id) === ino;
  }

  /** Every live inode (for statfs). */
  all(): IterableIterator<Inode> {
    return [...this.#inodes.values(), ...this.#orphans.values()].values();
  }

  #put(ino: Inode): void {
    this.#inodes.set(ino.id, ino);
    ino.changes = this.#changed;
    if (ino.dirty) this.#changed.add(ino);
    this.#metaBytes += META_INODE + (ino.target ? Buffer.byteLength(ino.target) : 0);
    if (isReg(ino)) this.#files++;
  }

  #gone(ino: Inode): void {
    this.#inodes.delete(ino.id);
    this.#removed.push(ino.id);
    this.#metaBytes -= META_INODE + (ino.target ? Buffer.byteLength(ino.target) : 0);
    if (isReg(ino)) this.#files--;
  }

  /** Errors: ENOSPC when the image would near META_SLOT_BYTES with `more` bytes. */
  #room(more: number): void {
    if (this.#metaBytes + more > META_SLOT_BYTES - META_MARGIN) throw new FractosError('ENOSPC', 'metadata image full');
  }

  /** Set `ino`'s persisted fields from tuple `t` (a directory's entries only when the tuple has them). */
  #fromTuple(t: MetaInode): Inode {
    const [id, mode, uid, gid, nlink, size, as, an, ms, mn, cs, cn, ext, extra] = t;
    let ino = this.#inodes.get(id);
    if (!ino) {
      ino = newInode(id, `#${id}`, mode, uid, gid, nlink);
      this.#inodes.set(id, ino);
    }
    Object.assign(ino, { mode, uid, gid, nlink, size, atime: [as, an], mtime: [ms, mn], ctime: [cs, cn], extents: [] });
    for (let i = 0; i < ext.length; i += 5) ino.extents.push({ volume: ext[i]!, fileOffset: ext[i + 1]!, length: ext[i + 2]!, pooled: ext[i + 3] === 1, volOffset: ext[i + 4]! });
    if (typeof extra === 'string') ino.target = extra;
    else if (extra) {
      const [parent, nextCookie, ents] = extra;
      ino.dir ??= { entries: new Map(), nextCookie, parent, bytes: 0 };
      ino.dir.parent = parent;
      ino.dir.nextCookie = nextCookie;
      if (ents) {
        ino.dir.entries.clear();
        for (let i = 0; i < ents.length; i += 3) ino.dir.entries.set(ents[i] as string, { ino: ents[i + 1] as number, cookie: ents[i + 2] as number });
      }
    }
    return ino;
  }

  /**
   * Load a persisted image and the log records after it (start-up, into a fresh namespace;
   * a version-1 image is converted); answers the regular files.
   */
  restore(image: MetaImage, deltas: MetaDelta[] = []): Inode[] {
    if (image.files) return this.#restoreV1(image);
    this.#inodes.clear();
    this.#nextIno = image.nextIno;
    for (const t of image.inodes ?? []) this.#fromTuple(t);
    for (const d of deltas) {
      this.#nextIno = Math.max(this.#nextIno, d.n);
      for (const t of d.i) this.#fromTuple(t);
      for (let k = 0; k < d.e.length; k += 4) {
        const entries = this.#inodes.get(d.e[k] as number)?.dir?.entries;
        if (!entries) continue; // a directory made and removed after this record
        const name = d.e[k + 1] as string;
        const ino = d.e[k + 2] as number;
        const cookie = d.e[k + 3] as number;
        const cur = entries.get(name);
        if (ino === 0) entries.delete(name);
        else if (cur && cur.cookie === cookie) cur.ino = ino; // exchanged in place
        else {
          entries.delete(name);
          entries.set(name, { ino, cookie });
        }
      }
      for (const id of d.r) this.#inodes.delete(id);
    }
    // Derived state: counters, directory bytes, names for messages; everything is clean.
    this.#metaBytes = 0;
    this.#files = 0;
    const files: Inode[] = [];
    for (const ino of this.#inodes.values()) {
      this.#metaBytes += META_INODE + (ino.target ? Buffer.byteLength(ino.target) : 0);
      ino.changes = this.#changed;
      ino.dirty = false;
      if (isReg(ino)) {
        this.#files++;
        files.push(ino);
      }
      if (!ino.dir) continue;
      ino.dir.bytes = 0;
      for (const [name, e] of ino.dir.entries) {
        ino.dir.bytes += Buffer.byteLength(name) + DIRENT_OVERHEAD;
        this.#metaBytes += Buffer.byteLength(name) + META_ENTRY;
        const c = this.#inodes.get(e.ino);
        if (c) c.path = name;
      }
    }
    this.#entryOps = [];
    this.#removed = [];
    this.#changed.clear();
    return files;
  }

  /** A version-1 image (flat paths): each path's directories made (0755, root's), files kept with their ids. */
  #restoreV1(image: MetaImage): Inode[] {
    const files: Inode[] = [];
    let next = Math.max(image.nextIno, ...(image.files ?? []).map((f) => f.id + 1));
    const ids: number[] = [];
    for (const f of image.files ?? []) {
      const names = f.path.split('/').filter(Boolean);
      let dir = this.#inodes.get(ROOT_INO)!;
      for (const n of names.slice(0, -1)) {
        const e = dir.dir!.entries.get(n);
        if (e) dir = this.#inodes.get(e.ino)!;
        else {
          const d = this.#makeDir(next++, dir, n, 0o755, ROOT_WHO);
          dir = d;
        }
      }
      const ino = newInode(f.id === ROOT_INO ? next++ : f.id, names[names.length - 1]!, S_IFREG | 0o644, 0, 0, 1);
      ids.push(ino.id);
      ino.size = f.size;
      ino.extents = f.extents.map(([volume, fileOffset, length]) => ({ volume, fileOffset, length, pooled: false, volOffset: 0 }));
      this.#put(ino);
      this.#addEntry(dir, names[names.length - 1]!, ino);
      files.push(ino);
    }
    this.#nextIno = Math.max(next, ...ids.map((i) => i + 1));
    return files;
  }

  /** `i` as an image tuple; a directory's entries only `withEntries`. */
  #tuple(i: Inode, withEntries: boolean): MetaInode {
    const ext: number[] = [];
    for (const x of i.extents) ext.push(x.volume, x.fileOffset, x.length, x.pooled ? 1 : 0, x.volOffset);
    let extra: MetaInode[13] = 0;
    if (i.target !== undefined) extra = i.target;
    else if (i.dir) {
      let ents: (string | number)[] | null = null;
      if (withEntries) {
        ents = [];
        for (const [name, e] of i.dir.entries) ents.push(name, e.ino, e.cookie);
      }
      extra = [i.dir.parent, i.dir.nextCookie, ents];
    }
    return [i.id, i.mode, i.uid, i.gid, i.nlink, i.size, i.atime[0], i.atime[1], i.mtime[0], i.mtime[1], i.ctime[0], i.ctime[1], ext, extra];
  }

  /** The namespace as the metadata image persists it (version 2); resets the change tracking. */
  image(): MetaImage {
    const inodes: MetaInode[] = [];
    for (const i of this.#inodes.values()) {
      inodes.push(this.#tuple(i, true));
      i.dirty = false;
    }
    this.#changed.clear();
    this.#entryOps = [];
    this.#removed = [];
    return { nextIno: this.#nextIno, inodes };
  }

  /** The changes since the last image or delta (a log record), and reset the tracking. */
  delta(): MetaDelta {
    const i: MetaInode[] = [];
    // Only inodes in the namespace (an unlinked open file's changes are not persisted).
    for (const ino of this.#changed) {
      if (!ino.dirty || this.#inodes.get(ino.id) !== ino) continue;
      i.push(this.#tuple(ino, false));
      ino.dirty = false;
    }
    this.#changed.clear();
    const d: MetaDelta = { n: this.#nextIno, i, e: this.#entryOps, r: this.#removed };
    this.#entryOps = [];
    this.#removed = [];
    return d;
  }

  /** The live inode `id`. Errors: ENOENT. */
  get(id: number): Inode {
    const ino = this.#inodes.get(id) ?? this.#orphans.get(id);
    if (!ino) throw new FractosError('ENOENT', `no inode ${id}`);
    return ino;
  }

  /** The directory `id`. Errors: ENOENT, ENOTDIR. */
  #dirOf(id: number): Inode & { dir: Dir } {
    const d = this.get(id);
    if (!d.dir) throw new FractosError('ENOTDIR', `inode ${id} is not a directory`);
    return d as Inode & { dir: Dir };
  }

  /** The inode `name` names in `d` ('.' and '..' included), or undefined. */
  #child(d: Inode & { dir: Dir }, name: string): Inode | undefined {
    if (name === '.') return d;
    if (name === '..') return this.#inodes.get(d.dir.parent);
    const e = d.dir.entries.get(name);
    return e ? this.#inodes.get(e.ino) : undefined;
  }

  /** Errors: EEXIST (`name` exists in `d`), ENOSPC (directory or image full). */
  #checkNew(d: Inode & { dir: Dir }, name: string, inodeBytes: number): void {
    if (name === '.' || name === '..' || d.dir.entries.has(name)) throw new FractosError('EEXIST', `'${name}' exists`);
    const nb = Buffer.byteLength(name);
    if (d.dir.bytes + nb + DIRENT_OVERHEAD > MAX_DIR_BYTES) throw new FractosError('ENOSPC', `directory '${d.path}' holds ${MAX_DIR_BYTES} bytes of entries`);
    this.#room(nb + META_ENTRY + inodeBytes);
  }

  #addEntry(d: Inode, name: string, ino: Inode): void {
    const dir = d.dir!;
    const cookie = dir.nextCookie++;
    dir.entries.set(name, { ino: ino.id, cookie });
    this.#entryOps.push(d.id, name, ino.id, cookie);
    d.dirty = true;
    const nb = Buffer.byteLength(name);
    dir.bytes += nb + DIRENT_OVERHEAD;
    this.#metaBytes += nb + META_ENTRY;
    ino.path = name;
  }

  #removeEntry(d: Inode, name: string): void {
    const dir = d.dir!;
    if (!dir.entries.delete(name)) return;
    this.#entryOps.push(d.id, name, 0, 0);
    d.dirty = true;
    const nb = Buffer.byteLength(name);
    dir.bytes -= nb + DIRENT_OVERHEAD;
    this.#metaBytes -= nb + META_ENTRY;
  }

  #makeDir(id: number, parent: Inode, name: string, mode: number, who: Who, umask = 0): Inode {
    const ino = newInode(id, name, newMode(S_IFDIR, mode, umask, parent), who.uid, newGid(parent, who), 2);
    ino.dir = { entries: new Map(), nextCookie: 3, parent: parent.id, bytes: 0 };
    this.#put(ino);
    this.#addEntry(parent, name, ino);
    parent.nlink++;
    return ino;
  }

  /** One link of `ino` is gone (in memory, same step as the entry's removal): unlinked inodes leave `#inodes`, open ones become orphans. */
  #unlinked(ino: Inode): void {
    ino.nlink = isDir(ino) ? 0 : ino.nlink - 1;
    ino.dirty = true;
    if (ino.nlink > 0) return;
    this.#gone(ino);
    if (isReg(ino) && this.#deps.openCount(ino) > 0) this.#orphans.set(ino.id, ino);
  }

  /** After the image without `ino` is durable: free its volumes unless it is still open (the last close frees it: `released`). */
  async #reap(ino: Inode): Promise<void> {
    if (ino.nlink > 0 || this.#orphans.has(ino.id) || this.#inodes.has(ino.id)) return;
    this.#deps.invalidate(ino, 0);
    if (ino.extents.length) await this.#deps.free(ino, ino.extents.splice(0));
  }

  /** The last open of `ino` closed (opens.ts): an orphan is freed now. */
  async released(ino: Inode): Promise<void> {
    if (this.#orphans.get(ino.id) !== ino || this.#deps.openCount(ino) > 0) return;
    this.#orphans.delete(ino.id);
    await this.#reap(ino);
  }

  // ---- operations of the inode contract (contract.ts); each answers the inode it made or changed ----

  /** lookup(parent, name). Errors: ENOENT, ENOTDIR, ENAMETOOLONG, EINVAL, EACCES. */
  lookup(parent: number, name: string, who: Who): Inode {
    const c = this.find(parent, name, who);
    if (!c) throw new FractosError('ENOENT', `no '${name}' in '${this.get(parent).path}'`);
    return c;
  }

  /** As `lookup`, but a missing name is undefined, not an error (create's check: no Error made). */
  find(parent: number, name: string, who: Who): Inode | undefined {
    const d = this.#dirOf(parent);
    checkName(name, false);
    access(d, who, X);
    return this.#child(d, name);
  }

  /** The directory `parent` ready for a new entry `name` by `who`. Errors: ENOENT, ENOTDIR, EINVAL, ENAMETOOLONG, EACCES, EEXIST, ENOSPC. */
  #forNew(parent: number, name: string, who: Who, inodeBytes: number): Inode & { dir: Dir } {
    const d = this.#dirOf(parent);
    if (name === '.' || name === '..') throw new FractosError('EEXIST', `'${name}' exists`);
    checkName(name);
    access(d, who, W | X);
    this.#checkNew(d, name, META_INODE + inodeBytes);
    return d;
  }

  /**
   * mknod: a regular file. `alongside(ino)` (create + open) runs while the new entry is made
   * durable; both are waited for (the first error is thrown after both settled, so the caller
   * can undo what `alongside` made). Errors: ENOTSUP (another type), those of #forNew.
   */
  async mknod(parent: number, name: string, mode: number, umask: number, who: Who, alongside?: (ino: Inode) => Promise<void>): Promise<Inode> {
    const type = mode & S_IFMT;
    if (type !== 0 && type !== S_IFREG) throw new FractosError('ENOTSUP', `file type ${type.toString(8)} not supported (regular files, directories, symlinks)`);
    const d = this.#forNew(parent, name, who, 0);
    const ino = newInode(this.#nextIno++, name, newMode(S_IFREG, mode, umask, d), who.uid, newGid(d, who), 1);
    this.#put(ino);
    this.#addEntry(d, name, ino);
    touch(d, true);
    if (!alongside) {
      await this.#deps.persist();
      return ino;
    }
    const [durable, side] = await Promise.allSettled([this.#deps.persist(), alongside(ino)]);
    if (durable.status === 'rejected') throw durable.reason;
    if (side.status === 'rejected') throw side.reason;
    return ino;
  }

  /** mkdir. Errors: EMLINK (parent has MAX_LINKS), those of #forNew. */
  async mkdir(parent: number, name: string, mode: number, umask: number, who: Who): Promise<Inode> {
    const d = this.#forNew(parent, name, who, 0);
    if (d.nlink >= MAX_LINKS) throw new FractosError('EMLINK', `'${d.path}' has ${MAX_LINKS} links`);
    const ino = this.#makeDir(this.#nextIno++, d, name, mode, who, umask);
    touch(d, true);
    await this.#deps.persist();
    return ino;
  }

  /** symlink. Errors: EINVAL (empty target), ENAMETOOLONG (target over SYMLINK_MAX), those of #forNew. */
  async symlink(parent: number, name: string, target: string, who: Who): Promise<Inode> {
    const tb = Buffer.byteLength(target);
    if (tb === 0 || target.includes('\0')) throw new FractosError('EINVAL', 'empty symlink target');
    if (tb > SYMLINK_MAX) throw new FractosError('ENAMETOOLONG', `symlink target of ${tb} bytes`);
    const d = this.#forNew(parent, name, who, tb);
    const ino = newInode(this.#nextIno++, name, S_IFLNK | 0o777, who.uid, newGid(d, who), 1);
    ino.target = target;
    ino.size = tb;
    this.#put(ino);
    this.#addEntry(d, name, ino);
    touch(d, true);
    await this.#deps.persist();
    return ino;
  }

  /** readlink. Errors: ENOENT, EINVAL (not a symlink). */
  readlink(id: number): string {
    const ino = this.get(id);
    if (ino.target === undefined) throw new FractosError('EINVAL', `inode ${id} is not a symlink`);
    return ino.target;
  }

  /** link(ino, newParent, newName). Errors: EPERM (directory), EMLINK, ENOENT (unlinked inode), those of #forNew. */
  async link(id: number, newParent: number, newName: string, who: Who): Promise<Inode> {
    const ino = this.get(id);
    if (isDir(ino)) throw new FractosError('EPERM', 'hard links to directories are not allowed');
    if (ino.nlink === 0) throw new FractosError('ENOENT', `inode ${id} is unlinked`);
    if (ino.nlink >= MAX_LINKS) throw new FractosError('EMLINK', `inode ${id} has ${MAX_LINKS} links`);
    const d = this.#forNew(newParent, newName, who, 0);
    this.#addEntry(d, newName, ino);
    ino.nlink++;
    touch(ino, false);
    touch(d, true);
    await this.#deps.persist();
    return ino;
  }

  /** The entry `name` of `parent` to remove by `who`. Errors: ENOENT, ENOTDIR, EINVAL, ENAMETOOLONG, EACCES, EPERM (sticky). */
  #forRemove(parent: number, name: string, who: Who): { d: Inode & { dir: Dir }; c: Inode } {
    const d = this.#dirOf(parent);
    checkName(name);
    access(d, who, W | X);
    const e = d.dir.entries.get(name);
    const c = e && this.#inodes.get(e.ino);
    if (!c) throw new FractosError('ENOENT', `no '${name}' in '${d.path}'`);
    sticky(d, c, who);
    return { d, c };
  }

  /** unlink: the entry goes; the inode's data lives while it has links or opens. Errors: EISDIR, those of #forRemove. */
  async unlink(parent: number, name: string, who: Who): Promise<void> {
    if (name === '.' || name === '..') throw new FractosError('EISDIR', `'${name}' is a directory`);
    const { d, c } = this.#forRemove(parent, name, who);
    if (isDir(c)) throw new FractosError('EISDIR', `'${name}' is a directory`);
    this.#removeEntry(d, name);
    this.#unlinked(c);
    touch(c, false);
    touch(d, true);
    await this.#deps.persist();
    await this.#reap(c);
  }

  /** rmdir. Errors: EINVAL ('.'), ENOTEMPTY ('..', entries left), ENOTDIR, those of #forRemove. */
  async rmdir(parent: number, name: string, who: Who): Promise<void> {
    if (name === '.') throw new FractosError('EINVAL', "rmdir of '.'");
    if (name === '..') throw new FractosError('ENOTEMPTY', "rmdir of '..'");
    const { d, c } = this.#forRemove(parent, name, who);
    if (!c.dir) throw new FractosError('ENOTDIR', `'${name}' is not a directory`);
    if (c.dir.entries.size > 0) throw new FractosError('ENOTEMPTY', `'${name}' is not empty`);
    this.#removeEntry(d, name);
    d.nlink--;
    this.#unlinked(c);
    touch(d, true);
    await this.#deps.persist();
  }

  /** Whether directory `a` is `b` or one of its ancestors. */
  #isAncestor(a: number, b: number): boolean {
    for (let x = b; ; ) {
      if (x === a) return true;
      if (x === ROOT_INO) return false;
      x = this.#inodes.get(x)!.dir!.parent;
    }
  }

  /**
   * rename(parent, name, newParent, newName, flags): one durable image holds the whole move
   * (a replaced target's removal included). Errors: see contract.ts Rename.
   */
  async rename(parent: number, name: string, newParent: number, newName: string, flags: number, who: Who): Promise<void> {
    if (flags & ~(RenameFlags.NOREPLACE | RenameFlags.EXCHANGE) || flags === (RenameFlags.NOREPLACE | RenameFlags.EXCHANGE)) {
      throw new FractosError('EINVAL', `bad rename flags ${flags}`);
    }
    for (const n of [name, newName]) if (n === '.' || n === '..') throw new FractosError('EBUSY', `rename of '${n}'`);
    const { d: sd, c: src } = this.#forRemove(parent, name, who);
    const td = this.#dirOf(newParent);
    checkName(newName);
    access(td, who, W | X);
    const te = td.dir.entries.get(newName);
    const tgt = te ? this.#inodes.get(te.ino) : undefined;
    if (tgt) sticky(td, tgt, who);
    if (src.dir && this.#isAncestor(src.id, td.id)) throw new FractosError('EINVAL', `'${name}' would move under itself`);
    if (tgt?.dir && sd.id !== td.id && this.#isAncestor(tgt.id, sd.id)) throw new FractosError('ENOTEMPTY', `'${newName}' is an ancestor of the source`);
    if (flags & RenameFlags.EXCHANGE) {
      if (!tgt) throw new FractosError('ENOENT', `no '${newName}' to exchange with`);
      if (src === tgt) return;
      const dirMove = (src.dir ? 1 : 0) - (tgt.dir ? 1 : 0); // subdirectories moving from sd to td
      if (sd !== td && dirMove > 0 && td.nlink >= MAX_LINKS) throw new FractosError('EMLINK', `'${td.path}' has ${MAX_LINKS} links`);
      if (sd !== td && dirMove < 0 && sd.nlink >= MAX_LINKS) throw new FractosError('EMLINK', `'${sd.path}' has ${MAX_LINKS} links`);
      // Same names, swapped inodes: each entry keeps its cookie (the name is unchanged).
      const se = sd.dir.entries.get(name)!;
      const te2 = td.dir.entries.get(newName)!;
      se.ino = tgt.id;
      te2.ino = src.id;
      this.#entryOps.push(sd.id, name, tgt.id, se.cookie, td.id, newName, src.id, te2.cookie);
      if (src.dir) src.dir.parent = td.id;
      if (tgt.dir) tgt.dir.parent = sd.id;
      if (sd !== td) {
        sd.nlink -= dirMove;
        td.nlink += dirMove;
      }
      src.path = newName;
      tgt.path = name;
      for (const x of [src, tgt]) touch(x, false);
      for (const x of new Set([sd, td])) touch(x, true);
      await this.#deps.persist();
      return;
    }
    if (tgt) {
      if (flags & RenameFlags.NOREPLACE) throw new FractosError('EEXIST', `'${newName}' exists`);
      if (tgt === src) return; // two links of one inode: nothing to do (POSIX)
      if (src.dir && !tgt.dir) throw new FractosError('ENOTDIR', `'${newName}' is not a directory`);
      if (!src.dir && tgt.dir) throw new FractosError('EISDIR', `'${newName}' is a directory`);
      if (tgt.dir && tgt.dir.entries.size > 0) throw new FractosError('ENOTEMPTY', `'${newName}' is not empty`);
    } else {
      this.#checkNew(td, newName, 0);
      if (src.dir && sd !== td && td.nlink >= MAX_LINKS) throw new FractosError('EMLINK', `'${td.path}' has ${MAX_LINKS} links`);
    }
    // Checks done: the whole change in one step.
    this.#removeEntry(sd, name);
    if (tgt) {
      this.#removeEntry(td, newName);
      if (tgt.dir) td.nlink--;
      this.#unlinked(tgt);
      touch(tgt, false);
    }
    this.#addEntry(td, newName, src);
    if (src.dir && sd !== td) {
      src.dir.parent = td.id;
      sd.nlink--;
      td.nlink++;
    }
    touch(src, false);
    for (const x of new Set([sd, td])) touch(x, true);
    await this.#deps.persist();
    if (tgt) await this.#reap(tgt);
  }

  /**
   * One readdir page of directory `id` after `cookie` ('.' = 1, '..' = 2, entries from 3):
   * records (contract.ts ReaddirReply) into `out`, at most `max` (0: no limit). Errors:
   * ENOENT, ENOTDIR, EACCES.
   */
  readdir(id: number, cookie: number, max: number, who: Who, out: Buffer, plus = false): { count: number; bytes: number; end: boolean } {
    const d = this.#dirOf(id);
    access(d, who, R);
    const lim = max > 0 ? max : Infinity;
    const extra = plus ? DIRENT_ATTR_BYTES : 0;
    let count = 0;
    let o = 0;
    const put = (ino: Inode, c: number, type: number, name: string): boolean => {
      const nb = Buffer.byteLength(name);
      if (count >= lim || o + 19 + nb + extra > Math.min(out.length, DIRENT_BYTES)) return false;
      writeU64(out, ino.id, o);
      writeU64(out, c, o + 8);
      out[o + 16] = type;
      out.writeUInt16LE(nb, o + 17);
      out.write(name, o + 19, 'utf8');
      o += 19 + nb;
      if (plus) {
        const a = attrOf(ino);
        out.writeUInt32LE(a.mode!, o);
        out.writeUInt32LE(a.nlink!, o + 4);
        out.writeUInt32LE(a.uid!, o + 8);
        out.writeUInt32LE(a.gid!, o + 12);
        writeU64(out, a.size!, o + 16);
        writeU64(out, a.blocks!, o + 24);
        writeU64(out, a.atimeSec!, o + 32);
        out.writeUInt32LE(a.atimeNsec!, o + 40);
        writeU64(out, a.mtimeSec!, o + 44);
        out.writeUInt32LE(a.mtimeNsec!, o + 52);
        writeU64(out, a.ctimeSec!, o + 56);
        out.writeUInt32LE(a.ctimeNsec!, o + 64);
        o += DIRENT_ATTR_BYTES;
      }
      count++;
      return true;
    };
    if (cookie < 1 && !put(d, 1, DirType.DIR, '.')) return { count, bytes: o, end: false };
    if (cookie < 2 && !put(this.#inodes.get(d.dir.parent) ?? d, 2, DirType.DIR, '..')) return { count, bytes: o, end: false };
    for (const [name, e] of d.dir.entries) {
      if (e.cookie <= cookie) continue;
      const c = this.#inodes.get(e.ino)!;
      if (!put(c, e.cookie, typeOf(c), name)) return { count, bytes: o, end: false };
    }
    return { count, bytes: o, end: true };
  }

  /**
   * Set `ino`'s size in bytes, durable when it resolves (the caller checked permissions). A
   * grow allocates when `allocate` (path-based truncate, DAX), else leaves a hole; a shrink
   * zeroes the cut-off bytes of the kept extents (FUA) before the new size is durable, then
   * frees the extents past it. Errors: EISDIR/EINVAL (not a regular file), ENOSPC.
   */
  async resize(ino: Inode, size: number, allocate: boolean): Promise<void> {
    if (isDir(ino)) throw new FractosError('EISDIR', `'${ino.path}' is a directory`);
    if (!isReg(ino)) throw new FractosError('EINVAL', `'${ino.path}' is not a regular file`);
    if (size >= ino.size) {
      if (allocate) await this.#deps.ensureAllocated(ino, size);
      ino.size = size;
      touch(ino, true);
      await this.#deps.persist();
      return;
    }
    // A shrink changes the extents: serialized with allocation and makePrivate.
    await serialized(ino, () => this.#shrink(ino, size));
  }

  async #shrink(ino: Inode, size: number): Promise<void> {
    if (size >= ino.size) {
      // Grown meanwhile (a write past the end): the size asked for is still set.
      ino.size = size;
      touch(ino, true);
      await this.#deps.persist();
      return;
    }
    const old = ino.size;
    const keep = Math.ceil(size / BLOCK) * BLOCK;
    const gone = ino.extents.filter((x) => x.fileOffset >= keep);
    ino.extents = ino.extents.filter((x) => x.fileOffset < keep);
    ino.size = size;
    touch(ino, true);
    this.#deps.invalidate(ino, Math.floor(size / BLOCK));
    // Bytes past the size are zero on the device (new volumes are zeroed; a shrink zeroes
    // what it cuts off the kept extents), so a later grow exposes zeros, never old data.
    // Durable (FUA) before the metadata: a crash never leaves old bytes past a persisted size.
    await this.#deps.zeroRange(ino, size, Math.min(Math.ceil(old / BLOCK) * BLOCK, allocatedOf(ino)));
    await this.#deps.persist();
    if (gone.length) await this.#deps.free(ino, gone);
  }

  // ---- the path-based API's resolution (paths.ts) ----

  /**
   * The inode at absolute `path` (no symlinks followed), with `mkdirs` making missing parent
   * directories (0755, root's). Answers the parent directory, the last name and the inode
   * (undefined when missing). Errors: EINVAL (not absolute, empty component), ENAMETOOLONG,
   * ENOENT (a missing parent without `mkdirs`), ENOTDIR, ENOSPC.
   */
  walk(path: string, mkdirs: boolean): { d: Inode & { dir: Dir }; name: string; ino: Inode | undefined } {
    if (!path.startsWith('/') || path.length < 2 || path.endsWith('/') || path.includes('//')) throw new FractosError('EINVAL', `bad path '${path}' (absolute, no trailing '/')`);
    const names = path.slice(1).split('/');
    for (const n of names) checkName(n, false);
    let d = this.#dirOf(ROOT_INO);
    for (let k = 0; k < names.length - 1; k++) {
      const n = names[k]!;
      let c = this.#child(d, n);
      if (!c) {
        if (!mkdirs) throw new FractosError('ENOENT', `no directory '${n}' in '${path}'`);
        // Every later component is missing too: check room for all of them before making any.
        this.#checkNew(d, n, (names.length - 1 - k) * (2 * META_INODE + META_ENTRY));
        c = this.#makeDir(this.#nextIno++, d, n, 0o755, ROOT_WHO);
        touch(d, true);
      }
      if (!c.dir) throw new FractosError('ENOTDIR', `'${n}' in '${path}' is not a directory`);
      d = c as Inode & { dir: Dir };
    }
    const name = names[names.length - 1]!;
    return { d, name, ino: this.#child(d, name) };
  }

  /** Paths of every regular file under directory `d` (prefix `at`), depth first, into `out`. */
  files(d: Inode, at: string, out: string[]): void {
    for (const [name, e] of d.dir?.entries ?? []) {
      const c = this.#inodes.get(e.ino)!;
      if (c.dir) this.files(c, `${at}/${name}`, out);
      else if (isReg(c)) out.push(`${at}/${name}`);
    }
  }

  /** The root directory. */
  get root(): Inode {
    return this.#inodes.get(ROOT_INO)!;
  }

  /** A new regular file `name` in `d` (path-based create; root's, 0644). Errors: EEXIST, ENOSPC, EINVAL. */
  addFile(d: Inode & { dir: Dir }, name: string): Inode {
    checkName(name);
    this.#checkNew(d, name, META_INODE);
    const ino = newInode(this.#nextIno++, name, S_IFREG | 0o644, 0, 0, 1);
    this.#put(ino);
    this.#addEntry(d, name, ino);
    touch(d, true);
    return ino;
  }

  /** Remove entry `name` of `d` naming `c` (path-based delete), in memory; `reap` after persisting. */
  removeFile(d: Inode & { dir: Dir }, name: string, c: Inode): void {
    this.#removeEntry(d, name);
    this.#unlinked(c);
    touch(d, true);
  }

  /** Free an unlinked inode's volumes once its image is durable (path-based delete, after closing its opens). */
  async reap(ino: Inode): Promise<void> {
    this.#orphans.delete(ino.id);
    await this.#reap(ino);
  }
}

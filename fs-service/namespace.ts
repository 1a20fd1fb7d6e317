/**
 * The FS's namespace: the path table (flat: absolute paths, no directories) and the file
 * operations on it (create, stat, list, delete, truncate; open resolves through it).
 *
 * Invariants:
 * - A path is absolute, '/'-separated, without a trailing '/', '//' or NUL (`checkPath`);
 *   at most one file a path; inode ids are never reused (`nextIno` is persisted).
 * - Every change to the table or to a file's size or extents is followed by `persist()`
 *   before the operation answers: an answered operation survives a crash.
 * - Order against a crash: a delete or shrink persists the image without the extents before
 *   their volumes are freed (a crash between leaks a volume, reclaimed at the next start,
 *   never a volume named twice); a shrink zeroes the cut-off bytes of the kept extents (FUA)
 *   before persisting the smaller size, so a later grow never exposes old bytes.
 * - A deleted file's opens are closed (their Requests revoked) before its extents are freed.
 */
import { FractosError } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import { DoneReply, ListReply, StatReply } from './schema.js';
import { allocatedOf, BLOCK, MAX_MEDIATED, newInode, type Extent, type Inode } from './inode.js';
import type { MetaImage } from './metadata.js';

/** What the namespace's operations need from the rest of the FS. */
export interface NamespaceDeps {
  /** Make the in-memory metadata durable (metadata.ts). */
  persist(): Promise<void>;
  /** Close every open of `ino` (opens.ts). */
  closeAll(ino: Inode): Promise<void>;
  /** Drop `ino`'s cached blocks from `fromBlock` on (cache.ts). */
  invalidate(ino: Inode, fromBlock: number): void;
  /** Grow `ino`'s extents to cover `end` bytes (extents.ts). */
  ensureAllocated(ino: Inode, end: number): Promise<void>;
  /** Revoke DAX grants on, and delete, the volumes of `gone` (extents.ts). */
  free(ino: Inode, gone: Extent[]): Promise<void>;
  /** Zero file range [from, end) on the device, FUA (mediated.ts). */
  zeroRange(ino: Inode, from: number, end: number): Promise<void>;
  /** Copy a listing into a client's Memory (staging.ts). */
  sendListing(data: Buffer, buffer: number): Promise<void>;
}

/** Errors: EINVAL unless `path` is absolute, without a trailing '/', '//' or NUL. */
export function checkPath(path: string): void {
  if (!path.startsWith('/') || path.length < 2 || path.endsWith('/') || path.includes('//') || path.includes('\0')) {
    throw new FractosError('EINVAL', `bad path '${path}' (absolute, no trailing '/')`);
  }
}

export class Namespace {
  readonly #proc: Process;
  readonly #deps: NamespaceDeps;
  readonly #files = new Map<string, Inode>();
  #nextIno = 1;

  constructor(proc: Process, deps: NamespaceDeps) {
    this.#proc = proc;
    this.#deps = deps;
  }

  /** Files in the namespace. */
  get size(): number {
    return this.#files.size;
  }

  /** Whether `ino` is the file at its path now (not deleted, not replaced). */
  isCurrent(ino: Inode): boolean {
    return this.#files.get(ino.path) === ino;
  }

  /** Load a persisted image (start-up, into an empty namespace); answers its files. */
  restore(image: MetaImage): Inode[] {
    this.#nextIno = image.nextIno;
    const files: Inode[] = [];
    for (const f of image.files) {
      const ino = newInode(f.id, f.path, f.size, f.extents.map(([volume, fileOffset, length]) => ({ volume, fileOffset, length })));
      this.#files.set(f.path, ino);
      files.push(ino);
    }
    return files;
  }

  /** The namespace as the metadata image persists it. */
  image(): MetaImage {
    const files = [...this.#files.values()].map((f) => ({ id: f.id, path: f.path, size: f.size, extents: f.extents.map((x): [number, number, number] => [x.volume, x.fileOffset, x.length]) }));
    return { nextIno: this.#nextIno, files };
  }

  /** The file at `path` to open, created (and persisted) when missing and `create`. Errors: EINVAL, ENOENT, ENOSPC. */
  async resolve(path: string, create: boolean): Promise<Inode> {
    checkPath(path);
    let ino = this.#files.get(path);
    if (!ino) {
      if (!create) throw new FractosError('ENOENT', `no file '${path}'`);
      ino = this.#add(path);
      await this.#deps.persist();
    }
    return ino;
  }

  /** The file at `path`. Errors: EINVAL (bad path), ENOENT. */
  #lookup(path: string): Inode {
    checkPath(path);
    const ino = this.#files.get(path);
    if (!ino) throw new FractosError('ENOENT', `no file '${path}'`);
    return ino;
  }

  #add(path: string): Inode {
    checkPath(path);
    if (this.#files.has(path)) throw new FractosError('EEXIST', `'${path}' exists`);
    const ino = newInode(this.#nextIno++, path);
    this.#files.set(path, ino);
    return ino;
  }

  /** create(path): a new empty file; DoneReply on `ok` once durable. Errors: EINVAL (bad path), EEXIST, ENOSPC. */
  async create(path: string, ok: number): Promise<void> {
    this.#add(path);
    await this.#deps.persist();
    await this.#proc.invoke(ok, DoneReply);
  }

  /** stat(path): StatReply (size, extents, allocated bytes) on `ok`. Errors: EINVAL, ENOENT. */
  async stat(path: string, ok: number): Promise<void> {
    const ino = this.#lookup(path);
    await this.#proc.invoke(ok, StatReply, { size: ino.size, extents: ino.extents.length, allocated: allocatedOf(ino) });
  }

  /**
   * list(prefix): the paths starting with `prefix`, sorted, '\n'-separated UTF-8, written into
   * Memory `buffer`; ListReply on `ok`. Errors: EINVAL (no buffer), ERANGE (over 1 MiB, or
   * larger than the buffer), EPERM (buffer not writable).
   */
  async list(prefix: string, buffer: number, ok: number): Promise<void> {
    if (!buffer) throw new FractosError('EINVAL', 'no buffer cap');
    const names = [...this.#files.keys()].filter((n) => n.startsWith(prefix)).sort();
    const data = Buffer.from(names.join('\n'), 'utf8');
    if (data.length > MAX_MEDIATED) throw new FractosError('ERANGE', 'listing larger than 1 MiB');
    await this.#deps.sendListing(data, buffer);
    await this.#proc.invoke(ok, ListReply, { bytes: data.length, count: names.length });
  }

  /**
   * delete(path): the file leaves the namespace (durable), its opens are closed (their
   * Requests revoked, DAX ones included), then its extents are freed; DoneReply on `ok`.
   * Errors: EINVAL, ENOENT.
   */
  async delete(path: string, ok: number): Promise<void> {
    const ino = this.#lookup(path);
    this.#files.delete(path);
    await this.#deps.persist();
    await this.#deps.closeAll(ino);
    this.#deps.invalidate(ino, 0);
    await this.#deps.free(ino, ino.extents);
    await this.#proc.invoke(ok, DoneReply);
  }

  /**
   * truncate(path, size) in bytes: a grow allocates (the new bytes read as zeros); a shrink
   * zeroes the cut-off bytes of the kept extents (FUA) before the new size is durable, then
   * frees the extents past it. DoneReply on `ok`. Errors: EINVAL, ENOENT, ENOSPC.
   */
  async truncate(path: string, size: number, ok: number): Promise<void> {
    const ino = this.#lookup(path);
    if (size >= ino.size) {
      await this.#deps.ensureAllocated(ino, size);
      ino.size = size;
      await this.#deps.persist();
    } else {
      const old = ino.size;
      const keep = Math.ceil(size / BLOCK) * BLOCK;
      const gone = ino.extents.filter((x) => x.fileOffset >= keep);
      ino.extents = ino.extents.filter((x) => x.fileOffset < keep);
      ino.size = size;
      this.#deps.invalidate(ino, Math.floor(size / BLOCK));
      // Bytes past the size are zero on the device (new volumes are zeroed; a shrink zeroes
      // what it cuts off the kept extents), so a later grow exposes zeros, never old data.
      // Durable (FUA) before the metadata: a crash never leaves old bytes past a persisted size.
      await this.#deps.zeroRange(ino, size, Math.min(Math.ceil(old / BLOCK) * BLOCK, allocatedOf(ino)));
      await this.#deps.persist();
      if (gone.length) await this.#deps.free(ino, gone);
    }
    await this.#proc.invoke(ok, DoneReply);
  }
}

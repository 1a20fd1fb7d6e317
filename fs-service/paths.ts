/**
 * The path-based API (schema.ts: create, open's resolution, stat, list, delete, truncate),
 * kept for libfractos users (facever, the fio runner), on top of the hierarchical namespace.
 * Paths are resolved from the root as uid 0 without following symlinks.
 *
 * Invariants:
 * - create and open(create) make missing parent directories (0755, root's) in the same
 *   in-memory step as the file, so one image holds them all.
 * - delete removes the entry, persists, then closes every open of the file (revoking their
 *   Requests, DAX ones included) and frees its extents: the old semantics, unlike the
 *   inode contract's unlink (opens keep the data until their last close).
 */
import { FractosError } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import { DoneReply, ListReply, StatReply } from './schema.js';
import { allocatedOf, MAX_MEDIATED, type Inode } from './inode.js';
import { isDir, isReg } from './attrs.js';
import type { Namespace } from './namespace.js';

/** What the path-based API needs besides the namespace. */
export interface PathsDeps {
  persist(): Promise<void>;
  /** Close every open of `ino` (opens.ts). */
  closeAll(ino: Inode): Promise<void>;
  /** Copy a listing into a client's Memory (staging.ts). */
  sendListing(data: Buffer, buffer: number): Promise<void>;
}

export class Paths {
  readonly #proc: Process;
  readonly #ns: Namespace;
  readonly #deps: PathsDeps;

  constructor(proc: Process, ns: Namespace, deps: PathsDeps) {
    this.#proc = proc;
    this.#ns = ns;
    this.#deps = deps;
  }

  /** The regular file at `path`. Errors: EINVAL, ENOENT, ENOTDIR, EISDIR, ENAMETOOLONG. */
  #file(path: string): Inode {
    const { ino } = this.#ns.walk(path, false);
    if (!ino) throw new FractosError('ENOENT', `no file '${path}'`);
    if (isDir(ino)) throw new FractosError('EISDIR', `'${path}' is a directory`);
    if (!isReg(ino)) throw new FractosError('EINVAL', `'${path}' is not a regular file`);
    return ino;
  }

  /** The file at `path` to open, created (with its parents, persisted) when missing and `create`. Errors: EINVAL, ENOENT, EISDIR, ENOTDIR, ENOSPC. */
  async resolve(path: string, create: boolean): Promise<Inode> {
    if (!create) return this.#file(path);
    const { d, name, ino } = this.#ns.walk(path, true);
    if (ino) {
      if (isDir(ino)) throw new FractosError('EISDIR', `'${path}' is a directory`);
      if (!isReg(ino)) throw new FractosError('EINVAL', `'${path}' is not a regular file`);
      return ino;
    }
    const f = this.#ns.addFile(d, name);
    await this.#deps.persist();
    return f;
  }

  /** create(path): a new empty file (parents made); DoneReply on `ok` once durable. Errors: EINVAL, EEXIST, ENOSPC, ENOTDIR, ENAMETOOLONG. */
  async create(path: string, ok: number): Promise<void> {
    const { d, name, ino } = this.#ns.walk(path, true);
    if (ino) throw new FractosError('EEXIST', `'${path}' exists`);
    this.#ns.addFile(d, name);
    await this.#deps.persist();
    await this.#proc.invoke(ok, DoneReply);
  }

  /** stat(path): StatReply (size, extents, allocated bytes) on `ok`. Errors: EINVAL, ENOENT, EISDIR. */
  async stat(path: string, ok: number): Promise<void> {
    const ino = this.#file(path);
    await this.#proc.invoke(ok, StatReply, { size: ino.size, extents: ino.extents.length, allocated: allocatedOf(ino) });
  }

  /**
   * list(prefix): the paths of every regular file starting with `prefix`, sorted,
   * '\n'-separated UTF-8, written into Memory `buffer`; ListReply on `ok`. Errors: EINVAL
   * (no buffer), ERANGE (over 1 MiB, or larger than the buffer), EPERM (buffer not writable).
   */
  async list(prefix: string, buffer: number, ok: number): Promise<void> {
    if (!buffer) throw new FractosError('EINVAL', 'no buffer cap');
    const all: string[] = [];
    this.#ns.files(this.#ns.root, '', all);
    const names = all.filter((n) => n.startsWith(prefix)).sort();
    const data = Buffer.from(names.join('\n'), 'utf8');
    if (data.length > MAX_MEDIATED) throw new FractosError('ERANGE', 'listing larger than 1 MiB');
    await this.#deps.sendListing(data, buffer);
    await this.#proc.invoke(ok, ListReply, { bytes: data.length, count: names.length });
  }

  /**
   * delete(path): the entry goes (durable), the file's opens are closed (their Requests
   * revoked, DAX ones included), then, with its last link gone, its extents are freed;
   * DoneReply on `ok`. Errors: EINVAL, ENOENT, EISDIR.
   */
  async delete(path: string, ok: number): Promise<void> {
    const ino = this.#file(path);
    const { d, name } = this.#ns.walk(path, false);
    this.#ns.removeFile(d, name, ino);
    await this.#deps.persist();
    await this.#deps.closeAll(ino);
    if (ino.nlink === 0) await this.#ns.reap(ino);
    await this.#proc.invoke(ok, DoneReply);
  }

  /** truncate(path, size) in bytes: a grow allocates (zeros), a shrink as Namespace.resize. DoneReply on `ok`. Errors: EINVAL, ENOENT, EISDIR, ENOSPC. */
  async truncate(path: string, size: number, ok: number): Promise<void> {
    await this.#ns.resize(this.#file(path), size, true);
    await this.#proc.invoke(ok, DoneReply);
  }
}

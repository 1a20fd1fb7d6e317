/**
 * The FS service (DESIGN.md §5, paper §5): an extent-based file system over blockdev volumes
 * (one volume per extent), metadata on a metadata volume, mediated I/O through an LRU block
 * cache (write-through) and DAX opens that hand out the blockdev's per-extent Requests on
 * revocation trees. On-disk format and crash-safety argument: docs/storage.md.
 *
 * Metadata volume: the first volume ever created on the blockdev (volume id 1), created by
 * the FS on first start. It holds two metadata slots of META_SLOT_BYTES; a metadata image of
 * generation g goes to slot g % 2 with a crc32, written with FUA (durable when acknowledged);
 * loading keeps the valid slot with the highest generation.
 */
import { FractosError } from '../libfractos/errors.js';
import { connect, type Process } from '../libfractos/process.js';
import { adminClaim, IoPort, type VolumeAdmin } from '../blockdev-adaptor/client.js';
import { FairSlots } from '../blockdev-adaptor/fair-slots.js';
import {
  Close, Create, Delete, DoneReply, List, ListReply, Open, OpenMode, Read, Stat, StatReply, Truncate, Write,
} from './schema.js';
import { allocatedOf, BLOCK, MAX_MEDIATED, newInode, type FsCounts, type FsLog, type Inode } from './inode.js';
import { BlockCache } from './cache.js';
import { MetadataStore, type MetaImage } from './metadata.js';
import { Extents } from './extents.js';
import { checkOpenMode, Opens } from './opens.js';
import { Mediated } from './mediated.js';

export { BLOCK, MAX_MEDIATED } from './inode.js';
export { META_SLOT_BYTES } from './metadata.js';
export { STAGE_PER_HANDLE } from './mediated.js';

export interface FsOptions {
  controller: string;
  /** Bootstrap prefix of the blockdev (default `blockdev`). */
  blockdev?: string;
  /** Bootstrap prefix of this FS (default `fs`). */
  name?: string;
  /** LRU cache capacity in 4 KiB blocks (default 16384 = 64 MiB). */
  cacheBlocks?: number;
  /**
   * Delete, at start-up, every blockdev volume that is neither the metadata volume nor an
   * extent of a file (volumes leaked by a crash; default true). The FS owns its blockdev (it
   * holds the volume-administration claim): volumes a previous claim holder created are deleted too.
   */
  reclaim?: boolean;
  log?: FsLog;
}

function errOf(err: unknown): FractosError {
  return err instanceof FractosError ? err : new FractosError('EIO', err instanceof Error ? err.message : String(err));
}

function checkPath(path: string): void {
  if (!path.startsWith('/') || path.length < 2 || path.endsWith('/') || path.includes('//') || path.includes('\0')) {
    throw new FractosError('EINVAL', `bad path '${path}' (absolute, no trailing '/')`);
  }
}

export class FsService {
  readonly proc: Process;
  readonly name: string;
  readonly #opts: FsOptions;
  #port!: IoPort;
  /** The blockdev's volume administration, claimed at start (this FS is its only owner). */
  #admin!: VolumeAdmin;
  #meta!: MetadataStore;
  #nextIno = 1;
  readonly #files = new Map<string, Inode>();
  #extents!: Extents;
  #opens!: Opens;
  #mediated!: Mediated;
  readonly #cache: BlockCache;
  /** Cache hits/misses in blocks; opens closed because their client's caps were all gone. */
  readonly counts: FsCounts = { hits: 0, misses: 0, orphanedCloses: 0, reclaimedVolumes: 0 };

  private constructor(proc: Process, opts: FsOptions) {
    this.proc = proc;
    this.name = opts.name ?? 'fs';
    this.#opts = opts;
    this.#cache = new BlockCache(opts.cacheBlocks ?? 16384, this.counts);
  }

  /**
   * Connect, claim the blockdev's volume administration (`adminClaim`, retried for 30 s while
   * a previous holder's release is in flight), load or create the metadata, publish `${name}.*`.
   * Errors: EBUSY (another Process holds the blockdev's administration), ENOENT (no blockdev), ...
   */
  static async start(opts: FsOptions): Promise<FsService> {
    const proc = await connect(opts.controller, { name: opts.name ?? 'fs', memoryDescriptors: true });
    const s = new FsService(proc, opts);
    try {
      await s.#init();
    } catch (err) {
      await proc.close();
      throw err;
    }
    return s;
  }

  get files(): number {
    return this.#files.size;
  }

  /** Staging slots of mediated I/O, shared fairly between open handles (STAGE_PER_HANDLE each at most). */
  get stageSlots(): FairSlots<number> {
    return this.#mediated.slots;
  }

  /** Open handles (mediated and DAX), for tests and stats. */
  get openHandles(): number {
    return this.#opens.size;
  }

  /**
   * For tests and diagnostics: the FS's own cids of an open's Requests (mediated read/write
   * and close in `requests`, DAX revtree children in `dax`), or null when it is not open.
   */
  handleCaps(handle: number): { requests: number[]; dax: number[] } | null {
    return this.#opens.caps(handle);
  }

  async #init(): Promise<void> {
    const p = this.proc;
    const bd = this.#opts.blockdev ?? 'blockdev';
    this.#admin = await adminClaim(p, bd, 30_000);
    this.#port = new IoPort(p);
    await this.#port.reserve(32);
    this.#meta = await MetadataStore.create(p, this.#port, () => this.#image());
    this.#mediated = await Mediated.create(p, this.#port, {
      volume: (id) => this.#extents.volume(id),
      cache: this.#cache,
      ensureAllocated: (ino, end) => this.#extents.ensureAllocated(ino, end),
      persist: () => this.#meta.persist(),
      isCurrent: (ino) => this.#files.get(ino.path) === ino,
    });
    this.#extents = new Extents(p, this.#admin, this.counts, this.#opts.log, {
      persist: () => this.#meta.persist(),
      pathExists: (path) => this.#files.has(path),
      revokeDax: (ino, volumes) => this.#opens.revokeDax(ino, volumes),
    });
    this.#opens = new Opens(p, this.counts, this.#opts.log, {
      volume: (id) => this.#extents.volume(id),
      invalidate: (ino) => this.#cache.invalidate(ino.id, 0),
    });
    await this.#loadMeta();
    if (this.#opts.reclaim !== false) await this.#extents.reclaim(this.#meta.volume);
    p.serve(Create, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#create(imms.path, caps.onSuccess)));
    p.serve(Open, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#open(imms.path, imms.mode, imms.dax !== 0, imms.create !== 0, caps.onSuccess)));
    p.serve(Close, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#opens.close(imms.handle, caps.onSuccess)));
    p.serve(Stat, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#stat(imms.path, caps.onSuccess)));
    p.serve(List, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#list(imms.path, caps.buffer, caps.onSuccess)));
    p.serve(Delete, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#delete(imms.path, caps.onSuccess)));
    p.serve(Truncate, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#truncate(imms.path, imms.size, caps.onSuccess)));
    p.serve(Read, ({ imms, caps }, inv) =>
      this.#ctl(caps.onError, () => this.#mediated.read(this.#opens.get(imms.handle, OpenMode.READ), imms.offset, imms.length, caps.buffer, caps.onSuccess, inv.memory(Read.slot('buffer')))),
    );
    p.serve(Write, ({ imms, caps }, inv) =>
      this.#ctl(caps.onError, () => this.#mediated.write(this.#opens.get(imms.handle, OpenMode.WRITE), imms.offset, imms.length, caps.buffer, caps.onSuccess, inv.memory(Write.slot('buffer')))),
    );
    p.on('handlerError', (err: Error) => this.#opts.log?.warn({ err: err.message }, 'handler error'));
    for (const [op, schema] of [['create', Create], ['open', Open], ['stat', Stat], ['list', List], ['delete', Delete], ['truncate', Truncate]] as const) {
      await p.kvPut(`${this.name}.${op}`, await p.requestCreate(schema.tag));
    }
  }

  async close(): Promise<void> {
    await this.proc.close();
  }

  async #ctl(fail: number, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      const e = errOf(err);
      await this.proc.replyError(fail, e.code, e.message);
    }
  }

  // -----------------------------------------------------------------------------------
  // Metadata

  async #loadMeta(): Promise<void> {
    const m = await this.#meta.load(this.#admin);
    if (!m) return;
    this.#nextIno = m.nextIno;
    for (const f of m.files) {
      const ino = newInode(f.id, f.path, f.size, f.extents.map(([volume, fileOffset, length]) => ({ volume, fileOffset, length })));
      this.#files.set(f.path, ino);
      await this.#extents.adopt(ino);
    }
  }

  /** The namespace as the metadata image persists it. */
  #image(): MetaImage {
    const files = [...this.#files.values()].map((f) => ({ id: f.id, path: f.path, size: f.size, extents: f.extents.map((x): [number, number, number] => [x.volume, x.fileOffset, x.length]) }));
    return { nextIno: this.#nextIno, files };
  }

  // -----------------------------------------------------------------------------------
  // Control operations

  #lookup(path: string): Inode {
    checkPath(path);
    const ino = this.#files.get(path);
    if (!ino) throw new FractosError('ENOENT', `no file '${path}'`);
    return ino;
  }

  #newInode(path: string): Inode {
    checkPath(path);
    if (this.#files.has(path)) throw new FractosError('EEXIST', `'${path}' exists`);
    const ino = newInode(this.#nextIno++, path);
    this.#files.set(path, ino);
    return ino;
  }

  async #create(path: string, ok: number): Promise<void> {
    this.#newInode(path);
    await this.#meta.persist();
    await this.proc.invoke(ok, DoneReply);
  }

  async #open(path: string, mode: number, dax: boolean, create: boolean, ok: number): Promise<void> {
    checkOpenMode(mode);
    checkPath(path);
    let ino = this.#files.get(path);
    if (!ino) {
      if (!create) throw new FractosError('ENOENT', `no file '${path}'`);
      ino = this.#newInode(path);
      await this.#meta.persist();
    }
    await this.#opens.open(ino, mode, dax, ok);
  }

  async #stat(path: string, ok: number): Promise<void> {
    const ino = this.#lookup(path);
    await this.proc.invoke(ok, StatReply, { size: ino.size, extents: ino.extents.length, allocated: allocatedOf(ino) });
  }

  async #list(prefix: string, buffer: number, ok: number): Promise<void> {
    if (!buffer) throw new FractosError('EINVAL', 'no buffer cap');
    const names = [...this.#files.keys()].filter((n) => n.startsWith(prefix)).sort();
    const data = Buffer.from(names.join('\n'), 'utf8');
    if (data.length > MAX_MEDIATED) throw new FractosError('ERANGE', 'listing larger than 1 MiB');
    await this.#mediated.sendListing(data, buffer);
    await this.proc.invoke(ok, ListReply, { bytes: data.length, count: names.length });
  }

  async #delete(path: string, ok: number): Promise<void> {
    const ino = this.#lookup(path);
    this.#files.delete(path);
    await this.#meta.persist();
    await this.#opens.closeAll(ino);
    this.#cache.invalidate(ino.id, 0);
    await this.#extents.free(ino, ino.extents);
    await this.proc.invoke(ok, DoneReply);
  }

  async #truncate(path: string, size: number, ok: number): Promise<void> {
    const ino = this.#lookup(path);
    if (size >= ino.size) {
      await this.#extents.ensureAllocated(ino, size);
      ino.size = size;
      await this.#meta.persist();
    } else {
      const old = ino.size;
      const keep = Math.ceil(size / BLOCK) * BLOCK;
      const gone = ino.extents.filter((x) => x.fileOffset >= keep);
      ino.extents = ino.extents.filter((x) => x.fileOffset < keep);
      ino.size = size;
      this.#cache.invalidate(ino.id, Math.floor(size / BLOCK));
      // Bytes past the size are zero on the device (new volumes are zeroed; a shrink zeroes
      // what it cuts off the kept extents), so a later grow exposes zeros, never old data.
      // Durable (FUA) before the metadata: a crash never leaves old bytes past a persisted size.
      await this.#mediated.zeroRange(ino, size, Math.min(Math.ceil(old / BLOCK) * BLOCK, allocatedOf(ino)));
      await this.#meta.persist();
      if (gone.length) await this.#extents.free(ino, gone);
    }
    await this.proc.invoke(ok, DoneReply);
  }

}


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
import type { MemoryStat } from '../libfractos/process.js';
import type { MemoryDescriptor } from '../libfractos/schema.js';
import { connect, type Process, type SharedRegion } from '../libfractos/process.js';
import { Perm } from '../libfractos/protocol.js';
import { shmOpen } from '../native/shm/index.js';
import { adminClaim, IoPort, type VolumeAdmin } from '../blockdev-adaptor/client.js';
import { WriteFlags } from '../blockdev-adaptor/schema.js';
import { FairSlots } from '../blockdev-adaptor/fair-slots.js';
import {
  Close, Create, Delete, DoneReply, IoReply, List, ListReply, Open, OpenMode, Read, Stat, StatReply, Truncate, Write,
} from './schema.js';
import { allocatedOf, BLOCK, MAX_MEDIATED, newInode, type FsCounts, type FsLog, type Inode } from './inode.js';
import { BlockCache } from './cache.js';
import { MetadataStore, type MetaImage } from './metadata.js';
import { Extents } from './extents.js';
import { checkOpenMode, Opens } from './opens.js';

export { BLOCK, MAX_MEDIATED } from './inode.js';
export { META_SLOT_BYTES } from './metadata.js';

/** Staging slots: aligned copies of a mediated op's range (MAX_MEDIATED + 2 blocks each). */
const STAGE_SLOTS = 16;
/**
 * Most staging slots one open handle's mediated I/O holds at once (FairSlots; `list` and
 * truncate's zeroing have a key each): a client whose Memory never answers a memory_copy
 * stalls at most this many, the other opens keep the rest.
 */
export const STAGE_PER_HANDLE = 4;
/** FairSlots keys of the FS's own uses of staging slots (open handles are positive). */
const STAGE_LIST = -1;
const STAGE_ZERO = -2;
const STAGE_BYTES = MAX_MEDIATED + 2 * BLOCK;

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
  #stage!: SharedRegion;
  readonly #stageCids: number[] = [];
  /** Staging slots, shared fairly between open handles (STAGE_PER_HANDLE each at most). */
  readonly stageSlots = new FairSlots<number>(STAGE_SLOTS, STAGE_PER_HANDLE);
  readonly #maps = new Map<string, Uint8Array>();
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
    this.#stage = p.allocShared(STAGE_SLOTS * STAGE_BYTES);
    for (let i = 0; i < STAGE_SLOTS; i++) {
      this.#stageCids.push(await p.memoryCreate(this.#stage, Perm.RW, i * STAGE_BYTES, STAGE_BYTES));
    }
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
      this.#ctl(caps.onError, () => this.#read(imms.handle, imms.offset, imms.length, caps.buffer, caps.onSuccess, inv.memory(Read.slot('buffer')))),
    );
    p.serve(Write, ({ imms, caps }, inv) =>
      this.#ctl(caps.onError, () => this.#write(imms.handle, imms.offset, imms.length, caps.buffer, caps.onSuccess, inv.memory(Write.slot('buffer')))),
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
    if (data.length > 0) {
      const st = await this.proc.memoryStat(buffer);
      if (!(st.perms & Perm.WRITE)) throw new FractosError('EPERM', 'buffer not writable');
      if (st.size < data.length) throw new FractosError('ERANGE', `listing of ${data.length} bytes does not fit the buffer of ${st.size}`);
      const slot = await this.stageSlots.acquireAsync(STAGE_LIST);
      try {
        this.#stageBytes(slot).set(data, 0);
        await this.#toClient(slot, 0, data.length, buffer, st);
      } finally {
        this.stageSlots.release(STAGE_LIST, slot);
      }
    }
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
      await this.#zeroTail(ino, size, Math.min(Math.ceil(old / BLOCK) * BLOCK, allocatedOf(ino)));
      await this.#meta.persist();
      if (gone.length) await this.#extents.free(ino, gone);
    }
    await this.proc.invoke(ok, DoneReply);
  }

  /** Zero file range [from, end) on the device (FUA), keeping the bytes before `from` in its block. */
  async #zeroTail(ino: Inode, from: number, end: number): Promise<void> {
    let a = Math.floor(from / BLOCK) * BLOCK;
    if (a >= end) return;
    const slot = await this.stageSlots.acquireAsync(STAGE_ZERO);
    try {
      const stage = this.#stageBytes(slot);
      if (from !== a) await this.#devRange(ino, a, a + BLOCK, slot, false); // head block's kept bytes
      stage.fill(0, from - a, MAX_MEDIATED);
      while (a < end) {
        const b = Math.min(end, a + MAX_MEDIATED);
        await this.#devRange(ino, a, b, slot, true);
        if (a === Math.floor(from / BLOCK) * BLOCK) stage.fill(0, 0, BLOCK);
        a = b;
      }
    } finally {
      this.stageSlots.release(STAGE_ZERO, slot);
    }
  }

  // -----------------------------------------------------------------------------------
  // Mediated I/O


  #stageBytes(slot: number): Buffer {
    const b = this.#stage.bytes;
    return Buffer.from(b.buffer, b.byteOffset + slot * STAGE_BYTES, STAGE_BYTES);
  }

  /** A mapping of a client's shared Memory on this host, or null. */
  #clientView(st: MemoryStat, length: number): Uint8Array | null {
    if (!st.local || st.backing !== 'shared' || !st.region) return null;
    let m = this.#maps.get(st.region);
    if (!m) {
      try {
        m = new Uint8Array(shmOpen(st.region));
      } catch {
        return null;
      }
      if (this.#maps.size >= 256) this.#maps.delete(this.#maps.keys().next().value!);
      this.#maps.set(st.region, m);
    }
    if (st.regionOffset + length > m.length) {
      this.#maps.delete(st.region);
      return null;
    }
    return m.subarray(st.regionOffset, st.regionOffset + length);
  }

  async #toClient(slot: number, off: number, n: number, buffer: number, st: MemoryStat): Promise<void> {
    const view = this.#clientView(st, n);
    if (view) {
      view.set(this.#stageBytes(slot).subarray(off, off + n));
      return;
    }
    const src = await this.proc.memoryDiminish(this.#stageCids[slot]!, off, n);
    try {
      await this.proc.memoryCopy(src, buffer);
    } finally {
      this.proc.capDrop(src).catch(() => {});
    }
  }

  async #fromClient(slot: number, off: number, n: number, buffer: number, st: MemoryStat): Promise<void> {
    const view = this.#clientView(st, n);
    if (view) {
      this.#stageBytes(slot).set(view, off);
      return;
    }
    const src = st.size > n ? await this.proc.memoryDiminish(buffer, 0, n) : buffer;
    const dst = await this.proc.memoryDiminish(this.#stageCids[slot]!, off, n);
    try {
      await this.proc.memoryCopy(src, dst);
    } finally {
      this.proc.capDrop(...(src !== buffer ? [src, dst] : [dst])).catch(() => {});
    }
  }

  /** Device I/O of file range [a, b) (block-aligned, allocated) to/from stage slot offset 0. */
  async #devRange(ino: Inode, a: number, b: number, slot: number, write: boolean, stageOff = 0): Promise<void> {
    const ios: Promise<unknown>[] = [];
    const drops: number[] = [];
    for (const x of ino.extents) {
      const s = Math.max(a, x.fileOffset);
      const e = Math.min(b, x.fileOffset + x.length);
      if (s >= e) continue;
      const v = this.#extents.volume(x.volume);
      if (!v) throw new FractosError('EIO', `volume ${x.volume} of '${ino.path}' not open`);
      let buf = this.#stageCids[slot]!;
      if (s - a + stageOff !== 0) {
        buf = await this.proc.memoryDiminish(buf, s - a + stageOff, e - s);
        drops.push(buf);
      }
      ios.push(this.#port.ioAsync(write ? v.write : v.read, write, s - x.fileOffset, e - s, buf, write ? WriteFlags.FUA : 0));
    }
    try {
      await Promise.all(ios);
    } finally {
      if (drops.length) this.proc.capDrop(...drops).catch(() => {});
    }
  }

  /** Fill stage [0, b - a) with file range [a, b): from the cache when every block is there, else from the device. */
  async #fill(ino: Inode, a: number, b: number, slot: number): Promise<void> {
    const stage = this.#stageBytes(slot);
    const nb = (b - a) / BLOCK;
    const first = a / BLOCK;
    if (this.#cache.readRun(ino.id, first, nb, stage)) return;
    const gen = ino.wgen;
    const clean = ino.writing === 0;
    await this.#devRange(ino, a, b, slot, false);
    if (clean && ino.writing === 0 && ino.wgen === gen && this.#files.get(ino.path) === ino) {
      for (let i = 0; i < nb; i++) this.#cache.put(ino.id, first + i, stage.subarray(i * BLOCK, (i + 1) * BLOCK));
    }
  }

  /** `desc`: the buffer's descriptor from the delivery (local Memory), else a memory_stat is made. */
  async #read(handle: number, offset: number, length: number, buffer: number, ok: number, desc?: MemoryDescriptor): Promise<void> {
    const ino = this.#opens.get(handle, OpenMode.READ).ino;
    if (!buffer) throw new FractosError('EINVAL', 'no buffer cap');
    if (length > MAX_MEDIATED) throw new FractosError('EINVAL', `length ${length} > ${MAX_MEDIATED}`);
    const n = Math.max(0, Math.min(length, ino.size - offset));
    if (n > 0) {
      const st = desc ?? (await this.proc.memoryStat(buffer));
      if (!(st.perms & Perm.WRITE)) throw new FractosError('EPERM', 'buffer not writable');
      if (st.size < n) throw new FractosError('ERANGE', `buffer of ${st.size} bytes < ${n}`);
      const a = Math.floor(offset / BLOCK) * BLOCK;
      const b = Math.ceil((offset + n) / BLOCK) * BLOCK;
      const slot = await this.stageSlots.acquireAsync(handle);
      try {
        await this.#fill(ino, a, b, slot);
        await this.#toClient(slot, offset - a, n, buffer, st);
      } finally {
        this.stageSlots.release(handle, slot);
      }
    }
    await this.proc.invoke(ok, IoReply, { bytes: n });
  }

  async #write(handle: number, offset: number, length: number, buffer: number, ok: number, desc?: MemoryDescriptor): Promise<void> {
    const ino = this.#opens.get(handle, OpenMode.WRITE).ino;
    if (!buffer) throw new FractosError('EINVAL', 'no buffer cap');
    if (length === 0 || length > MAX_MEDIATED) throw new FractosError('EINVAL', `length ${length} not in (0, ${MAX_MEDIATED}]`);
    const st = desc ?? (await this.proc.memoryStat(buffer));
    if (!(st.perms & Perm.READ)) throw new FractosError('EPERM', 'buffer not readable');
    if (st.size < length) throw new FractosError('ERANGE', `buffer of ${st.size} bytes < ${length}`);
    const end = offset + length;
    await this.#extents.ensureAllocated(ino, end);
    const a = Math.floor(offset / BLOCK) * BLOCK;
    const b = Math.ceil(end / BLOCK) * BLOCK;
    // Block-range lock: wait for overlapping writes, then hold [a, b) until written back.
    const busy = (ino.busy ??= []);
    for (let o = busy.find((x) => x.a < b && a < x.b); o; o = busy.find((x) => x.a < b && a < x.b)) await o.done;
    let unlock!: () => void;
    const lock = { a, b, done: new Promise<void>((r) => (unlock = r)) };
    busy.push(lock);
    let slot: number;
    try {
      slot = await this.stageSlots.acquireAsync(handle);
    } catch (err) {
      busy.splice(busy.indexOf(lock), 1);
      unlock();
      throw err;
    }
    ino.writing++;
    ino.wgen++;
    try {
      const stage = this.#stageBytes(slot);
      // Read-modify-write of partial head/tail blocks (inside the old size; zeros past it).
      if (offset !== a) await this.#partial(ino, a, slot, 0);
      if (end !== b && (b - BLOCK !== a || offset === a)) await this.#partial(ino, b - BLOCK, slot, b - BLOCK - a);
      await this.#fromClient(slot, offset - a, length, buffer, st);
      await this.#devRange(ino, a, b, slot, true);
      const first = a / BLOCK;
      for (let i = 0; i < (b - a) / BLOCK; i++) this.#cache.put(ino.id, first + i, stage.subarray(i * BLOCK, (i + 1) * BLOCK));
      if (end > ino.size) {
        ino.size = end;
        await this.#meta.persist();
      }
    } finally {
      ino.writing--;
      this.stageSlots.release(handle, slot);
      busy.splice(busy.indexOf(lock), 1);
      unlock();
    }
    await this.proc.invoke(ok, IoReply, { bytes: length });
  }

  /** Put file block at `blockOff` into stage at `at` (cache, device, or zeros beyond the size). */
  async #partial(ino: Inode, blockOff: number, slot: number, at: number): Promise<void> {
    const stage = this.#stageBytes(slot);
    if (blockOff >= ino.size) {
      stage.fill(0, at, at + BLOCK);
      return;
    }
    const c = this.#cache.get(ino.id, blockOff / BLOCK);
    if (c) {
      stage.set(c, at);
      return;
    }
    await this.#devRange(ino, blockOff, blockOff + BLOCK, slot, false, at);
  }
}


/**
 * The FS service (DESIGN.md §5, paper §5): an extent-based file system over blockdev volumes
 * (one volume per extent), metadata on a metadata volume, mediated I/O through an LRU block
 * cache (write-through) and DAX opens that hand out the blockdev's per-extent Requests on
 * revocation trees. On-disk format and crash-safety argument: docs/storage.md.
 *
 * This file is start-up, the Request table and dispatch only; each concern has its module,
 * with its invariants in its header, and reaches the others only through the narrow
 * interface it declares (`*Deps`), wired here:
 *   namespace.ts  path table; create/stat/list/delete/truncate, open's path resolution
 *   metadata.ts   two-slot copy-on-write metadata image, encoding, group commit
 *   extents.ts    volumes behind extents: allocation, freeing, reclaim of leaked ones
 *   opens.ts      open handles, DAX grants on revocation trees, client-gone monitors
 *   mediated.ts   mediated read/write: block-range lock, cache fill, device I/O
 *   staging.ts    staging slots (fair per open) and copies to/from client Memory
 *   cache.ts      LRU block cache
 *   inode.ts      the file record they share
 *
 * Request table (schema.ts): fs.create/open/stat/list/delete/truncate are published under
 * `${name}.*`; fs.read/fs.write/fs.close are created per open (handle preset). A handler's
 * error is answered on its `onError` cap with the FractosError's code (EIO for others).
 */
import { FractosError } from '../libfractos/errors.js';
import { connect, type Process } from '../libfractos/process.js';
import { adminClaim, IoPort, type VolumeAdmin } from '../blockdev-adaptor/client.js';
import type { FairSlots } from '../blockdev-adaptor/fair-slots.js';
import { Close, Create, Delete, List, Open, OpenMode, Read, Stat, Truncate, Write } from './schema.js';
import type { FsCounts, FsLog } from './inode.js';
import { BlockCache } from './cache.js';
import { MetadataStore } from './metadata.js';
import { Namespace } from './namespace.js';
import { Extents } from './extents.js';
import { checkOpenMode, Opens } from './opens.js';
import { Mediated } from './mediated.js';
import { Staging } from './staging.js';

export { BLOCK, MAX_MEDIATED } from './inode.js';
export { META_SLOT_BYTES } from './metadata.js';
export { STAGE_MAX_STALLING, STAGE_PER_HANDLE } from './staging.js';

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
  /** The blockdev's admin secret (admin-secret.ts), proved in admin_claim; needed when the blockdev has one (else EPERM). */
  adminSecret?: Uint8Array;
  /** Aborts the start (its wait for admin_claim included): `start` then closes what it opened and rejects. */
  signal?: AbortSignal;
  log?: FsLog;
}

function errOf(err: unknown): FractosError {
  return err instanceof FractosError ? err : new FractosError('EIO', err instanceof Error ? err.message : String(err));
}

export class FsService {
  readonly proc: Process;
  readonly name: string;
  readonly #opts: FsOptions;
  #port!: IoPort;
  /** The blockdev's volume administration, claimed at start (this FS is its only owner). */
  #admin!: VolumeAdmin;
  #meta!: MetadataStore;
  #ns!: Namespace;
  #extents!: Extents;
  #opens!: Opens;
  #staging!: Staging;
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
   * Errors: EBUSY (another Process holds the blockdev's administration), EPERM (the blockdev
   * has an admin secret and `adminSecret` is missing or another), ENOENT (no blockdev),
   * EDISCONNECTED (`signal` aborted it), ...
   */
  static async start(opts: FsOptions): Promise<FsService> {
    const proc = await connect(opts.controller, { name: opts.name ?? 'fs', memoryDescriptors: true });
    const s = new FsService(proc, opts);
    // An abort closes the channel: whatever #init waits for (admin_claim, the blockdev) fails.
    const abort = (): void => void proc.close().catch(() => {});
    opts.signal?.addEventListener('abort', abort, { once: true });
    try {
      if (opts.signal?.aborted) throw new FractosError('EDISCONNECTED', 'start aborted');
      await s.#init();
    } catch (err) {
      await proc.close();
      throw err;
    } finally {
      opts.signal?.removeEventListener('abort', abort);
    }
    return s;
  }

  get files(): number {
    return this.#ns.size;
  }

  /** Staging slots of mediated I/O, shared fairly between open handles (STAGE_PER_HANDLE each at most). */
  get stageSlots(): FairSlots<number> {
    return this.#staging.slots;
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
    this.#admin = await adminClaim(p, bd, 30_000, this.#opts.adminSecret);
    this.#port = new IoPort(p);
    await this.#port.reserve(32);
    this.#meta = await MetadataStore.create(p, this.#port, () => this.#ns.image());
    this.#staging = await Staging.create(p);
    this.#mediated = new Mediated(p, this.#port, this.#staging, {
      volume: (id) => this.#extents.volume(id),
      cache: this.#cache,
      ensureAllocated: (ino, end) => this.#extents.ensureAllocated(ino, end),
      persist: () => this.#meta.persist(),
      isCurrent: (ino) => this.#ns.isCurrent(ino),
    });
    this.#extents = new Extents(p, this.#admin, this.counts, this.#opts.log, {
      persist: () => this.#meta.persist(),
      isCurrent: (ino) => this.#ns.isCurrent(ino),
      revokeDax: (ino, volumes) => this.#opens.revokeDax(ino, volumes),
    });
    this.#opens = new Opens(p, this.counts, this.#opts.log, {
      volume: (id) => this.#extents.volume(id),
      invalidate: (ino) => this.#cache.invalidate(ino.id, 0),
    });
    this.#ns = new Namespace(p, {
      persist: () => this.#meta.persist(),
      closeAll: (ino) => this.#opens.closeAll(ino),
      invalidate: (ino, fromBlock) => this.#cache.invalidate(ino.id, fromBlock),
      ensureAllocated: (ino, end) => this.#extents.ensureAllocated(ino, end),
      free: (ino, gone) => this.#extents.free(ino, gone),
      zeroRange: (ino, from, end) => this.#mediated.zeroRange(ino, from, end),
      sendListing: (data, buffer) => this.#staging.sendListing(data, buffer),
    });
    const image = await this.#meta.load(this.#admin);
    if (image) for (const ino of this.#ns.restore(image)) await this.#extents.adopt(ino);
    if (this.#opts.reclaim !== false) await this.#extents.reclaim(this.#meta.volume);
    p.serve(Create, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#ns.create(imms.path, caps.onSuccess)));
    p.serve(Open, ({ imms, caps }) =>
      this.#ctl(caps.onError, async () => {
        checkOpenMode(imms.mode);
        const ino = await this.#ns.resolve(imms.path, imms.create !== 0);
        await this.#opens.open(ino, imms.mode, imms.dax !== 0, caps.onSuccess);
      }),
    );
    p.serve(Close, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#opens.close(imms.handle, caps.onSuccess)));
    p.serve(Stat, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#ns.stat(imms.path, caps.onSuccess)));
    p.serve(List, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#ns.list(imms.path, caps.buffer, caps.onSuccess)));
    p.serve(Delete, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#ns.delete(imms.path, caps.onSuccess)));
    p.serve(Truncate, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#ns.truncate(imms.path, imms.size, caps.onSuccess)));
    p.serve(Read, ({ imms, caps }, inv) =>
      this.#ctl(caps.onError, () => this.#mediated.read(this.#opens.get(imms.handle, OpenMode.READ), imms.offset, imms.length, caps.buffer, caps.onSuccess, inv.memory(Read.slot('buffer')))),
    );
    p.serve(Write, ({ imms, caps }, inv) =>
      this.#ctl(caps.onError, () => this.#mediated.write(this.#opens.get(imms.handle, OpenMode.WRITE), imms.offset, imms.length, caps.buffer, caps.onSuccess, inv.memory(Write.slot('buffer')))),
    );
    p.on('handlerError', (err: Error) => this.#opts.log?.warn({ err: err.message }, 'handler error'));
    for (const [op, schema] of [['create', Create], ['open', Open], ['stat', Stat], ['list', List], ['delete', Delete], ['truncate', Truncate]] as const) {
      await p.kvPut(`${this.name}.${op}`, await p.requestCreate(schema.tag), { republish: true });
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
}


/**
 * The FS service (DESIGN.md §5, paper §5): an extent-based file system over blockdev volumes
 * (one volume per extent), metadata on a metadata volume, mediated I/O through an LRU block
 * cache (write-through) and DAX opens that hand out the blockdev's per-extent Requests on
 * revocation trees. On-disk format and crash-safety argument: docs/storage.md.
 *
 * This file is start-up, the Request table and dispatch only; each concern has its module,
 * with its invariants in its header, and reaches the others only through the narrow
 * interface it declares (`*Deps`), wired here:
 *   namespace.ts  inodes and directories: entries, links, symlinks, rename, unlink of open files, truncate
 *   attrs.ts      attributes, times, permission checks (caller's uid/gid), setattr
 *   paths.ts      the path-based API (create/open/stat/list/delete/truncate) over the namespace
 *   metadata.ts   two-slot copy-on-write metadata image, encoding, group commit
 *   extents.ts    volumes behind extents: allocation, freeing, reclaim of leaked ones
 *   opens.ts      open handles, DAX grants on revocation trees, client-gone monitors
 *   mediated.ts   mediated read/write: block-range lock, cache fill, device I/O
 *   staging.ts    staging slots (fair per open) and copies to/from client Memory
 *   cache.ts      LRU block cache
 *   inode.ts      the file record they share
 *
 * Request table: the path-based fs.create/open/stat/list/delete/truncate (schema.ts) and the
 * inode-based NS_OPS (contract.ts) are published under `${name}.*`; fs.read/fs.write/fs.close
 * and fs.daxmap are created per open (handle preset). A handler's error is answered on its
 * `onError` cap with the FractosError's code (EIO for others).
 */
import { FractosError } from '../libfractos/errors.js';
import { connect, type Process } from '../libfractos/process.js';
import { adminClaim, IoPort, type VolumeAdmin } from '../blockdev-adaptor/client.js';
import type { FairSlots } from '../blockdev-adaptor/fair-slots.js';
import { Close, Create, Delete, DoneReply, List, Open, OpenMode, Read, Stat, Truncate, Write } from './schema.js';
import {
  AttrReply, CreateIno, DaxMap, DIRENT_BYTES, EntryReply, Fsync, GetAttr, Link, LinkReply, Lookup, Mkdir, Mknod, NAME_MAX, NS_OPS, OpenFlags, OpenIno, Readdir,
  ReaddirReply, Readlink, Rename, RenameReply, Rmdir, SetAttr, SetAttrReq, Statfs, StatfsReply, Symlink, Unlink,
} from './contract.js';
import { allocatedOf, BLOCK, type FsCounts, type FsLog, type Inode } from './inode.js';
import { access, attrOf, isDir, prefixedAttrOf, isReg, planSetattr, R, W, type Who } from './attrs.js';
import { Paths } from './paths.js';
import { BlockCache } from './cache.js';
import { MetadataStore } from './metadata.js';
import { Namespace } from './namespace.js';
import { Extents } from './extents.js';
import { checkOpenMode, Opens, type PreparedOpen } from './opens.js';
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
  /** Cap of one extent growth step beyond what a write needs, bytes (default 1 GiB: doubling up to it; tests set 1 MiB to fragment files). */
  maxExtentGrowth?: number;
  /** Device capacity in bytes that statfs reports (the blockdev does not tell); 0 (default): statfs reports the allocated bytes as the total, none free. */
  capacity?: number;
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
  #paths!: Paths;
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

  /** Pool volumes (small files' extents) and their free bytes, for tests and stats. */
  get pools(): { pools: number; free: number } {
    return this.#extents.pooled;
  }

  /** Metadata writes so far: whole images (checkpoints) and log records, and how many of them were FUA (`flushes`), for tests and stats. */
  get metaWrites(): { checkpoints: number; records: number; flushes: number } {
    return { ...this.#meta.counts };
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
    this.#meta = await MetadataStore.create(p, this.#port, { image: () => this.#ns.image(), delta: () => this.#ns.delta() });
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
      hasDax: (ino) => this.#opens.hasDax(ino),
      zero: (v, off, len) => this.#mediated.zeroVolume(v, off, len),
      copyToVolume: (ino, len, v, swap) => this.#mediated.copyToVolume(ino, len, v, swap),
    }, this.#opts.maxExtentGrowth);
    this.#opens = new Opens(p, this.counts, this.#opts.log, {
      volume: (id) => this.#extents.volume(id),
      invalidate: (ino) => this.#cache.invalidate(ino.id, 0),
      released: (ino) => this.#ns.released(ino).catch((err: Error) => this.#opts.log?.warn({ err: err.message }, 'freeing an unlinked file failed')),
    });
    this.#ns = new Namespace({
      persist: () => this.#meta.persist(),
      openCount: (ino) => this.#opens.count(ino),
      invalidate: (ino, fromBlock) => this.#cache.invalidate(ino.id, fromBlock),
      ensureAllocated: (ino, end) => this.#extents.ensureAllocated(ino, end),
      free: (ino, gone) => this.#extents.free(ino, gone),
      zeroRange: (ino, from, end) => this.#mediated.zeroRange(ino, from, end),
    });
    this.#paths = new Paths(p, this.#ns, {
      persist: () => this.#meta.persist(),
      closeAll: (ino) => this.#opens.closeAll(ino),
      sendListing: (data, buffer) => this.#staging.sendListing(data, buffer),
    });
    const loaded = await this.#meta.load(this.#admin);
    if (loaded) {
      for (const ino of this.#ns.restore(loaded.image, loaded.deltas)) await this.#extents.adopt(ino);
      if (loaded.image.files) this.#meta.checkpointNext(); // a converted version-1 image
    }
    if (this.#opts.reclaim !== false) await this.#extents.reclaim(this.#meta.volume);
    p.serve(Create, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#paths.create(imms.path, caps.onSuccess)));
    p.serve(Open, ({ imms, caps }) =>
      this.#ctl(caps.onError, async () => {
        checkOpenMode(imms.mode);
        await this.#open(await this.#paths.resolve(imms.path, imms.create !== 0), imms.mode, 0, imms.dax !== 0, caps.onSuccess);
      }),
    );
    p.serve(Close, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#opens.close(imms.handle, caps.onSuccess)));
    p.serve(Stat, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#paths.stat(imms.path, caps.onSuccess)));
    p.serve(List, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#paths.list(imms.path, caps.buffer, caps.onSuccess)));
    p.serve(Delete, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#paths.delete(imms.path, caps.onSuccess)));
    p.serve(Truncate, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#paths.truncate(imms.path, imms.size, caps.onSuccess)));
    p.serve(Read, ({ imms, caps }, inv) =>
      this.#ctl(caps.onError, () => this.#mediated.read(this.#opens.get(imms.handle, OpenMode.READ), imms.offset, imms.length, caps.buffer, caps.onSuccess, inv.memory(Read.slot('buffer')))),
    );
    p.serve(Write, ({ imms, caps }, inv) =>
      this.#ctl(caps.onError, () => this.#mediated.write(this.#opens.get(imms.handle, OpenMode.WRITE), imms.offset, imms.length, caps.buffer, caps.onSuccess, inv.memory(Write.slot('buffer')))),
    );
    p.serve(DaxMap, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#opens.daxMap(imms.handle, imms.first, caps.onSuccess)));
    this.#serveInodes();
    p.on('handlerError', (err: Error) => this.#opts.log?.warn({ err: err.message }, 'handler error'));
    for (const [op, schema] of [['create', Create], ['open', Open], ['stat', Stat], ['list', List], ['delete', Delete], ['truncate', Truncate], ...Object.entries(NS_OPS)] as const) {
      await p.kvPut(`${this.name}.${op}`, await p.requestCreate(schema.tag), { republish: true });
    }
  }

  /** Answer `ino`'s attributes on `ok`. */
  #attr(ok: number, ino: Inode): Promise<void> {
    return this.proc.invoke(ok, AttrReply, attrOf(ino));
  }

  /**
   * Make an entry in `parent` (`make` answers its inode) and answer EntryReply on `ok`: the
   * inode's and the parent's attributes as they are then (the parent is taken before the
   * change: removed since, it answers nlink 0, never an error for a change that was made).
   */
  async #entry(ok: number, parent: Inode, make: () => Promise<Inode>): Promise<void> {
    const ino = await make();
    await this.proc.invoke(ok, EntryReply, prefixedAttrOf('p', parent, attrOf(ino)));
  }

  /**
   * Open regular file `ino` for `mode` (OpenMode) with `flags` (OpenFlags.TRUNC) and answer
   * OpenReply on `ok`; a DAX open first allocates the file's holes (DAX I/O needs extents).
   * Errors: EISDIR, EINVAL (not a regular file), ENOSPC, those of Opens.open.
   */
  async #open(ino: Inode, mode: number, flags: number, dax: boolean, ok: number): Promise<void> {
    if (isDir(ino)) throw new FractosError('EISDIR', `'${ino.path}' is a directory`);
    if (!isReg(ino)) throw new FractosError('EINVAL', `'${ino.path}' is not a regular file`);
    if (flags & OpenFlags.TRUNC && ino.size > 0) await this.#ns.resize(ino, 0, false);
    if (dax) {
      // DAX hands out volumes: a pooled file is made private first, holes are allocated.
      await this.#extents.makePrivate(ino);
      if (allocatedOf(ino) < ino.size) await this.#extents.ensureAllocated(ino, ino.size, true);
    }
    await this.#opens.open(ino, mode, dax, ok);
  }

  /** The inode contract (contract.ts): one handler per NS_OPS Request. */
  #serveInodes(): void {
    const p = this.proc;
    const ns = this.#ns;
    const who = (imms: Who): Who => ({ uid: imms.uid, gid: imms.gid });
    p.serve(Lookup, ({ imms, caps }) => this.#ctl(caps.onError, () => {
      // A missing name (every create looks one up first) is answered without making an Error.
      const c = ns.find(imms.parent, imms.name, who(imms));
      return c ? this.#attr(caps.onSuccess, c) : p.replyError(caps.onError, 'ENOENT', `no '${imms.name}' in '${ns.get(imms.parent).path}'`);
    }));
    p.serve(GetAttr, ({ imms, caps }) => this.#ctl(caps.onError, () => this.#attr(caps.onSuccess, ns.get(imms.ino))));
    p.serve(SetAttrReq, ({ imms, caps }) =>
      this.#ctl(caps.onError, async () => {
        const ino = ns.get(imms.ino);
        const w = who(imms);
        const apply = planSetattr(ino, imms, w);
        if (imms.valid & SetAttr.SIZE) {
          if (isDir(ino)) throw new FractosError('EISDIR', `'${ino.path}' is a directory`);
          if (!isReg(ino)) throw new FractosError('EINVAL', `'${ino.path}' is not a regular file`);
          const viaHandle = imms.handle !== 0 && this.#opens.get(imms.handle, OpenMode.WRITE).ino === ino;
          if (!viaHandle) access(ino, w, W);
          apply();
          await ns.resize(ino, imms.size, false);
        } else {
          apply();
          await this.#meta.persist();
        }
        await this.#attr(caps.onSuccess, ino);
      }),
    );
    p.serve(Mknod, ({ imms, caps }) => this.#ctl(caps.onError, async () => this.#entry(caps.onSuccess, ns.get(imms.parent), () => ns.mknod(imms.parent, imms.name, imms.mode, imms.umask, who(imms)))));
    p.serve(Mkdir, ({ imms, caps }) => this.#ctl(caps.onError, async () => this.#entry(caps.onSuccess, ns.get(imms.parent), () => ns.mkdir(imms.parent, imms.name, imms.mode, imms.umask, who(imms)))));
    p.serve(Symlink, ({ imms, caps }) => this.#ctl(caps.onError, async () => this.#entry(caps.onSuccess, ns.get(imms.parent), () => ns.symlink(imms.parent, imms.name, imms.target, who(imms)))));
    p.serve(Readlink, ({ imms, caps }) => this.#ctl(caps.onError, () => p.invoke(caps.onSuccess, LinkReply, { target: ns.readlink(imms.ino) })));
    p.serve(Link, ({ imms, caps }) => this.#ctl(caps.onError, async () => this.#entry(caps.onSuccess, ns.get(imms.newParent), () => ns.link(imms.ino, imms.newParent, imms.newName, who(imms)))));
    p.serve(Unlink, ({ imms, caps }) => this.#ctl(caps.onError, async () => {
      const d = ns.get(imms.parent);
      await ns.unlink(imms.parent, imms.name, who(imms));
      await this.#attr(caps.onSuccess, d);
    }));
    p.serve(Rmdir, ({ imms, caps }) => this.#ctl(caps.onError, async () => {
      const d = ns.get(imms.parent);
      await ns.rmdir(imms.parent, imms.name, who(imms));
      await this.#attr(caps.onSuccess, d);
    }));
    p.serve(Rename, ({ imms, caps }) => this.#ctl(caps.onError, async () => {
      const [d, nd] = [ns.get(imms.parent), ns.get(imms.newParent)];
      await ns.rename(imms.parent, imms.name, imms.newParent, imms.newName, imms.flags, who(imms));
      await p.invoke(caps.onSuccess, RenameReply, prefixedAttrOf('n', nd, prefixedAttrOf('p', d, {})));
    }));
    p.serve(OpenIno, ({ imms, caps }) =>
      this.#ctl(caps.onError, async () => {
        checkOpenMode(imms.mode);
        const ino = ns.get(imms.ino);
        if (isReg(ino)) access(ino, who(imms), (imms.mode & OpenMode.READ ? R : 0) | (imms.mode & OpenMode.WRITE || imms.flags & OpenFlags.TRUNC ? W : 0));
        await this.#open(ino, imms.mode, imms.flags, imms.dax !== 0, caps.onSuccess);
      }),
    );
    p.serve(CreateIno, ({ imms, caps }) =>
      this.#ctl(caps.onError, async () => {
        checkOpenMode(imms.mode);
        const w = who(imms);
        let ino = ns.find(imms.parent, imms.name, w);
        let made = false;
        if (ino && imms.flags & OpenFlags.EXCL) throw new FractosError('EEXIST', `'${imms.name}' exists`);
        if (!ino) {
          if (imms.dax === 0) {
            // A new file, mediated: its open's Requests are made while the entry is made durable.
            let prepared: PreparedOpen | null = null;
            try {
              await ns.mknod(imms.parent, imms.name, imms.fileMode, imms.umask, w, async (i) => {
                prepared = await this.#opens.prepare(i, imms.mode, false);
              });
            } catch (e) {
              if (prepared) await this.#opens.abandon(prepared);
              throw e;
            }
            await this.#opens.answer(prepared!, caps.onSuccess);
            return;
          }
          ino = await ns.mknod(imms.parent, imms.name, imms.fileMode, imms.umask, w);
          made = true;
        }
        // A file this call made is opened whatever its mode says (open(2) with O_CREAT).
        if (!made && isReg(ino)) access(ino, w, (imms.mode & OpenMode.READ ? R : 0) | (imms.mode & OpenMode.WRITE || imms.flags & OpenFlags.TRUNC ? W : 0));
        await this.#open(ino, imms.mode, imms.flags, imms.dax !== 0, caps.onSuccess);
      }),
    );
    p.serve(Fsync, ({ imms, caps }) =>
      this.#ctl(caps.onError, async () => {
        ns.get(imms.ino);
        // Mediated writes are answered once on the device with their size recorded; this FUA
        // record (a device flush after it) makes the attributes durable and flushes the
        // device's cache for every write completed before it: data, metadata records and
        // DAX writes alike.
        await this.#meta.persist(true);
        await p.invoke(caps.onSuccess, DoneReply);
      }),
    );
    const dirents = Buffer.alloc(DIRENT_BYTES);
    p.serve(Readdir, ({ imms, caps }) =>
      this.#ctl(caps.onError, async () => {
        const r = ns.readdir(imms.ino, imms.cookie, imms.max, who(imms), dirents, imms.plus !== 0);
        await p.invoke(caps.onSuccess, ReaddirReply, { count: r.count, end: r.end ? 1 : 0, bytes: r.bytes, entries: dirents.subarray(0, r.bytes) });
      }),
    );
    p.serve(Statfs, ({ caps }) =>
      this.#ctl(caps.onError, async () => {
        let used = 0;
        for (const i of ns.all()) used += allocatedOf(i);
        const given = this.#opts.capacity ?? 0;
        const cap = Math.max(Number.isSafeInteger(given) ? given : 0, used);
        const free = Math.floor((cap - used) / BLOCK);
        await p.invoke(caps.onSuccess, StatfsReply, {
          bsize: BLOCK, frsize: BLOCK, blocks: Math.ceil(cap / BLOCK), bfree: free, bavail: free, files: ns.inodes, ffree: ns.inodesFree, namemax: NAME_MAX,
        });
      }),
    );
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


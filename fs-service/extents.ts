/**
 * The FS's extents: private ones are one blockdev volume each; pooled ones are block ranges
 * of pool volumes shared by small files (the blockdev's table holds 126 volumes: a volume
 * per file would cap the FS at ~125 non-empty files). Volumes are created, opened and
 * deleted through the blockdev's volume administration, which the FS claims at start-up and
 * holds alone.
 *
 * Invariants:
 * - Pools: a file whose allocation stays within SMALL_FILE, with no private extent and no DAX
 *   open, grows by pooled ranges (POOL_UNIT-rounded, extended in place when the pool range
 *   after its last one is free), zeroed (FUA) before the file uses them. A pool's free list
 *   is not persisted: at load it is the pool minus the pooled extents of the files (so a range
 *   a crash left unnamed is free again; a pool no file names is reclaimed as leaked). Pool
 *   ranges are never handed to DAX clients (a pool volume's Requests reach other files'
 *   bytes): `makePrivate` copies a file's pooled part to a volume of its own first.
 * - `makePrivate` copies under the file's block-range lock (mediated.ts `copyToVolume`), swaps
 *   the extents and persists before the lock is released, so no write lands in the old
 *   ranges after the copy and none answered is lost by a crash; the old ranges are freed after.
 * - Every volume a file's extents name is open here (`volume(id)` answers its read/write/
 *   delete Requests) from load until the extent is freed; no other volume is, except the
 *   metadata volume (metadata.ts holds that one).
 * - Allocation is serialized per file (`ino.alloc`): one volume at a time, of what is
 *   missing rounded up to MIN_EXTENT, and at least the file's allocation so far (doubling)
 *   up to `maxGrowth` (1 GiB). A new extent is durable only with the next metadata image; a crash before
 *   it leaks the volume, which `reclaim` deletes at the next start. A file whose path left
 *   the namespace while its volume was being created gets the volume freed again and ENOENT.
 * - `free` runs only after an image without the extents is durable: it first revokes every
 *   open's DAX Requests on their volumes (through `revokeDax`), then deletes the volumes; a
 *   failed delete leaks the volume (logged; reclaimed at a later start).
 */
import { FractosError } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import { volumeCreate, volumeList, volumeOpen, type VolumeAdmin, type VolumeHandle } from '../blockdev-adaptor/client.js';
import { VolumeDelete } from '../blockdev-adaptor/schema.js';
import { allocatedOf, BLOCK, serialized, type Extent, type FsCounts, type FsLog, type Inode } from './inode.js';

/** Smallest private extent, bytes. */
const MIN_EXTENT = 1 << 20;
/** Largest allocation of a file kept in pools (bytes); beyond it the file grows by private volumes. */
export const SMALL_FILE = 256 << 10;
/** Pool allocation unit, bytes. */
const POOL_UNIT = 16 << 10;
/** Bytes of one pool volume. */
const POOL_BYTES = 16 << 20;

/** A pool volume and its free ranges [offset, length], sorted, coalesced. */
interface Pool {
  v: VolumeHandle;
  free: [number, number][];
}

/** What extents need from the rest of the FS. */
export interface ExtentsDeps {
  /** Make the in-memory metadata durable (metadata.ts). */
  persist(): Promise<void>;
  /** Whether `ino` is the file at its path now: not deleted, and not replaced by a new file of the same path (namespace.ts). */
  isCurrent(ino: Inode): boolean;
  /** Revoke the DAX Requests every open of `ino` holds on these volumes (opens.ts). */
  revokeDax(ino: Inode, volumes: Set<number>): Promise<void>;
  /** Whether `ino` has a DAX open (opens.ts): it then grows by private volumes only. */
  hasDax(ino: Inode): boolean;
  /** Zero [off, off + len) of volume `v`, FUA (mediated.ts). */
  zero(v: VolumeHandle, off: number, len: number): Promise<void>;
  /** Copy file range [0, len) to volume `v` under the file's block-range lock, then run `swap` and await it before unlocking (mediated.ts). */
  copyToVolume(ino: Inode, len: number, v: VolumeHandle, swap: () => Promise<void>): Promise<void>;
}

export class Extents {
  readonly #proc: Process;
  readonly #admin: VolumeAdmin;
  readonly #counts: Pick<FsCounts, 'reclaimedVolumes'>;
  readonly #log: FsLog | undefined;
  readonly #deps: ExtentsDeps;
  readonly #vols = new Map<number, VolumeHandle>();
  readonly #pools = new Map<number, Pool>();
  #creating: Promise<void> | null = null;
  readonly #maxGrowth: number;

  /**
   * `admin`: the blockdev's volume administration, claimed by the FS. `maxGrowth`: most bytes
   * one growth step adds beyond what is needed (the doubling's cap; default 1 GiB; a small
   * value makes many small extents, as tests of fragmented files want).
   */
  constructor(proc: Process, admin: VolumeAdmin, counts: Pick<FsCounts, 'reclaimedVolumes'>, log: FsLog | undefined, deps: ExtentsDeps, maxGrowth = 1 << 30) {
    this.#proc = proc;
    this.#maxGrowth = maxGrowth;
    this.#admin = admin;
    this.#counts = counts;
    this.#log = log;
    this.#deps = deps;
  }

  /** The open volume behind an extent, or undefined. */
  volume(id: number): VolumeHandle | undefined {
    return this.#vols.get(id);
  }

  /** Pool volumes, and bytes free in them (for tests and statfs). */
  get pooled(): { pools: number; free: number } {
    let free = 0;
    for (const p of this.#pools.values()) for (const [, l] of p.free) free += l;
    return { pools: this.#pools.size, free };
  }

  /** Open the volumes of a loaded file's extents (start-up; a pool's ranges taken). Errors: what volumeOpen answers, EIO (a range taken twice). */
  async adopt(ino: Inode): Promise<void> {
    for (const x of ino.extents) {
      if (!x.pooled) {
        this.#vols.set(x.volume, await volumeOpen(this.#proc, this.#admin.open, x.volume));
        continue;
      }
      let pool = this.#pools.get(x.volume);
      if (!pool) {
        const v = await volumeOpen(this.#proc, this.#admin.open, x.volume);
        this.#vols.set(x.volume, v);
        this.#pools.set(x.volume, (pool = { v, free: [[0, v.size]] }));
      }
      if (!this.#take(pool, x.volOffset, x.length)) throw new FractosError('EIO', `pool volume ${x.volume} range ${x.volOffset}+${x.length} of '${ino.path}' is named twice`);
    }
  }

  /** Take [off, off + len) out of `pool`'s free ranges; false when it is not all free. */
  #take(pool: Pool, off: number, len: number): boolean {
    const i = pool.free.findIndex(([o, l]) => o <= off && off + len <= o + l);
    if (i < 0) return false;
    const [o, l] = pool.free[i]!;
    const parts: [number, number][] = [];
    if (off > o) parts.push([o, off - o]);
    if (off + len < o + l) parts.push([off + len, o + l - off - len]);
    pool.free.splice(i, 1, ...parts);
    return true;
  }

  /** Give [off, off + len) back to `pool` (coalesced). */
  #give(pool: Pool, off: number, len: number): void {
    const f = pool.free;
    let i = 0;
    while (i < f.length && f[i]![0] < off) i++;
    f.splice(i, 0, [off, len]);
    if (i + 1 < f.length && f[i]![0] + f[i]![1] === f[i + 1]![0]) {
      f[i]![1] += f[i + 1]![1];
      f.splice(i + 1, 1);
    }
    if (i > 0 && f[i - 1]![0] + f[i - 1]![1] === f[i]![0]) {
      f[i - 1]![1] += f[i]![1];
      f.splice(i, 1);
    }
  }

  /** `len` pool bytes: right after `after` (volume, offset) when free there, else first fit, else in a new pool. Errors: ENOSPC. */
  async #poolAlloc(len: number, after?: { volume: number; off: number }): Promise<{ pool: Pool; off: number }> {
    if (after) {
      const pool = this.#pools.get(after.volume);
      if (pool && this.#take(pool, after.off, len)) return { pool, off: after.off };
    }
    for (;;) {
      for (const pool of this.#pools.values()) {
        const r = pool.free.find(([, l]) => l >= len);
        if (r) {
          const off = r[0];
          this.#take(pool, off, len);
          return { pool, off };
        }
      }
      // One pool is created at a time: allocations that find no room meanwhile wait for it.
      this.#creating ??= volumeCreate(this.#proc, this.#admin.create, POOL_BYTES)
        .then((v) => {
          this.#vols.set(v.volume, v);
          this.#pools.set(v.volume, { v, free: [[0, v.size]] });
        })
        .finally(() => (this.#creating = null));
      await this.#creating;
    }
  }

  /**
   * Delete the volumes no file names (leaked by a crash between a volume's creation and the
   * metadata naming it, or between the metadata dropping extents and their deletion), except
   * `keep` (the metadata volume). Runs before the FS serves anything, so no allocation is in flight.
   */
  async reclaim(keep: number): Promise<void> {
    const p = this.#proc;
    const ids = await volumeList(p, this.#admin.list);
    const orphans = ids.filter((id) => id !== keep && !this.#vols.has(id)); // pools no file names included
    for (const id of orphans) {
      try {
        const v = await volumeOpen(p, this.#admin.open, id);
        await p.rpc(v.delete, VolumeDelete, {}, {}, { timeoutMs: 30_000 });
        p.capDrop(v.read, v.write, v.delete).catch(() => {});
        this.#counts.reclaimedVolumes++;
      } catch (err) {
        this.#log?.warn({ volume: id, err: (err as Error).message }, 'reclaiming a leaked volume failed');
      }
    }
    this.#log?.info({ volumes: ids.length, reclaimed: this.#counts.reclaimedVolumes }, `reclaimed ${this.#counts.reclaimedVolumes} leaked volume(s)`);
  }

  /**
   * Grow the file's extents to cover `end` bytes: pooled ranges for a small file (see the
   * invariants), else one new volume (doubling policy); `private_` forces a volume (DAX).
   * Errors: ENOSPC, ENOENT (deleted meanwhile).
   */
  ensureAllocated(ino: Inode, end: number, private_ = false): Promise<void> {
    const run = async (): Promise<void> => {
      const have = allocatedOf(ino);
      if (end <= have) return;
      const need = end - have;
      if (!private_ && end <= SMALL_FILE && ino.extents.every((x) => x.pooled) && !this.#deps.hasDax(ino)) {
        const len = Math.ceil(end / POOL_UNIT) * POOL_UNIT - have;
        const last = ino.extents[ino.extents.length - 1];
        const got = await this.#poolAlloc(len, last && { volume: last.volume, off: last.volOffset + last.length }).catch((err: FractosError) => {
          if (err.code !== 'ENOSPC') throw err;
          return null; // no room for a new pool: a volume of just what is needed (below)
        });
        if (got) return this.#pooledGrow(ino, have, len, got, last);
        private_ = true;
      }
      const len = private_ && end <= SMALL_FILE ? Math.ceil(need / BLOCK) * BLOCK : Math.max(Math.ceil(need / MIN_EXTENT) * MIN_EXTENT, Math.min(have, this.#maxGrowth));
      const v = await volumeCreate(this.#proc, this.#admin.create, len);
      this.#vols.set(v.volume, v);
      ino.extents.push({ volume: v.volume, fileOffset: have, length: v.size, volOffset: 0, pooled: false });
      ino.dirty = true;
      // Not yet durable: the extent is persisted with the size change (or leaks on a crash).
      if (!this.#deps.isCurrent(ino)) {
        ino.extents.pop();
        await this.free(ino, [{ volume: v.volume, fileOffset: have, length: v.size, volOffset: 0, pooled: false }]);
        throw new FractosError('ENOENT', `'${ino.path}' deleted`);
      }
      await this.#deps.persist();
    };
    return serialized(ino, run);
  }

  /** Add pool range `got` (`len` bytes) to `ino` at file offset `have`: zeroed first, merged into the last extent when adjacent, persisted. */
  async #pooledGrow(ino: Inode, have: number, len: number, got: { pool: Pool; off: number }, last: Extent | undefined): Promise<void> {
    const { pool, off } = got;
    try {
      await this.#deps.zero(pool.v, off, len);
    } catch (err) {
      this.#give(pool, off, len);
      throw err;
    }
    if (!this.#deps.isCurrent(ino)) {
      this.#give(pool, off, len);
      throw new FractosError('ENOENT', `'${ino.path}' deleted`);
    }
    if (last && last.volume === pool.v.volume && last.volOffset + last.length === off) last.length += len;
    else ino.extents.push({ volume: pool.v.volume, fileOffset: have, length: len, volOffset: off, pooled: true });
    ino.dirty = true;
    await this.#deps.persist();
  }

  /**
   * Make every extent of `ino` private (before a DAX open): its pooled part [0, P) is copied
   * to a new volume under the file's block-range lock, the extents swapped and persisted,
   * then the pool ranges freed. Serialized with allocation. Errors: ENOSPC, ENOENT, EIO.
   */
  makePrivate(ino: Inode): Promise<void> {
    const run = async (): Promise<void> => {
      const pooled = ino.extents.filter((x) => x.pooled);
      if (!pooled.length) return;
      const p = pooled[pooled.length - 1]!;
      const len = p.fileOffset + p.length;
      // Exactly the pooled bytes (volumes are 4 KiB-granular): small files opened DAX stay small.
      const v = await volumeCreate(this.#proc, this.#admin.create, Math.ceil(len / BLOCK) * BLOCK);
      this.#vols.set(v.volume, v);
      try {
        await this.#deps.copyToVolume(ino, len, v, async () => {
          if (!this.#deps.isCurrent(ino)) throw new FractosError('ENOENT', `'${ino.path}' deleted`);
          const rest = ino.extents.filter((x) => !x.pooled);
          ino.extents = [{ volume: v.volume, fileOffset: 0, length: rest.length ? len : v.size, volOffset: 0, pooled: false }, ...rest];
          ino.dirty = true;
          await this.#deps.persist();
        });
        // Reads that may still use the old ranges finish before the ranges can be reused.
        if (ino.reads?.size) await Promise.all([...ino.reads]);
      } catch (err) {
        if (!ino.extents.some((x) => x.volume === v.volume)) await this.free(ino, [{ volume: v.volume, fileOffset: 0, length: v.size, volOffset: 0, pooled: false }]);
        throw err;
      }
      await this.free(ino, pooled);
    };
    return serialized(ino, run);
  }

  /** Return `gone`'s pooled ranges to their pools; revoke the DAX Requests on its private volumes, then delete them. Call once the metadata without them is durable. */
  async free(ino: Inode, gone: Extent[]): Promise<void> {
    for (const x of gone) if (x.pooled) this.#give(this.#pools.get(x.volume)!, x.volOffset, x.length);
    gone = gone.filter((x) => !x.pooled);
    if (!gone.length) return;
    const vols = new Set(gone.map((x) => x.volume));
    await this.#deps.revokeDax(ino, vols);
    for (const v of vols) {
      const vh = this.#vols.get(v);
      this.#vols.delete(v);
      if (!vh) continue;
      try {
        await this.#proc.rpc(vh.delete, VolumeDelete, {}, {}, { timeoutMs: 30_000 });
      } catch (err) {
        this.#log?.warn({ volume: v, err: (err as Error).message }, 'volume delete failed (leaked)');
      }
      this.#proc.capDrop(vh.read, vh.write, vh.delete).catch(() => {});
    }
  }
}

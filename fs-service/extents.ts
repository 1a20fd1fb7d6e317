/**
 * The FS's extents: one blockdev volume each, created, opened and deleted through the
 * blockdev's volume administration, which the FS claims at start-up and holds alone.
 *
 * Invariants:
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
import { allocatedOf, type Extent, type FsCounts, type FsLog, type Inode } from './inode.js';

/** Smallest extent, bytes. */
const MIN_EXTENT = 1 << 20;

/** What extents need from the rest of the FS. */
export interface ExtentsDeps {
  /** Make the in-memory metadata durable (metadata.ts). */
  persist(): Promise<void>;
  /** Whether `ino` is the file at its path now: not deleted, and not replaced by a new file of the same path (namespace.ts). */
  isCurrent(ino: Inode): boolean;
  /** Revoke the DAX Requests every open of `ino` holds on these volumes (opens.ts). */
  revokeDax(ino: Inode, volumes: Set<number>): Promise<void>;
}

export class Extents {
  readonly #proc: Process;
  readonly #admin: VolumeAdmin;
  readonly #counts: Pick<FsCounts, 'reclaimedVolumes'>;
  readonly #log: FsLog | undefined;
  readonly #deps: ExtentsDeps;
  readonly #vols = new Map<number, VolumeHandle>();
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

  /** Open the volumes of a loaded file's extents (start-up). Errors: what volumeOpen answers. */
  async adopt(ino: Inode): Promise<void> {
    for (const x of ino.extents) this.#vols.set(x.volume, await volumeOpen(this.#proc, this.#admin.open, x.volume));
  }

  /**
   * Delete the volumes no file names (leaked by a crash between a volume's creation and the
   * metadata naming it, or between the metadata dropping extents and their deletion), except
   * `keep` (the metadata volume). Runs before the FS serves anything, so no allocation is in flight.
   */
  async reclaim(keep: number): Promise<void> {
    const p = this.#proc;
    const ids = await volumeList(p, this.#admin.list);
    const orphans = ids.filter((id) => id !== keep && !this.#vols.has(id));
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

  /** Grow the file's extents to cover `end` bytes (one new volume; doubling policy). Errors: ENOSPC, ENOENT (deleted meanwhile). */
  ensureAllocated(ino: Inode, end: number): Promise<void> {
    const run = async (): Promise<void> => {
      const have = allocatedOf(ino);
      if (end <= have) return;
      const need = end - have;
      const len = Math.max(Math.ceil(need / MIN_EXTENT) * MIN_EXTENT, Math.min(have, this.#maxGrowth));
      const v = await volumeCreate(this.#proc, this.#admin.create, len);
      this.#vols.set(v.volume, v);
      ino.extents.push({ volume: v.volume, fileOffset: have, length: v.size });
      ino.dirty = true;
      // Not yet durable: the extent is persisted with the size change (or leaks on a crash).
      if (!this.#deps.isCurrent(ino)) {
        ino.extents.pop();
        await this.free(ino, [{ volume: v.volume, fileOffset: have, length: v.size }]);
        throw new FractosError('ENOENT', `'${ino.path}' deleted`);
      }
      await this.#deps.persist();
    };
    const next = ino.alloc.then(run, run);
    ino.alloc = next.catch(() => {});
    return next;
  }

  /** Revoke the DAX Requests on `gone`'s volumes, then delete them. Call once the metadata without them is durable. */
  async free(ino: Inode, gone: Extent[]): Promise<void> {
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

/**
 * The FS's staging slots: its own shared Memory through which every byte between a client
 * and the device passes on the mediated path, and the copies between them and client Memory.
 *
 * Invariants:
 * - STAGE_SLOTS slots of STAGE_BYTES (MAX_MEDIATED plus a head and a tail block), each its
 *   own Memory object (`cid`), allocated at start-up and never freed.
 * - An operation holds one slot (`slots`, FairSlots) from before its first copy until its
 *   last. Keys are open handles (positive), which hold at most STAGE_PER_HANDLE slots each
 *   per class, and the FS's own uses (StageKey, negative). The class is the client buffer's
 *   (`mayStall`): copies with served Memory or Memory on another Controller (which may take
 *   up to the served / peer timeout) hold at most STAGE_MAX_STALLING slots together, so
 *   copies with shared Memory on this host always find STAGE_SLOTS - STAGE_MAX_STALLING,
 *   however many opens a stalling client holds.
 * - Client Memory on this host in shared memory whose region's fd the Controller hands the FS
 *   (`mappable`: memory_map) is copied directly through a mapping (libfractos/region-maps.ts:
 *   cached by region key, bounded in regions and bytes); anything else through memory_copy,
 *   on caps diminished to the range and dropped after.
 * - The staging region is shared whole (`shareWhole`): the blockdev, given a slot or a part of
 *   one, maps the region and does device I/O straight into it.
 */
import { FractosError } from '../libfractos/errors.js';
import type { MemoryStat, Process, SharedRegion } from '../libfractos/process.js';
import { Perm } from '../libfractos/protocol.js';
import { CopyFault, copyGuarded } from '../native/shm/index.js';
import { RegionMaps } from '../libfractos/region-maps.js';
import { FairSlots, mayStall } from '../blockdev-adaptor/fair-slots.js';
import { BLOCK, MAX_MEDIATED } from './inode.js';

/** Staging slots: aligned copies of a mediated op's range (MAX_MEDIATED + 2 blocks each). */
const STAGE_SLOTS = 16;
/**
 * Most staging slots one open handle's mediated I/O holds at once (FairSlots; `list` and
 * truncate's zeroing have a key each): a client whose Memory never answers a memory_copy
 * stalls at most this many, the other opens keep the rest.
 */
export const STAGE_PER_HANDLE = 4;
/**
 * Most staging slots copies with may-stall Memory (served, or on another Controller) hold
 * together, all opens: the other half is left to copies with shared Memory on this host.
 */
export const STAGE_MAX_STALLING = STAGE_SLOTS / 2;
/** FairSlots keys of the FS's own uses of staging slots (open handles are positive). */
export const StageKey = { LIST: -1, ZERO: -2 } as const;
/** Bytes of one slot. */
export const STAGE_BYTES = MAX_MEDIATED + 2 * BLOCK;

export class Staging {
  /** Staging slots, shared fairly between open handles (STAGE_PER_HANDLE each per class at most, STAGE_MAX_STALLING may-stall). */
  readonly slots = new FairSlots<number>(STAGE_SLOTS, STAGE_PER_HANDLE, undefined, STAGE_MAX_STALLING);
  readonly #proc: Process;
  readonly #stage: SharedRegion;
  readonly #cids: number[];
  readonly #maps: RegionMaps;

  private constructor(proc: Process, stage: SharedRegion, cids: number[]) {
    this.#proc = proc;
    this.#maps = new RegionMaps(proc);
    this.#stage = stage;
    this.#cids = cids;
  }

  /** Allocate the staging slots (shared Memory, one Memory object a slot). */
  static async create(proc: Process): Promise<Staging> {
    const stage = proc.allocShared(STAGE_SLOTS * STAGE_BYTES, { shareWhole: true });
    const cids: number[] = [];
    for (let i = 0; i < STAGE_SLOTS; i++) cids.push(await proc.memoryCreate(stage, Perm.RW, i * STAGE_BYTES, STAGE_BYTES));
    return new Staging(proc, stage, cids);
  }

  /** The FS's Memory cap of slot `slot` (RW, STAGE_BYTES). */
  cid(slot: number): number {
    return this.#cids[slot]!;
  }

  /**
   * Copy the FS's own bytes (a listing, at most MAX_MEDIATED) into a client's Memory `buffer`
   * through a staging slot. Errors: EPERM (not writable), ERANGE (too small), EAGAIN, EIO.
   */
  async sendListing(data: Buffer, buffer: number): Promise<void> {
    if (data.length > 0) {
      const st = await this.#proc.memoryStat(buffer);
      if (!(st.perms & Perm.WRITE)) throw new FractosError('EPERM', 'buffer not writable');
      if (st.size < data.length) throw new FractosError('ERANGE', `listing of ${data.length} bytes does not fit the buffer of ${st.size}`);
      const slot = await this.slots.acquireAsync(StageKey.LIST, mayStall(st));
      try {
        this.bytes(slot).set(data, 0);
        await this.toClient(slot, 0, data.length, buffer, st);
      } finally {
        this.slots.release(StageKey.LIST, slot);
      }
    }
  }

  /** The bytes of stage slot `slot` (STAGE_BYTES), in this process. */
  bytes(slot: number): Buffer {
    const b = this.#stage.bytes;
    return Buffer.from(b.buffer, b.byteOffset + slot * STAGE_BYTES, STAGE_BYTES);
  }

  /**
   * Copy between a stage slot and a client's mapping under the SIGBUS guard (native/shm
   * copyGuarded): a client that truncated its region gets EFAULT and the mapping is forgotten,
   * instead of killing the FS. Errors: EFAULT.
   */
  #guarded(dst: Uint8Array, src: Uint8Array, st: MemoryStat): void {
    if (copyGuarded(dst, src) === CopyFault.NONE) return;
    this.#maps.forget(st.regionKey);
    throw new FractosError('EFAULT', `client region ${st.regionKey} faulted under its Memory`);
  }

  /** Copy stage slot bytes [off, off + n) into client Memory `buffer` (described by `st`). */
  async toClient(slot: number, off: number, n: number, buffer: number, st: MemoryStat): Promise<void> {
    const view = this.#maps.cached(st, n, true) ?? (await this.#maps.view(buffer, st, n, true));
    if (view) return this.#guarded(view, this.bytes(slot).subarray(off, off + n), st);
    const src = await this.#proc.memoryDiminish(this.cid(slot), off, n);
    try {
      await this.#proc.memoryCopy(src, buffer);
    } finally {
      this.#proc.capDrop(src).catch(() => {});
    }
  }

  /** Copy the first `n` bytes of client Memory `buffer` (described by `st`) into stage slot bytes [off, off + n). */
  async fromClient(slot: number, off: number, n: number, buffer: number, st: MemoryStat): Promise<void> {
    const view = this.#maps.cached(st, n, false) ?? (await this.#maps.view(buffer, st, n, false));
    if (view) return this.#guarded(this.bytes(slot).subarray(off, off + n), view, st);
    const src = st.size > n ? await this.#proc.memoryDiminish(buffer, 0, n) : buffer;
    const dst = await this.#proc.memoryDiminish(this.cid(slot), off, n);
    try {
      await this.#proc.memoryCopy(src, dst);
    } finally {
      this.#proc.capDrop(...(src !== buffer ? [src, dst] : [dst])).catch(() => {});
    }
  }
}

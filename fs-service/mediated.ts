/**
 * Mediated I/O: reads and writes of open files through the FS (the Read/Write Requests of an
 * open), through a staging slot (staging.ts) and the block cache (cache.ts); also truncate's
 * zeroing of a cut-off tail on the device.
 *
 * Invariants:
 * - An operation holds one staging slot, keyed by its open handle (StageKey.ZERO for
 *   zeroing), from before its first copy until its device I/O is done.
 * - Device I/O is block-aligned, of allocated ranges only. A write's device I/O has completed
 *   (and, when it grew the file, the metadata record with its size) when its IoReply goes
 *   out: it survives kill -9 of any Process. Data writes are not FUA: the device's volatile
 *   cache is flushed by fsync (metadata.ts persist(true)), as POSIX asks; zeroing and the
 *   copy of makePrivate stay FUA (they come before metadata that names the blocks).
 * - Block-range lock: a mediated write holds the blocks [a, b) it covers (`ino.busy`) from
 *   before its read-modify-write of the partial head/tail blocks until its write-back: two
 *   writes sharing a block never write back a stale copy of each other's bytes.
 * - The cache holds only what the device holds: a write puts its blocks after writing them
 *   back; a read puts what it read only when no write of the file started or ran meanwhile
 *   (`ino.writing`, `ino.wgen`) and the file is still the one at its path.
 * - Bytes past `ino.size` read as zeros in a partial block (never stale device bytes).
 */
import { FractosError } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import type { MemoryDescriptor } from '../libfractos/schema.js';
import { Perm } from '../libfractos/protocol.js';
import type { IoPort, VolumeHandle } from '../blockdev-adaptor/client.js';
import { WriteFlags } from '../blockdev-adaptor/schema.js';
import { mayStall } from '../blockdev-adaptor/fair-slots.js';
import { IoReply } from './schema.js';
import { allocatedOf, BLOCK, MAX_MEDIATED, now, type Inode } from './inode.js';
import { touch } from './attrs.js';
import type { BlockCache } from './cache.js';
import type { OpenHandle } from './opens.js';
import { StageKey, type Staging } from './staging.js';

/** What mediated I/O needs from the rest of the FS. */
export interface MediatedDeps {
  /** The open volume behind an extent (extents.ts). */
  volume(id: number): VolumeHandle | undefined;
  /** The block cache (cache.ts). */
  cache: Pick<BlockCache, 'get' | 'put' | 'readRun'>;
  /** Grow the file's extents to cover `end` bytes (extents.ts). */
  ensureAllocated(ino: Inode, end: number): Promise<void>;
  /** Make the in-memory metadata durable (metadata.ts). */
  persist(): Promise<void>;
  /** Whether `ino` is the file at its path now (not deleted, not replaced). */
  isCurrent(ino: Inode): boolean;
}

export class Mediated {
  readonly #proc: Process;
  readonly #port: IoPort;
  readonly #staging: Staging;
  readonly #deps: MediatedDeps;

  /** `port`: the FS's blockdev I/O port; `staging`: the slots every mediated copy goes through. */
  constructor(proc: Process, port: IoPort, staging: Staging, deps: MediatedDeps) {
    this.#proc = proc;
    this.#port = port;
    this.#staging = staging;
    this.#deps = deps;
  }

  /** Zero file range [from, end) on the device (FUA), keeping the bytes before `from` in its block. */
  async zeroRange(ino: Inode, from: number, end: number): Promise<void> {
    let a = Math.floor(from / BLOCK) * BLOCK;
    if (a >= end) return;
    const slot = await this.#staging.slots.acquireAsync(StageKey.ZERO);
    try {
      const stage = this.#staging.bytes(slot);
      if (from !== a) await this.#devRange(ino, a, a + BLOCK, slot, false); // head block's kept bytes
      stage.fill(0, from - a, MAX_MEDIATED);
      while (a < end) {
        const b = Math.min(end, a + MAX_MEDIATED);
        await this.#devRange(ino, a, b, slot, true);
        if (a === Math.floor(from / BLOCK) * BLOCK) stage.fill(0, 0, BLOCK);
        a = b;
      }
    } finally {
      this.#staging.slots.release(StageKey.ZERO, slot);
    }
  }

  /** Write zeros to [off, off + len) of volume `v` (block-aligned), FUA: pool blocks before a file uses them. */
  async zeroVolume(v: VolumeHandle, off: number, len: number): Promise<void> {
    const slot = await this.#staging.slots.acquireAsync(StageKey.ZERO);
    try {
      this.#staging.bytes(slot).fill(0, 0, MAX_MEDIATED);
      for (let a = 0; a < len; a += MAX_MEDIATED) {
        await this.#port.ioAsync(v.write, true, off + a, Math.min(MAX_MEDIATED, len - a), this.#staging.cid(slot), WriteFlags.FUA);
      }
    } finally {
      this.#staging.slots.release(StageKey.ZERO, slot);
    }
  }

  /**
   * Copy file range [0, len) (from the file's extents) to offset 0 of volume `v` (FUA) while
   * holding the block-range lock of [0, len) (no mediated write overlaps), then run and await
   * `swap` before unlocking (extents.ts makePrivate: the file's pooled part made private).
   */
  async copyToVolume(ino: Inode, len: number, v: VolumeHandle, swap: () => Promise<void>): Promise<void> {
    const end = Math.ceil(len / BLOCK) * BLOCK;
    const unlock = await this.#lock(ino, 0, end);
    try {
      const slot = await this.#staging.slots.acquireAsync(StageKey.ZERO);
      try {
        for (let a = 0; a < end; a += MAX_MEDIATED) {
          const n = Math.min(MAX_MEDIATED, end - a);
          await this.#devRange(ino, a, a + n, slot, false);
          await this.#port.ioAsync(v.write, true, a, n, this.#staging.cid(slot), WriteFlags.FUA);
        }
      } finally {
        this.#staging.slots.release(StageKey.ZERO, slot);
      }
      await swap();
    } finally {
      unlock();
    }
  }

  /** Hold file blocks [a, b) (bytes) against every overlapping write: waits for them; answers the unlock. */
  async #lock(ino: Inode, a: number, b: number): Promise<() => void> {
    const busy = (ino.busy ??= []);
    for (let o = busy.find((x) => x.a < b && a < x.b); o; o = busy.find((x) => x.a < b && a < x.b)) await o.done;
    let unlock!: () => void;
    const lock = { a, b, done: new Promise<void>((r) => (unlock = r)) };
    busy.push(lock);
    return () => {
      busy.splice(busy.indexOf(lock), 1);
      unlock();
    };
  }

  /** Device I/O of file range [a, b) (block-aligned) to/from stage slot offset `stageOff`; a read's bytes past the extents (a hole) are zeros. */
  async #devRange(ino: Inode, a: number, b: number, slot: number, write: boolean, stageOff = 0): Promise<void> {
    const ios: Promise<unknown>[] = [];
    const alloc = allocatedOf(ino);
    if (!write && b > alloc) this.#staging.bytes(slot).fill(0, stageOff + Math.max(0, alloc - a), stageOff + (b - a));
    const drops: number[] = [];
    for (const x of ino.extents) {
      const s = Math.max(a, x.fileOffset);
      const e = Math.min(b, x.fileOffset + x.length);
      if (s >= e) continue;
      const v = this.#deps.volume(x.volume);
      if (!v) throw new FractosError('EIO', `volume ${x.volume} of '${ino.path}' not open`);
      let buf = this.#staging.cid(slot);
      if (s - a + stageOff !== 0) {
        buf = await this.#proc.memoryDiminish(buf, s - a + stageOff, e - s);
        drops.push(buf);
      }
      ios.push(this.#port.ioAsync(write ? v.write : v.read, write, x.volOffset + s - x.fileOffset, e - s, buf, 0));
    }
    try {
      await Promise.all(ios);
    } finally {
      if (drops.length) this.#proc.capDrop(...drops).catch(() => {});
    }
  }

  /** Fill stage [0, b - a) with file range [a, b): from the cache when every block is there, else from the device. */
  async #fill(ino: Inode, a: number, b: number, slot: number): Promise<void> {
    const stage = this.#staging.bytes(slot);
    const nb = (b - a) / BLOCK;
    const first = a / BLOCK;
    if (this.#deps.cache.readRun(ino.id, first, nb, stage)) return;
    const gen = ino.wgen;
    const clean = ino.writing === 0;
    await this.#devRange(ino, a, b, slot, false);
    if (clean && ino.writing === 0 && ino.wgen === gen && this.#deps.isCurrent(ino)) {
      for (let i = 0; i < nb; i++) this.#deps.cache.put(ino.id, first + i, stage.subarray(i * BLOCK, (i + 1) * BLOCK));
    }
  }

  /**
   * Mediated read of `length` bytes (at most MAX_MEDIATED) at file `offset` of the open `h`
   * into Memory `buffer`; answers IoReply (fewer bytes at EOF) on `ok`. `desc`: the buffer's
   * descriptor from the delivery (local Memory), else a memory_stat is made.
   * Errors: EINVAL (no buffer, too long), EPERM (buffer not writable), ERANGE (buffer too small), EAGAIN, EIO.
   */
  async read(h: OpenHandle, offset: number, length: number, buffer: number, ok: number, desc?: MemoryDescriptor): Promise<void> {
    const { id: handle, ino } = h;
    if (!buffer) throw new FractosError('EINVAL', 'no buffer cap');
    if (length > MAX_MEDIATED) throw new FractosError('EINVAL', `length ${length} > ${MAX_MEDIATED}`);
    const n = Math.max(0, Math.min(length, ino.size - offset));
    if (n > 0) {
      const st = desc ?? (await this.#proc.memoryStat(buffer));
      if (!(st.perms & Perm.WRITE)) throw new FractosError('EPERM', 'buffer not writable');
      if (st.size < n) throw new FractosError('ERANGE', `buffer of ${st.size} bytes < ${n}`);
      const a = Math.floor(offset / BLOCK) * BLOCK;
      const b = Math.ceil((offset + n) / BLOCK) * BLOCK;
      const slot = await this.#staging.slots.acquireAsync(handle, mayStall(st));
      try {
        if (ino.extents[0]?.pooled) {
          // Pooled ranges may be freed by makePrivate: it waits for reads like this one.
          const fill = this.#fill(ino, a, b, slot);
          const done = fill.then(() => {}, () => {});
          (ino.reads ??= new Set()).add(done);
          try {
            await fill;
          } finally {
            ino.reads.delete(done);
          }
        } else await this.#fill(ino, a, b, slot);
        await this.#staging.toClient(slot, offset - a, n, buffer, st);
      } finally {
        this.#staging.slots.release(handle, slot);
      }
    }
    // relatime: atime moves when it is older than mtime or a day old (persisted with the next image).
    if (n > 0 && (ino.atime[0] < ino.mtime[0] || (ino.atime[0] === ino.mtime[0] && ino.atime[1] <= ino.mtime[1]) || ino.atime[0] + 86400 < Date.now() / 1000)) {
      ino.atime = now();
      ino.dirty = true;
    }
    await this.#proc.invoke(ok, IoReply, { bytes: n });
  }

  /**
   * Mediated write of `length` bytes (1 .. MAX_MEDIATED) from Memory `buffer` at file `offset`
   * of the open `h`, on the device (and the metadata too when it grows the file: survives
   * kill -9 of any Process; fsync for power loss) when IoReply is answered on `ok`. Errors: EINVAL, EPERM (buffer not readable), ERANGE, ENOSPC, EAGAIN, EIO.
   */
  async write(h: OpenHandle, offset: number, length: number, buffer: number, ok: number, desc?: MemoryDescriptor): Promise<void> {
    const { id: handle, ino } = h;
    if (!buffer) throw new FractosError('EINVAL', 'no buffer cap');
    if (length === 0 || length > MAX_MEDIATED) throw new FractosError('EINVAL', `length ${length} not in (0, ${MAX_MEDIATED}]`);
    const st = desc ?? (await this.#proc.memoryStat(buffer));
    if (!(st.perms & Perm.READ)) throw new FractosError('EPERM', 'buffer not readable');
    if (st.size < length) throw new FractosError('ERANGE', `buffer of ${st.size} bytes < ${length}`);
    const end = offset + length;
    await this.#deps.ensureAllocated(ino, end);
    const a = Math.floor(offset / BLOCK) * BLOCK;
    const b = Math.ceil(end / BLOCK) * BLOCK;
    // Block-range lock: wait for overlapping writes, then hold [a, b) until written back.
    const unlock = await this.#lock(ino, a, b);
    let slot: number;
    try {
      slot = await this.#staging.slots.acquireAsync(handle, mayStall(st));
    } catch (err) {
      unlock();
      throw err;
    }
    ino.writing++;
    ino.wgen++;
    try {
      const stage = this.#staging.bytes(slot);
      // Read-modify-write of partial head/tail blocks (inside the old size; zeros past it).
      if (offset !== a) await this.#partial(ino, a, slot, 0);
      if (end !== b && (b - BLOCK !== a || offset === a)) await this.#partial(ino, b - BLOCK, slot, b - BLOCK - a);
      await this.#staging.fromClient(slot, offset - a, length, buffer, st);
      await this.#devRange(ino, a, b, slot, true);
      const first = a / BLOCK;
      for (let i = 0; i < (b - a) / BLOCK; i++) this.#deps.cache.put(ino.id, first + i, stage.subarray(i * BLOCK, (i + 1) * BLOCK));
      touch(ino, true); // mtime/ctime: durable with the size change below, else with the next image (fsync)
      if (end > ino.size) {
        ino.size = end;
        await this.#deps.persist();
      }
    } finally {
      ino.writing--;
      this.#staging.slots.release(handle, slot);
      unlock();
    }
    await this.#proc.invoke(ok, IoReply, { bytes: length });
  }

  /** Put file block at `blockOff` into stage at `at` (cache, device, or zeros beyond the size). */
  async #partial(ino: Inode, blockOff: number, slot: number, at: number): Promise<void> {
    const stage = this.#staging.bytes(slot);
    if (blockOff >= ino.size) {
      stage.fill(0, at, at + BLOCK);
      return;
    }
    const c = this.#deps.cache.get(ino.id, blockOff / BLOCK);
    if (c) {
      stage.set(c, at);
      return;
    }
    await this.#devRange(ino, blockOff, blockOff + BLOCK, slot, false, at);
  }
}

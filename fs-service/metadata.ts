/**
 * The FS's metadata: a copy-on-write image of the namespace in two slots of the metadata
 * volume, its encoding, and group commit. On-disk format and crash-safety argument:
 * docs/storage.md §2.
 *
 * Invariants:
 * - The metadata volume is the first volume ever created on the blockdev (volume id 1),
 *   created by the FS on first start, of 2 * META_SLOT_BYTES at least.
 * - Version 2 holds inodes and directories (MetaInode); a version-1 image (flat paths) still
 *   loads, and namespace.ts converts it (its next write is version 2).
 * - The image of generation g goes to slot g % 2, with a crc32 of its JSON, written with FUA:
 *   slot (g - 1) % 2, the last durable image, is never overwritten by the write of g, so a
 *   crash mid-write leaves it whole. Loading keeps the valid slot with the highest generation;
 *   with none (crash before the first write) the FS is empty.
 * - The log (issue #9: a whole image per operation costs O(files)): a metadata volume of
 *   2 * META_SLOT_BYTES + META_LOG_BYTES (new devices; an older 8 MiB volume has none and
 *   writes a whole image every time) holds, after the slots, records of the changes since the
 *   checkpoint image of generation g: record k (k = 1, 2, ...) is written right after record
 *   k - 1, block-aligned, tagged (g, k) with a crc32 of its JSON payload
 *   (MetaDelta). Loading replays, after the newest valid image g, the records tagged g with
 *   k = 1, 2, ... while they are whole; the first that is not (torn, older generation,
 *   garbage) ends the log. A checkpoint (a whole image, generation g + 1, in the other slot)
 *   is written when the log is full, a delta is large, or a write failed (the changes it
 *   carried are then only in memory); records of g stay on the volume until records of g + 1
 *   overwrite them, and are ignored by their tag.
 * - `persist()` resolves only once an image taken after the call began is durable (group
 *   commit: one write covers every caller waiting when it starts; the next waits for it),
 *   and rejects (ENOSPC, EIO) when that write failed. One image write is in flight at most.
 * - Durable means two things (docs/storage.md "Durability classes"): a record is written
 *   without FUA, so once it completed it survives kill -9 of any Process (the O_DIRECT write
 *   is in the device) but not a power loss that drops the device's volatile cache; a
 *   `persist(true)` (fsync) record, and every checkpoint, is FUA: the blockdev flushes the
 *   device after it, covering every write completed before it. Checkpoints stay FUA because
 *   the records of g + 1 overwrite those of g: image g + 1 must outlive a power loss first.
 *   A power loss keeps a prefix of the records (replay stops at the first missing one).
 * - The image is taken at write time from the `image` callback: what a caller changed in
 *   memory before calling `persist()` is in it.
 */
import { crc32 } from 'node:zlib';
import { FractosError } from '../libfractos/errors.js';
import type { Process, SharedRegion } from '../libfractos/process.js';
import { Perm } from '../libfractos/protocol.js';
import { volumeCreate, volumeOpen, type IoPort, type VolumeAdmin, type VolumeHandle } from '../blockdev-adaptor/client.js';
import { WriteFlags } from '../blockdev-adaptor/schema.js';
import { BLOCK } from './inode.js';

/** Bytes of one metadata slot (two slots on the metadata volume). */
export const META_SLOT_BYTES = 4 << 20;
/** Bytes of the log after the two slots (volumes created by this version). */
export const META_LOG_BYTES = 4 << 20;
/** Largest delta written as a log record; a larger one is written as a checkpoint instead. */
const MAX_RECORD = 1 << 20;
const LOG_MAGIC = 'FRFSLOG1';
const META_MAGIC = 'FRFSMETA';
/** Version written (2: inodes and directories); version 1 images (flat paths) are loaded and converted. */
const META_VERSION = 2;
/** Header: magic (8), version u32, JSON length u32, generation u64, crc32 u32; zero to 64 bytes. */
const META_HEADER = 64;

/** One file of a version-1 image (flat paths): extents as [volume, fileOffset, length]. */
export interface MetaFile {
  id: number;
  path: string;
  size: number;
  extents: [number, number, number][];
}

/**
 * One inode of a version-2 image, as a tuple (compact JSON): id, mode, uid, gid, nlink,
 * size, atime s, ns, mtime s, ns, ctime s, ns, extents flattened [volume, fileOffset,
 * length, pooled (0/1), volOffset, ...], and `extra`: a symlink's target, a directory's [parent, nextCookie,
 * [name, ino, cookie, ...] in cookie order], else 0.
 */
export type MetaInode = [number, number, number, number, number, number, number, number, number, number, number, number, number[], string | [number, number, (string | number)[] | null] | 0];

/**
 * The changes since the last image or record (a log record's payload): `n` the next inode id,
 * `i` the tuples of every changed or new inode (a directory's `extra` without its entries:
 * [parent, nextCookie, null]), `e` entry changes in order as flat [dir, name, ino, cookie, ...]
 * (ino 0: the entry was removed), `r` the ids of inodes that left the namespace.
 */
export interface MetaDelta {
  n: number;
  i: MetaInode[];
  e: (string | number)[];
  r: number[];
}

/** What the store persists: a whole image (checkpoint) or the changes since the last write (log record); both reset the change tracking. */
export interface MetaSource {
  image(): MetaImage;
  delta(): MetaDelta;
}

/** The namespace as persisted: the next inode id and every linked inode (version 2), or version 1's files. */
export interface MetaImage {
  nextIno: number;
  inodes?: MetaInode[];
  files?: MetaFile[];
}

/**
 * Encode `image` as generation `gen` into `into` (a slot's bytes, from offset 0): header,
 * JSON, zeros to the next BLOCK. Answers the bytes to write (a multiple of BLOCK).
 * Errors: ENOSPC when the JSON does not fit a slot.
 */
export function encodeMeta(image: MetaImage, gen: number, into: Buffer): number {
  const json = Buffer.from(JSON.stringify(image), 'utf8');
  if (json.length > META_SLOT_BYTES - META_HEADER) throw new FractosError('ENOSPC', 'metadata does not fit the metadata volume');
  const total = Math.ceil((META_HEADER + json.length) / BLOCK) * BLOCK;
  into.fill(0, 0, META_HEADER);
  into.write(META_MAGIC, 0, 'latin1');
  into.writeUInt32LE(META_VERSION, 8);
  into.writeUInt32LE(json.length, 12);
  into.writeUInt32LE(gen % 0x100000000, 16);
  into.writeUInt32LE(Math.floor(gen / 0x100000000), 20);
  into.writeUInt32LE(crc32(json), 24);
  json.copy(into, META_HEADER);
  into.fill(0, META_HEADER + json.length, total);
  return total;
}

/**
 * The header of a slot whose first BLOCK is in `b`: JSON length, generation and crc, and the
 * bytes to read for the whole image; null when it is no metadata image (magic, version or
 * length off).
 */
function decodeHeader(b: Buffer): { len: number; gen: number; crc: number; total: number } | null {
  const version = b.readUInt32LE(8);
  if (b.toString('latin1', 0, 8) !== META_MAGIC || (version !== 1 && version !== META_VERSION)) return null;
  const len = b.readUInt32LE(12);
  if (len > META_SLOT_BYTES - META_HEADER) return null;
  const gen = b.readUInt32LE(16) + b.readUInt32LE(20) * 0x100000000;
  return { len, gen, crc: b.readUInt32LE(24), total: Math.ceil((META_HEADER + len) / BLOCK) * BLOCK };
}

/** The metadata volume, its two slots and its log; see the invariants above. */
export class MetadataStore {
  readonly #proc: Process;
  readonly #port: IoPort;
  readonly #source: MetaSource;
  readonly #region: SharedRegion;
  readonly #cid: number;
  #volume!: VolumeHandle;
  #gen = 0;
  /** Log bytes of the volume (0: none), the next record's offset in it and the last record's seq. */
  #logBytes = 0;
  #logOff = 0;
  #seq = 0;
  /** The next write is a checkpoint (no image yet, a failed write, a converted image). */
  #checkpoint = true;
  #persisting = false;
  #waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** A waiter of the next write asked for a device flush (FUA). */
  #flushWanted = false;
  /** Checkpoints and log records written, and the writes of either that were FUA (for tests and stats). */
  readonly counts = { checkpoints: 0, records: 0, flushes: 0 };

  private constructor(proc: Process, port: IoPort, source: MetaSource, region: SharedRegion, cid: number) {
    this.#proc = proc;
    this.#port = port;
    this.#source = source;
    this.#region = region;
    this.#cid = cid;
  }

  /**
   * A store with its slot-sized I/O buffer (shared Memory of META_SLOT_BYTES); `source`
   * answers what to persist, at each write. No volume I/O until `load`.
   */
  static async create(proc: Process, port: IoPort, source: MetaSource): Promise<MetadataStore> {
    const region = proc.allocShared(META_SLOT_BYTES);
    const cid = await proc.memoryCreate(region, Perm.RW);
    return new MetadataStore(proc, port, source, region, cid);
  }

  /** The metadata volume's id (1), once loaded. */
  get volume(): number {
    return this.#volume.volume;
  }

  /** Make the next write a checkpoint (a whole image). */
  checkpointNext(): void {
    this.#checkpoint = true;
  }

  /**
   * Open the metadata volume through `admin` (create it on an empty blockdev) and answer the
   * newest valid image and the log records that follow it, or null for an empty FS. Errors:
   * EINVAL (volume 1 is not ours: not the first volume created, or too small), what
   * volumeOpen/volumeCreate answer.
   */
  async load(admin: VolumeAdmin): Promise<{ image: MetaImage; deltas: MetaDelta[] } | null> {
    const p = this.#proc;
    let created = false;
    try {
      this.#volume = await volumeOpen(p, admin.open, 1);
    } catch (err) {
      if ((err as FractosError).code !== 'ENOENT') throw err;
      this.#volume = await volumeCreate(p, admin.create, 2 * META_SLOT_BYTES + META_LOG_BYTES);
      created = true;
      if (this.#volume.volume !== 1) {
        throw new FractosError('EINVAL', `the metadata volume must be the first volume of the blockdev (got volume ${this.#volume.volume}); use a freshly formatted device`);
      }
    }
    if (this.#volume.size < 2 * META_SLOT_BYTES) throw new FractosError('EINVAL', `volume 1 (${this.#volume.size} bytes) is not an FS metadata volume`);
    this.#logBytes = this.#volume.size - 2 * META_SLOT_BYTES;
    if (created) return null;
    let best: { gen: number; json: string } | null = null;
    for (let slot = 0; slot < 2; slot++) {
      const r = await this.#readSlot(slot);
      if (r && (!best || r.gen > best.gen)) best = r;
    }
    if (!best) return null; // Crashed before the first metadata write: empty FS.
    this.#gen = best.gen;
    const deltas = await this.#readLog();
    this.#checkpoint = false;
    return { image: JSON.parse(best.json) as MetaImage, deltas };
  }

  async #readSlot(slot: number): Promise<{ gen: number; json: string } | null> {
    const bytes = this.#region.bytes;
    await this.#port.ioAsync(this.#volume.read, false, slot * META_SLOT_BYTES, BLOCK, this.#cid);
    const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    const h = decodeHeader(b);
    if (!h) return null;
    if (h.total > BLOCK) await this.#port.ioAsync(this.#volume.read, false, slot * META_SLOT_BYTES, h.total, this.#cid);
    if (crc32(b.subarray(META_HEADER, META_HEADER + h.len)) !== h.crc) return null;
    return { gen: h.gen, json: b.toString('utf8', META_HEADER, META_HEADER + h.len) };
  }

  /** The whole records of generation #gen from the log's start, in order; sets where the next goes. */
  async #readLog(): Promise<MetaDelta[]> {
    const out: MetaDelta[] = [];
    const bytes = this.#region.bytes;
    const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    let off = 0;
    for (let seq = 1; off + BLOCK <= this.#logBytes; seq++) {
      const at = 2 * META_SLOT_BYTES + off;
      await this.#port.ioAsync(this.#volume.read, false, at, BLOCK, this.#cid);
      if (b.toString('latin1', 0, 8) !== LOG_MAGIC) break;
      const len = b.readUInt32LE(8);
      const gen = b.readUInt32LE(12) + b.readUInt32LE(16) * 0x100000000;
      const rseq = b.readUInt32LE(20);
      const total = Math.ceil((META_HEADER + len) / BLOCK) * BLOCK;
      if (gen !== this.#gen || rseq !== seq || len > MAX_RECORD || off + total > this.#logBytes) break;
      if (total > BLOCK) await this.#port.ioAsync(this.#volume.read, false, at, total, this.#cid);
      if (crc32(b.subarray(META_HEADER, META_HEADER + len)) !== b.readUInt32LE(24)) break;
      out.push(JSON.parse(b.toString('utf8', META_HEADER, META_HEADER + len)) as MetaDelta);
      off += total;
      this.#seq = seq;
    }
    this.#logOff = off;
    return out;
  }

  /**
   * Make the current in-memory metadata durable (group commit). Without `flush` the record
   * is written without FUA: once answered it survives the crash (kill -9) of any Process,
   * not the loss of the device's volatile cache. With `flush` (fsync, fdatasync) the write
   * is FUA: the blockdev flushes the device after it, which covers every write completed
   * before it, data included. Errors: ENOSPC, EIO.
   */
  persist(flush = false): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
      if (flush) this.#flushWanted = true;
      if (!this.#persisting) void this.#loop();
    });
  }

  async #loop(): Promise<void> {
    this.#persisting = true;
    while (this.#waiters.length) {
      const batch = this.#waiters;
      const flush = this.#flushWanted;
      this.#waiters = [];
      this.#flushWanted = false;
      try {
        await this.#write(flush);
        for (const w of batch) w.resolve();
      } catch (err) {
        this.#checkpoint = true; // what the failed write carried is only in memory now
        for (const w of batch) w.reject(err as Error);
      }
    }
    this.#persisting = false;
  }

  async #write(flush: boolean): Promise<void> {
    const bytes = this.#region.bytes;
    const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    if (!this.#checkpoint && this.#logBytes > 0) {
      const json = Buffer.from(JSON.stringify(this.#source.delta()), 'utf8');
      const total = Math.ceil((META_HEADER + json.length) / BLOCK) * BLOCK;
      if (json.length <= MAX_RECORD && this.#logOff + total <= this.#logBytes) {
        const seq = this.#seq + 1;
        b.fill(0, 0, META_HEADER);
        b.write(LOG_MAGIC, 0, 'latin1');
        b.writeUInt32LE(json.length, 8);
        b.writeUInt32LE(this.#gen % 0x100000000, 12);
        b.writeUInt32LE(Math.floor(this.#gen / 0x100000000), 16);
        b.writeUInt32LE(seq, 20);
        b.writeUInt32LE(crc32(json), 24);
        json.copy(b, META_HEADER);
        b.fill(0, META_HEADER + json.length, total);
        await this.#port.ioAsync(this.#volume.write, true, 2 * META_SLOT_BYTES + this.#logOff, total, this.#cid, flush ? WriteFlags.FUA : 0);
        this.#logOff += total;
        this.#seq = seq;
        this.counts.records++;
        if (flush) this.counts.flushes++;
        return;
      }
      // Too large or the log is full: the checkpoint below holds these changes too.
    }
    const gen = this.#gen + 1;
    const total = encodeMeta(this.#source.image(), gen, b);
    await this.#port.ioAsync(this.#volume.write, true, (gen % 2) * META_SLOT_BYTES, total, this.#cid, WriteFlags.FUA);
    this.#gen = gen;
    this.#logOff = 0;
    this.#seq = 0;
    this.#checkpoint = false;
    this.counts.checkpoints++;
    this.counts.flushes++;
  }
}

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
 * - `persist()` resolves only once an image taken after the call began is durable (group
 *   commit: one write covers every caller waiting when it starts; the next waits for it),
 *   and rejects (ENOSPC, EIO) when that write failed. One image write is in flight at most.
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
 * length, ...], and `extra`: a symlink's target, a directory's [parent, nextCookie,
 * [name, ino, cookie, ...] in cookie order], else 0.
 */
export type MetaInode = [number, number, number, number, number, number, number, number, number, number, number, number, number[], string | [number, number, (string | number)[]] | 0];

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

/** The metadata volume and its two slots; see the invariants above. */
export class MetadataStore {
  readonly #proc: Process;
  readonly #port: IoPort;
  readonly #image: () => MetaImage;
  readonly #region: SharedRegion;
  readonly #cid: number;
  #volume!: VolumeHandle;
  #gen = 0;
  #persisting = false;
  #waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];

  private constructor(proc: Process, port: IoPort, image: () => MetaImage, region: SharedRegion, cid: number) {
    this.#proc = proc;
    this.#port = port;
    this.#image = image;
    this.#region = region;
    this.#cid = cid;
  }

  /**
   * A store with its slot-sized I/O buffer (shared Memory of META_SLOT_BYTES); `image`
   * answers the namespace to persist, at each write. No volume I/O until `load`.
   */
  static async create(proc: Process, port: IoPort, image: () => MetaImage): Promise<MetadataStore> {
    const region = proc.allocShared(META_SLOT_BYTES);
    const cid = await proc.memoryCreate(region, Perm.RW);
    return new MetadataStore(proc, port, image, region, cid);
  }

  /** The metadata volume's id (1), once loaded. */
  get volume(): number {
    return this.#volume.volume;
  }

  /**
   * Open the metadata volume through `admin` (create it on an empty blockdev) and answer the
   * newest valid image, or null for an empty FS. Errors: EINVAL (volume 1 is not ours: not
   * the first volume created, or too small), what volumeOpen/volumeCreate answer.
   */
  async load(admin: VolumeAdmin): Promise<MetaImage | null> {
    const p = this.#proc;
    let created = false;
    try {
      this.#volume = await volumeOpen(p, admin.open, 1);
    } catch (err) {
      if ((err as FractosError).code !== 'ENOENT') throw err;
      this.#volume = await volumeCreate(p, admin.create, 2 * META_SLOT_BYTES);
      created = true;
      if (this.#volume.volume !== 1) {
        throw new FractosError('EINVAL', `the metadata volume must be the first volume of the blockdev (got volume ${this.#volume.volume}); use a freshly formatted device`);
      }
    }
    if (this.#volume.size < 2 * META_SLOT_BYTES) throw new FractosError('EINVAL', `volume 1 (${this.#volume.size} bytes) is not an FS metadata volume`);
    if (created) return null;
    let best: { gen: number; json: string } | null = null;
    for (let slot = 0; slot < 2; slot++) {
      const r = await this.#readSlot(slot);
      if (r && (!best || r.gen > best.gen)) best = r;
    }
    if (!best) return null; // Crashed before the first metadata write: empty FS.
    this.#gen = best.gen;
    return JSON.parse(best.json) as MetaImage;
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

  /** Make the current in-memory metadata durable (group commit). Errors: ENOSPC, EIO. */
  persist(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
      if (!this.#persisting) void this.#loop();
    });
  }

  async #loop(): Promise<void> {
    this.#persisting = true;
    while (this.#waiters.length) {
      const batch = this.#waiters;
      this.#waiters = [];
      try {
        await this.#write();
        for (const w of batch) w.resolve();
      } catch (err) {
        for (const w of batch) w.reject(err as Error);
      }
    }
    this.#persisting = false;
  }

  async #write(): Promise<void> {
    const gen = this.#gen + 1;
    const bytes = this.#region.bytes;
    const total = encodeMeta(this.#image(), gen, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length));
    await this.#port.ioAsync(this.#volume.write, true, (gen % 2) * META_SLOT_BYTES, total, this.#cid, WriteFlags.FUA);
    this.#gen = gen;
  }
}

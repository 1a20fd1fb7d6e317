/**
 * The logical-volume table, persisted on the device (layout: docs/blockdev-backend.md §3).
 *
 * Two 4 KiB copies of the table live at bytes [0, 4096) and [4096, 8192). A table of
 * generation g is written to copy g % 2, then flushed; loading picks the valid copy
 * (magic, version, crc32, field checks) with the highest generation, so a write torn by a
 * crash leaves the previous generation readable. Volumes are contiguous extents in the
 * data area, which starts at 1 MiB; sizes are rounded up to 4 KiB; allocation is first-fit.
 */
import * as zlib from 'node:zlib';
import { FractosError, errorCodeFromErrno } from '../libfractos/errors.js';
import { type BlockBackend, ioPromise } from './backend.js';

/** Size of one table copy, bytes. */
export const TABLE_BLOCK = 4096;
/** First byte of the data area (volumes), bytes. */
export const DATA_START = 1 << 20;
/** Volume sizes and starts are multiples of this, bytes. */
export const VOLUME_ALIGN = 4096;
/** "FRVOLTBL" */
export const TABLE_MAGIC = Buffer.from('FRVOLTBL', 'latin1');
export const TABLE_VERSION = 1;
const HEADER_BYTES = 64;
const ENTRY_BYTES = 32;
/** Most volumes one table holds. */
export const MAX_VOLUMES = (TABLE_BLOCK - HEADER_BYTES) / ENTRY_BYTES; // 126

/** One logical volume: a contiguous extent [start, start + length) of the device, bytes. */
export interface Volume {
  /** Non-zero, never reused on this device. */
  readonly id: number;
  /** Device offset of the first byte, bytes (multiple of 4096, >= DATA_START). */
  readonly start: number;
  /** Length, bytes (multiple of 4096, > 0). */
  readonly length: number;
  /** Reserved flag bits (0 today). */
  readonly flags: number;
}

interface TableState {
  generation: bigint;
  deviceSize: number;
  nextId: number;
  volumes: Volume[]; // sorted by start
}

/** crc32 (IEEE, as zlib): node:zlib's crc32 when present (Node >= 20.15), else a table implementation. */
export const crc32: (data: Uint8Array) => number = (() => {
  const native = (zlib as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;
  if (typeof native === 'function') return (d: Uint8Array) => native(d) >>> 0;
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return (d: Uint8Array) => {
    let c = 0xffffffff;
    for (let i = 0; i < d.length; i++) c = table[(c ^ d[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
})();

/** Serializes `s` into a 4096-byte table block (little-endian; crc over the block with the crc field zeroed). */
export function encodeTable(s: TableState, out: Uint8Array): void {
  out.fill(0, 0, TABLE_BLOCK);
  const v = new DataView(out.buffer, out.byteOffset, TABLE_BLOCK);
  out.set(TABLE_MAGIC, 0);
  v.setUint16(8, TABLE_VERSION, true);
  v.setUint16(10, s.volumes.length, true);
  // 12..16: crc32, filled last
  v.setBigUint64(16, s.generation, true);
  v.setBigUint64(24, BigInt(s.deviceSize), true);
  v.setBigUint64(32, BigInt(DATA_START), true);
  v.setUint32(40, VOLUME_ALIGN, true);
  v.setUint32(44, s.nextId, true);
  s.volumes.forEach((vol, i) => {
    const o = HEADER_BYTES + i * ENTRY_BYTES;
    v.setUint32(o, vol.id, true);
    v.setUint32(o + 4, vol.flags, true);
    v.setBigUint64(o + 8, BigInt(vol.start), true);
    v.setBigUint64(o + 16, BigInt(vol.length), true);
  });
  v.setUint32(12, crc32(out.subarray(0, TABLE_BLOCK)), true);
}

/** Why a copy was rejected, or its state. */
export type DecodeResult = { ok: true; state: TableState } | { ok: false; badMagic: boolean; reason: string };

/** Parses and validates one table block read from a device of `deviceSize` bytes. Never throws. */
export function decodeTable(block: Uint8Array, deviceSize: number): DecodeResult {
  const bad = (reason: string, badMagic = false): DecodeResult => ({ ok: false, badMagic, reason });
  if (block.byteLength < TABLE_BLOCK) return bad('short block');
  if (!Buffer.from(block.buffer, block.byteOffset, 8).equals(TABLE_MAGIC)) return bad('bad magic', true);
  const v = new DataView(block.buffer, block.byteOffset, TABLE_BLOCK);
  const version = v.getUint16(8, true);
  if (version !== TABLE_VERSION) return bad(`unsupported version ${version}`);
  const stored = v.getUint32(12, true);
  const copy = Uint8Array.from(block.subarray(0, TABLE_BLOCK));
  copy.fill(0, 12, 16);
  if (crc32(copy) !== stored) return bad('checksum mismatch');
  const count = v.getUint16(10, true);
  if (count > MAX_VOLUMES) return bad(`entry count ${count} > ${MAX_VOLUMES}`);
  const generation = v.getBigUint64(16, true);
  const devSize = v.getBigUint64(24, true);
  if (devSize > BigInt(deviceSize)) return bad(`table device size ${devSize} > device size ${deviceSize}`);
  if (v.getBigUint64(32, true) !== BigInt(DATA_START)) return bad('unexpected data start');
  if (v.getUint32(40, true) !== VOLUME_ALIGN) return bad('unexpected volume alignment');
  const nextId = v.getUint32(44, true);
  const size = Number(devSize);
  const volumes: Volume[] = [];
  const ids = new Set<number>();
  for (let i = 0; i < count; i++) {
    const o = HEADER_BYTES + i * ENTRY_BYTES;
    const id = v.getUint32(o, true);
    const flags = v.getUint32(o + 4, true);
    const start = v.getBigUint64(o + 8, true);
    const length = v.getBigUint64(o + 16, true);
    if (id === 0 || id >= nextId || ids.has(id)) return bad(`entry ${i}: bad or duplicate volume id ${id}`);
    if (
      start < BigInt(DATA_START) ||
      length === 0n ||
      start % BigInt(VOLUME_ALIGN) !== 0n ||
      length % BigInt(VOLUME_ALIGN) !== 0n ||
      start + length > devSize
    ) {
      return bad(`entry ${i}: extent [${start}, +${length}) invalid`);
    }
    ids.add(id);
    volumes.push(Object.freeze({ id, flags, start: Number(start), length: Number(length) }));
  }
  volumes.sort((a, b) => a.start - b.start);
  for (let i = 1; i < volumes.length; i++) {
    if (volumes[i - 1].start + volumes[i - 1].length > volumes[i].start) return bad('overlapping extents');
  }
  return { ok: true, state: { generation, deviceSize: size, nextId, volumes } };
}

function ioError(res: number, what: string): FractosError {
  return new FractosError(res < 0 ? errorCodeFromErrno(res) : 'EIO', `${what} (res ${res})`);
}

/**
 * The volume table of one backend. Mutations (`create`, `delete`) are serialized and each
 * resolves only after the new table is written and flushed.
 */
export class VolumeTable {
  readonly backend: BlockBackend;
  #state: TableState;
  #buf: Uint8Array;
  #tail: Promise<unknown> = Promise.resolve();

  private constructor(backend: BlockBackend, state: TableState, buf: Uint8Array) {
    this.backend = backend;
    this.#state = state;
    this.#buf = buf;
  }

  /**
   * Reads both copies and keeps the valid one with the highest generation.
   * Errors: EIO 'format required' when neither copy has the magic (unformatted device),
   * EIO when both copies are invalid (reasons in the message) or the read fails,
   * ENOTSUP when the backend's block size exceeds 4096.
   */
  static async load(backend: BlockBackend): Promise<VolumeTable> {
    checkBackend(backend);
    const buf = backend.alloc(2 * TABLE_BLOCK);
    const r = await ioPromise((cb) => backend.read(buf, 0, cb));
    if (r !== 2 * TABLE_BLOCK) throw ioError(r, 'volume table read failed');
    const a = decodeTable(buf.subarray(0, TABLE_BLOCK), backend.size);
    const b = decodeTable(buf.subarray(TABLE_BLOCK, 2 * TABLE_BLOCK), backend.size);
    if (!a.ok && !b.ok) {
      if (a.badMagic && b.badMagic) throw new FractosError('EIO', 'no volume table on device (bad magic): format required');
      throw new FractosError('EIO', `both volume table copies invalid: copy 0: ${a.reason}; copy 1: ${b.reason}`);
    }
    let state: TableState;
    if (a.ok && b.ok) state = a.state.generation >= b.state.generation ? a.state : b.state;
    else state = a.ok ? a.state : (b as { state: TableState }).state;
    return new VolumeTable(backend, state, buf.subarray(0, TABLE_BLOCK));
  }

  /**
   * Writes an empty table (both copies: generation 0 at copy 0, 1 at copy 1) and flushes.
   * Destroys every volume. Errors: ENOSPC when the device is smaller than DATA_START + 4096
   * bytes, ENOTSUP (block size > 4096), EIO/... from the device.
   */
  static async format(backend: BlockBackend): Promise<VolumeTable> {
    checkBackend(backend);
    if (backend.size < DATA_START + VOLUME_ALIGN) {
      throw new FractosError('ENOSPC', `device of ${backend.size} bytes is smaller than ${DATA_START + VOLUME_ALIGN}`);
    }
    const deviceSize = backend.size - (backend.size % VOLUME_ALIGN);
    const buf = backend.alloc(2 * TABLE_BLOCK);
    encodeTable({ generation: 0n, deviceSize, nextId: 1, volumes: [] }, buf.subarray(0, TABLE_BLOCK));
    const state: TableState = { generation: 1n, deviceSize, nextId: 1, volumes: [] };
    encodeTable(state, buf.subarray(TABLE_BLOCK));
    const r = await ioPromise((cb) => backend.write(buf, 0, cb));
    if (r !== 2 * TABLE_BLOCK) throw ioError(r, 'volume table write failed');
    const f = await ioPromise((cb) => backend.flush(cb));
    if (f < 0) throw ioError(f, 'flush failed');
    return new VolumeTable(backend, state, buf.subarray(0, TABLE_BLOCK));
  }

  /** Generation of the table on the device (grows by one per mutation). */
  get generation(): bigint {
    return this.#state.generation;
  }

  /** Device bytes the table manages (device size rounded down to 4096). */
  get deviceSize(): number {
    return this.#state.deviceSize;
  }

  /** Bytes not allocated to any volume in the data area. */
  get freeBytes(): number {
    return this.#state.deviceSize - DATA_START - this.#state.volumes.reduce((s, v) => s + v.length, 0);
  }

  /**
   * Allocates a volume of `size` bytes (rounded up to 4096) as the first free extent that fits.
   * Errors: EINVAL (size not a positive safe integer), ENOSPC (no gap fits, or 126 volumes),
   * EIO/... when persisting fails (the table is then unchanged).
   */
  create(size: number): Promise<Volume> {
    return this.#serialize(async () => {
      if (!Number.isSafeInteger(size) || size <= 0) throw new FractosError('EINVAL', `volume size must be > 0, got ${size}`);
      const length = Math.ceil(size / VOLUME_ALIGN) * VOLUME_ALIGN;
      const s = this.#state;
      if (s.volumes.length >= MAX_VOLUMES) throw new FractosError('ENOSPC', `volume table full (${MAX_VOLUMES} volumes)`);
      let start = DATA_START;
      let index = 0;
      for (; index < s.volumes.length; index++) {
        const v = s.volumes[index];
        if (v.start - start >= length) break;
        start = v.start + v.length;
      }
      if (start + length > s.deviceSize) {
        throw new FractosError('ENOSPC', `no free extent of ${length} bytes (${this.freeBytes} bytes free, fragmented or full)`);
      }
      if (s.nextId >= 0xffffffff) throw new FractosError('ENOSPC', 'volume ids exhausted');
      const vol: Volume = Object.freeze({ id: s.nextId, start, length, flags: 0 });
      const volumes = s.volumes.slice();
      volumes.splice(index, 0, vol);
      await this.#persist({ generation: s.generation + 1n, deviceSize: s.deviceSize, nextId: s.nextId + 1, volumes });
      return vol;
    });
  }

  /** Deletes volume `id` (its extent becomes free). Errors: ENOENT, EIO/... when persisting fails. */
  delete(id: number): Promise<void> {
    return this.#serialize(async () => {
      const s = this.#state;
      const volumes = s.volumes.filter((v) => v.id !== id);
      if (volumes.length === s.volumes.length) throw new FractosError('ENOENT', `volume ${id} not found`);
      await this.#persist({ generation: s.generation + 1n, deviceSize: s.deviceSize, nextId: s.nextId, volumes });
    });
  }

  /** The committed volume `id`. Errors: ENOENT. */
  get(id: number): Volume {
    const v = this.#state.volumes.find((x) => x.id === id);
    if (!v) throw new FractosError('ENOENT', `volume ${id} not found`);
    return v;
  }

  /** Committed volumes, by id. */
  list(): Volume[] {
    return this.#state.volumes.slice().sort((a, b) => a.id - b.id);
  }

  /** Resolves when every mutation started so far has settled. */
  async idle(): Promise<void> {
    await this.#tail.catch(() => undefined);
  }

  #serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn, fn);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  // Writes `next` to copy next.generation % 2, flushes, then commits it in memory.
  async #persist(next: TableState): Promise<void> {
    encodeTable(next, this.#buf);
    const off = Number(next.generation % 2n) * TABLE_BLOCK;
    const r = await ioPromise((cb) => this.backend.write(this.#buf, off, cb));
    if (r !== TABLE_BLOCK) throw ioError(r, `volume table write (generation ${next.generation}) failed`);
    const f = await ioPromise((cb) => this.backend.flush(cb));
    if (f < 0) throw ioError(f, 'flush failed');
    this.#state = next;
  }
}

function checkBackend(backend: BlockBackend): void {
  if (backend.blockSize > TABLE_BLOCK || TABLE_BLOCK % backend.blockSize !== 0) {
    throw new FractosError('ENOTSUP', `block size ${backend.blockSize} is not a divisor of ${TABLE_BLOCK}`);
  }
}

/**
 * The in-memory record of one file, shared by the FS service's modules (service.ts wires them).
 *
 * Invariants:
 * - `extents` are sorted by `fileOffset`, contiguous from 0 (extent i+1 starts where extent i
 *   ends) and each is one whole blockdev volume; `allocatedOf` is where the last one ends.
 * - `size` <= allocatedOf(ino) once an operation has finished; bytes past `size` are zero
 *   on the device (truncate zeroes what it cuts off, new volumes are zeroed).
 * - `id` is never reused (Namespace hands out ids; the metadata image persists the next one).
 * - Who writes which field: `path` and `id` are the namespace's (namespace.ts); `extents`
 *   grow and shrink in extents.ts and namespace.ts's truncate; `alloc` is extents.ts's
 *   allocation queue; `size` is set by truncate and by mediated writes; `writing`, `wgen`
 *   and `busy` are mediated.ts's (block-range lock, stale-read guard of the cache).
 */

/** Cache block and alignment unit, bytes. */
export const BLOCK = 4096;
/** Largest mediated read/write, bytes. */
export const MAX_MEDIATED = 1 << 20;

/** One extent: file range [fileOffset, fileOffset + length) stored at offset 0 of `volume`. */
export interface Extent {
  volume: number;
  fileOffset: number;
  length: number;
}

export interface Inode {
  id: number;
  path: string;
  size: number;
  extents: Extent[];
  /** Serializes extent allocation. */
  alloc: Promise<unknown>;
  /** Mediated writes in flight and a counter bumped by each, to keep stale reads out of the cache. */
  writing: number;
  wgen: number;
  /**
   * Block ranges [a, b) (bytes) of mediated writes between their read-modify-write and
   * their write-back: a write waits for every overlapping one, so two writes sharing a
   * partial block never write back a stale copy of each other's bytes (lost update).
   */
  busy?: { a: number; b: number; done: Promise<void> }[];
}

/** A fresh inode record with no extents (size 0). */
export function newInode(id: number, path: string, size = 0, extents: Extent[] = []): Inode {
  return { id, path, size, extents, alloc: Promise.resolve(), writing: 0, wgen: 0 };
}

/** Bytes covered by the file's extents (the end of the last one), 0 with none. */
export function allocatedOf(ino: Inode): number {
  const last = ino.extents[ino.extents.length - 1];
  return last ? last.fileOffset + last.length : 0;
}

/** Counters of the FS, for tests and stats (one object, bumped by the modules it is passed to). */
export interface FsCounts {
  /** Cache hits/misses of mediated reads, in blocks. */
  hits: number;
  misses: number;
  /** Opens closed because every cap their client held was gone. */
  orphanedCloses: number;
  /** Leaked volumes deleted at start-up. */
  reclaimedVolumes: number;
}

/** The service's logger (pino-like), optional everywhere. */
export interface FsLog {
  info: (o: object, m?: string) => void;
  warn: (o: object, m?: string) => void;
}

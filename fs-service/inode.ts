/**
 * The in-memory record of one inode (regular file, directory or symlink), shared by the FS
 * service's modules (service.ts wires them).
 *
 * Invariants:
 * - `extents` are sorted by `fileOffset`, contiguous from 0 (extent i+1 starts where extent i
 *   ends); each is (the start of) a volume of its own, or a block range of a pool volume
 *   (small files; pooled extents come before private ones); `allocatedOf` is where the last one ends.
 * - `size` <= allocatedOf(ino) once an operation has finished; bytes past `size` are zero
 *   on the device (truncate zeroes what it cuts off, new volumes are zeroed).
 * - `id` is never reused (Namespace hands out ids; the metadata image persists the next one).
 * - Directories have `dir` (entries by name, each with a cookie that only grows: a Map in
 *   cookie order), symlinks `target`; only regular files have extents and opens.
 * - Bytes in [allocatedOf, size) are a hole (no extent): they read as zeros; bytes past the
 *   size inside the extents are zero on the device.
 * - Who writes which field: `path`, `id`, `dir`, `nlink` and the attributes are the namespace's
 *   (namespace.ts, attrs.ts); `extents`
 *   grow and shrink in extents.ts and namespace.ts's truncate; `alloc` is extents.ts's
 *   allocation queue; `size` is set by truncate and by mediated writes; `writing`, `wgen`
 *   and `busy` are mediated.ts's (block-range lock, stale-read guard of the cache).
 */

/** Cache block and alignment unit, bytes. */
export const BLOCK = 4096;
/** Largest mediated read/write, bytes. */
export const MAX_MEDIATED = 1 << 20;

/**
 * One extent: file range [fileOffset, fileOffset + length) stored at `volOffset` of `volume`.
 * A private extent is the start of a volume of its own (volOffset 0; DAX hands out its
 * volume's Requests); a pooled one is a block range of a pool volume shared by small files
 * (extents.ts; never handed out: a DAX open makes the file private first).
 */
export interface Extent {
  volume: number;
  fileOffset: number;
  length: number;
  volOffset: number;
  pooled: boolean;
}

/** A time: seconds since the epoch and nanoseconds. */
export type Time = [number, number];

/** One directory entry: the inode it names and its readdir cookie (unique in the directory, growing). */
export interface DirEntry {
  ino: number;
  cookie: number;
}

/** A directory's contents. */
export interface Dir {
  /** Entries by name, in cookie order (an entry that changes is deleted and set again). */
  entries: Map<string, DirEntry>;
  /** The next cookie (1 and 2 are '.' and '..'). */
  nextCookie: number;
  /** The parent directory's ino (the root's is itself). */
  parent: number;
  /** Bytes the entries count against MAX_DIR_BYTES (name bytes + DIRENT_OVERHEAD each). */
  bytes: number;
}

export interface Inode {
  id: number;
  /** A name of the inode, for messages only (hard links have several). */
  path: string;
  /** S_IFMT type bits | permission bits. */
  mode: number;
  uid: number;
  gid: number;
  /** Links from directories (a directory: 2 + its subdirectories). 0: unlinked, alive while open. */
  nlink: number;
  atime: Time;
  mtime: Time;
  ctime: Time;
  dir?: Dir;
  target?: string;
  size: number;
  extents: Extent[];
  /**
   * Changed since the last metadata write (a persisted field: attributes, size, extents,
   * nlink, a directory's parent or cookie counter): the next log record carries its tuple.
   * Whoever changes such a field sets it (attrs.ts `touch` does). Setting it true also puts
   * the inode in `changes` (an accessor), so a record costs O(changes), not O(inodes).
   */
  dirty: boolean;
  /** The namespace's set of inodes changed since the last metadata write (set by Namespace when the inode joins it). */
  changes?: Set<Inode>;
  /** Serializes changes of the extents: allocation, a pooled file made private, a shrink (`serialized`). */
  alloc: Promise<unknown>;
  /** Mediated reads of a file with pooled extents in flight (their device part), so `makePrivate` frees the old ranges only after them. */
  reads?: Set<Promise<void>>;
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

/** The time now. */
export function now(): Time {
  const ns = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
  return [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)];
}

/** A fresh inode record: `mode` (type | perm), owner, nlink, times now, no extents. */
export function newInode(id: number, path: string, mode: number, uid: number, gid: number, nlink: number): Inode {
  const t = now();
  let dirty = true;
  const ino: Inode = {
    id, path, mode, uid, gid, nlink, atime: t, mtime: [...t], ctime: [...t], size: 0, extents: [], alloc: Promise.resolve(), writing: 0, wgen: 0,
    get dirty(): boolean {
      return dirty;
    },
    set dirty(v: boolean) {
      dirty = v;
      if (v) ino.changes?.add(ino);
    },
  };
  return ino;
}

/** Run `fn` after every extent change of `ino` queued before it (and before any queued after); answers its result. */
export function serialized(ino: Inode, fn: () => Promise<void>): Promise<void> {
  const next = ino.alloc.then(fn, fn);
  ino.alloc = next.catch(() => {});
  return next;
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

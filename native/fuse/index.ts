/**
 * libfuse3's low-level API (libfuse 3.14, fuse_lowlevel.h) through the `fractos_fuse` addon:
 * one FUSE session per mount, its kernel requests delivered as events, answered with reply
 * functions. Threading, request ids and the stop sequence: native/fuse/fuse.cc's header.
 *
 * Events (`FuseEventHandler`): `(op, id, ino, a, b, c, d, name, name2, data, uid, gid, pid)`;
 * per op the meaning of a..d, name, name2 and data is documented on `FuseOp`. A request (id
 * > 0) must be answered exactly once with a reply function; an answer to an unknown or
 * already answered id (after an interrupt, after stop) is ignored and returns false.
 */
import { FractosError } from '../../libfractos/errors.js';
import { loadNative, nativeError } from '../loader.js';

/** Event kinds (fuse.cc's enum Op). Arguments per kind: a, b, c, d (numbers), name, name2, data. */
export const FuseOp = {
  /** The kernel's INIT: a = max_write, b = capabilities wanted, c = protocol minor. No reply. */
  INIT: 1,
  /** The loop ended without a stop (the mount was removed): a = errno (ENODEV). Call stop. */
  EXIT: 2,
  /** FUSE_INTERRUPT of request `id`. No reply. */
  INTERRUPT: 3,
  /** forget(ino, a = nlookup) (also each entry of batch_forget). Already answered. */
  FORGET: 4,
  LOOKUP: 10, // ino = parent, name
  GETATTR: 11, // a = fh (0: none)
  SETATTR: 12, // a = to_set (FUSE_SET_ATTR_*), b = fh, c = 1 when fh is given, data = Float64Array [mode uid gid size atimeS atimeNs mtimeS mtimeNs]
  READLINK: 13,
  MKNOD: 14, // ino = parent, name, a = mode, b = rdev
  MKDIR: 15, // ino = parent, name, a = mode
  UNLINK: 16, // ino = parent, name
  RMDIR: 17, // ino = parent, name
  SYMLINK: 18, // ino = parent, name, name2 = target
  RENAME: 19, // ino = parent, name, a = newparent, name2 = newname, b = flags
  LINK: 20, // ino, a = newparent, name = newname
  OPEN: 21, // a = open flags
  READ: 22, // a = size, b = offset, c = fh
  WRITE: 23, // data = Buffer, b = offset, c = fh, d = 1 for a writepage
  FLUSH: 24, // a = fh
  RELEASE: 25, // a = fh, b = open flags
  FSYNC: 26, // a = fh, b = datasync
  OPENDIR: 27, // a = open flags
  READDIR: 28, // a = size, b = offset, c = fh
  READDIRPLUS: 29, // as READDIR
  RELEASEDIR: 30, // a = fh
  FSYNCDIR: 31, // a = fh, b = datasync
  STATFS: 32,
  ACCESS: 33, // a = mask
  CREATE: 34, // ino = parent, name, a = mode, b = open flags
  FALLOCATE: 35, // a = mode, b = offset, c = length, d = fh
} as const;

/** Layout of an attribute Float64Array (fuse.cc's A_*): 14 numbers. */
export const Attr = {
  INO: 0, MODE: 1, NLINK: 2, UID: 3, GID: 4, RDEV: 5, SIZE: 6, BLOCKS: 7,
  ATIME_S: 8, ATIME_NS: 9, MTIME_S: 10, MTIME_NS: 11, CTIME_S: 12, CTIME_NS: 13,
} as const;
export const ATTR_LEN = 14;

/** replyOpen/replyCreate flags (fuse_file_info bits). */
export const OpenReplyFlag = { DIRECT_IO: 1, KEEP_CACHE: 2, CACHE_READDIR: 4, NOFLUSH: 8, NONSEEKABLE: 16 } as const;

export type FuseEventHandler = (
  op: number, id: number, ino: number, a: number, b: number, c: number, d: number,
  name: string, name2: string, data: Buffer | Float64Array | undefined, uid: number, gid: number, pid: number,
) => void;

/** An opaque session (an External). */
export type FuseSession = object & { readonly __fuse: unique symbol };

export interface FuseConfig {
  /** Largest write the kernel sends, bytes (conn->max_write; libfuse's buffer allows 1 MiB). */
  maxWrite: number;
  /** Asynchronous requests the kernel keeps in flight (conn->max_background; libfuse's default is 12). */
  maxBackground: number;
  /** FUSE_CAP_WRITEBACK_CACHE. */
  writeback: boolean;
  /** FUSE_CAP_SPLICE_WRITE | SPLICE_MOVE for replies. */
  splice: boolean;
}

interface FuseBinding {
  mount(mountpoint: string, args: string[], cfg: FuseConfig, onEvent: FuseEventHandler): FuseSession;
  stop(s: FuseSession): void;
  replyErr(s: FuseSession, id: number, errno: number): boolean;
  replyEntry(s: FuseSession, id: number, ino: number, generation: number, attr: Float64Array | null, attrTimeout: number, entryTimeout: number): boolean;
  replyCreate(s: FuseSession, id: number, ino: number, generation: number, attr: Float64Array, attrTimeout: number, entryTimeout: number, fh: number, flags: number): boolean;
  replyAttr(s: FuseSession, id: number, attr: Float64Array, timeout: number): boolean;
  replyReadlink(s: FuseSession, id: number, target: string): boolean;
  replyOpen(s: FuseSession, id: number, fh: number, flags: number): boolean;
  replyWrite(s: FuseSession, id: number, count: number): boolean;
  replyBuf(s: FuseSession, id: number, bytes: Uint8Array | undefined): boolean;
  replyStatfs(s: FuseSession, id: number, f: Float64Array): boolean;
  /** Entries packed (-1: id unknown). attrs: ATTR_LEN + 1 (next offset) numbers per name. */
  replyDir(s: FuseSession, id: number, size: number, plus: boolean, names: string[], attrs: Float64Array, attrTimeout: number, entryTimeout: number): number;
  invalEntry(s: FuseSession, parent: number, name: string): number;
  invalInode(s: FuseSession, ino: number, off: number, len: number): number;
  pending(s: FuseSession): number;
  /**
   * The native DAX read path (fuse.cc "native DAX read path"; docs/mount.md "Native DAX
   * reads"): `cfg` = [okTag, errTag, fOffset, sBuffer, sOk, sErr, bytesOff, codeOff, direct, fFlags]
   * (the continuation tags, the blockdev layout, 1 to let the FUSE thread send its invokes
   * itself where the channel can: frame_hook.h's send_any_thread, and the write layout's
   * flags offset: native writes only when it is fOffset + 12, 0xffffffff for none), slot i = `region`[at + i x slotBytes, +
   * slotBytes), `caps` = 3 per slot (its Memory, onSuccess, onError; the continuations preset
   * with the slot index, u32 at offset 0). Returns the frame hook (a napi External) for
   * Process.setFrameHook(hook, session). Errors: EINVAL (shapes; a second setup).
   */
  daxSetup(s: FuseSession, cfg: Uint32Array, region: ArrayBuffer, at: number, slotBytes: number, caps: Uint32Array): object;
  /** Reads of handle `fh` (ino, within `size` bytes) may be served natively; extents: 4 numbers each (fileOffset, length, readCid, writeCid). False: no native path or not attached. */
  daxFile(s: FuseSession, fh: number, ino: number, size: number, blockSize: number, extents: Float64Array): boolean;
  /** Handle `fh` is served by JS only from now on; true when it wrote natively since it was registered. */
  daxForget(s: FuseSession, fh: number): boolean;
  /** Counters of the native path (null: none). */
  daxStats(s: FuseSession): DaxStats | null;
}

/** daxStats: reads and writes served natively, ops handed to JS after an error (fallbacks), reads it did not take (declined: no extent, too large, no slot), ops answered with an error (detach, stop), in flight, invokes sent by the FUSE thread itself, handles registered, hook attached. */
export interface DaxStats {
  reads: number;
  writes: number;
  fallbacks: number;
  declined: number;
  errors: number;
  inflight: number;
  /** Invokes the FUSE thread sent itself (no hand-off). */
  direct: number;
  files: number;
  attached: boolean;
  /** Mean ns from the FUSE thread taking a read to its invoke sent on the channel's thread (the hand-off). */
  handoffNs: number;
  /** Mean ns from the invoke sent to the kernel answered (Controller, blockdev, continuation). */
  serviceNs: number;
}

export type { FuseBinding };

/** Load the addon (native/loader.ts order). Throws NativeUnavailableError('fuse') (ENODEV). */
export function loadFuse(): FuseBinding {
  return loadNative<FuseBinding>('fuse').binding;
}

/**
 * Mount a FUSE file system at `mountpoint` (an existing directory) with libfuse `args`
 * (e.g. ['-o', 'fsname=x,default_permissions']); `onEvent` receives every request.
 * Errors: ENODEV (addon or /dev/fuse missing), the errno of fuse_session_mount as its code
 * (EPERM, ENOENT, ...), EINVAL for options libfuse rejects; the message carries libfuse's reason.
 */
export function fuseMount(mountpoint: string, args: string[], cfg: FuseConfig, onEvent: FuseEventHandler): { binding: FuseBinding; session: FuseSession } {
  const binding = loadFuse();
  try {
    return { binding, session: binding.mount(mountpoint, args, cfg, onEvent) };
  } catch (err) {
    const e = nativeError(err, `mount ${mountpoint}`);
    throw e instanceof FractosError ? e : new FractosError('EIO', String(e));
  }
}

/**
 * `fractos mount`: a FUSE file system (libfuse3 low-level API, native/fuse/) that is a
 * FractOS client Process of the FS service. Every VFS operation maps to one Request of the
 * FS's inode contract (fs-service/index.ts; nothing else of the FS is imported):
 *
 *   lookup -> lookup            getattr -> getattr        setattr -> setattr (valid = to_set)
 *   mknod -> mknod              mkdir -> mkdir            symlink -> symlink
 *   readlink -> readlink        link -> link              unlink / rmdir -> unlink / rmdir
 *   rename -> rename (flags)    open -> openino
 *   create -> mknod, the FS open deferred to the handle's first read/write/truncate
 *     (createino with --dax, or when the name appeared meanwhile)
 *   read / write -> the open's read / write Requests (mediated), or with --dax the blockdev
 *     Requests of the file's extents (DAX: the FS is not on the data path)
 *   release -> the open's close    fsync / fsyncdir -> fsync    readdir -> readdir (cookies)
 *   statfs -> statfs            opendir / releasedir / flush: local
 *   forget / batch_forget: local lookup counts (the FS keeps inos valid without them)
 *
 * FUSE nodeids are the FS's inos (ROOT_INO = FUSE_ROOT_ID = 1; never reused, generation 1).
 * The caller's uid/gid (fuse_ctx) go with every namespace Request; the kernel also checks
 * permissions itself (default_permissions). Errors: a FractosError code is answered as the
 * errno of that name (ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, ENAMETOOLONG, EACCES,
 * EPERM, ...); codes with no errno (EDISCONNECTED, EREVOKED, ETIMEDOUT, protocol errors): EIO.
 *
 * Data: one shared region of `slots` x `maxWrite` bytes registered once as Memory, a
 * diminished Memory cap per slot; a read is answered straight from its slot (fuse_reply_buf:
 * one copy into the kernel), a write is copied into a slot and written from there. No slot
 * free: the op waits in a FIFO (the kernel bounds what is in flight: max_background).
 *
 * Caches (docs/mount.md): attribute and entry timeouts (`attrTimeout`, default 1 s, negative
 * entries too), keep_cache on open when the file's mtime and size are what they were at this
 * mount's last open of it, auto_inval_data; no writeback cache by default (`writeback`),
 * no splice (see the doc).
 *
 * Lifetime: `close()` unmounts (pending requests answered ENOTCONN). The mount ends by
 * itself, emitting 'exit' with the reason, when the FS goes away (a monitor on its lookup
 * Request), when the Controller does (the Process channel closes), or when it is unmounted
 * underneath (fusermount3 -u): the mount point then answers ENOTCONN, never hangs.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { constants as osc } from 'node:os';
import { FractosError } from '../libfractos/errors.js';
import { connect, type Process, type SharedRegion } from '../libfractos/process.js';
import { Perm } from '../libfractos/protocol.js';
import { IO_LAYOUT, IoPort } from '../blockdev-adaptor/client.js';
import { tagOf } from '../libfractos/schema.js';
import {
  FsClient, NAME_MAX, OpenFlags, OpenMode, RenameFlags, ROOT_INO, S_IFDIR, S_IFLNK, S_IFREG, DirType, SetAttr,
  type Attr as FsAttr, type EntryAttr, type OpenFile, type Who,
} from '../fs-service/index.js';
import { Attr, ATTR_LEN, FuseOp, OpenReplyFlag, fuseMount, type DaxStats, type FuseBinding, type FuseSession } from '../native/fuse/index.js';
import { prepareMountpoint } from './mountpoint.js';

export interface MountOptions {
  /** Controller address (unix:PATH or tcp://HOST:PORT). */
  controller: string;
  /** An existing directory. */
  mountpoint: string;
  /** Bootstrap prefix of the FS (default `fs`). */
  fs?: string;
  /** File data through the file's DAX Requests (the blockdev's) instead of the FS. */
  dax?: boolean;
  /** Attribute and entry cache timeout, seconds (default 1, or EXCLUSIVE_TIMEOUT with `exclusive`; 0 disables the kernel's caches). */
  attrTimeout?: number;
  /**
   * This mount is the only client that changes the FS (a stack of its own, as the fio runner
   * starts): every change then goes through this kernel, which keeps its caches right, so
   * attributes and entries (negative ones too) are cached for EXCLUSIVE_TIMEOUT unless
   * `attrTimeout` is given. Another client's changes would stay invisible that long.
   */
  exclusive?: boolean;
  /** FUSE writeback cache (default false; see docs/mount.md). */
  writeback?: boolean;
  /** Data slots (default 32): reads and writes in flight at once. */
  slots?: number;
  /** Largest read/write the kernel sends, bytes (default 1 MiB, the most libfuse 3.14 takes). */
  maxWrite?: number;
  /**
   * With `dax`: serve DAX reads and whole-block writes inside the file in C++, without
   * entering JS (docs/mount.md "Native DAX reads"; default true, the environment's
   * FRACTOS_MOUNT_NATIVE=0 turns it off). Unix channels only (the frame hook).
   */
  nativeDax?: boolean;
  /**
   * Native DAX reads: the FUSE thread sends each invoke straight onto the Controller's ring
   * when it can, instead of waking the channel's thread to send it (default false: not
   * measured better than the hand-off yet, docs/mount.md; FRACTOS_MOUNT_NATIVE=direct turns
   * it on).
   */
  nativeDirect?: boolean;
  /** How long to wait for the FS's Requests (ms, default 30 s). */
  waitMs?: number;
  log?: { info(o: object, m?: string): void; warn(o: object, m?: string): void };
}

type Opts = Required<Pick<MountOptions, 'attrTimeout' | 'dax' | 'writeback' | 'slots' | 'maxWrite' | 'nativeDax' | 'nativeDirect'>> & MountOptions;

/** Native DAX read slots: reads in flight natively at once, and the largest (bytes). */
const NATIVE_SLOTS = 64;
const NATIVE_SLOT_BYTES = 256 * 1024;

/** The native path's caps (fuse.cc daxSetup): per slot its Memory, onSuccess and onError. */
interface NativeSetup {
  okTag: number;
  errTag: number;
  at: number;
  caps: Uint32Array;
}

/** Attribute and entry timeout of an `exclusive` mount, seconds (passthrough_ll's cache=always: a day). */
export const EXCLUSIVE_TIMEOUT = 86400;
/** Most names an exclusive mount keeps in #names, all directories together; past it a directory's set is dropped. */
const NAMES_MAX = 1 << 20;
/** Most directories whose attributes the mount keeps (#dirAttrs); past it the cache starts over. */
const DIR_ATTRS_MAX = 4096;

/** Why a mount ended by itself. */
export type MountExit = 'fs-gone' | 'controller-gone' | 'unmounted';

const E = osc.errno as Record<string, number>;
const EIO = E.EIO!;
const O_ACCMODE = 3;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_TRUNC = 0o1000;
const O_EXCL = 0o200;

/** The errno answered for `err` (see the module comment). */
export function errnoOf(err: unknown): number {
  const code = (err as { code?: unknown })?.code;
  if (typeof code !== 'string' || code === 'ETIMEDOUT') return EIO;
  return E[code] ?? EIO;
}

/** Ops without side effects: answered EINTR at once when the kernel interrupts them. */
const INTERRUPTIBLE = new Set<number>([FuseOp.LOOKUP, FuseOp.GETATTR, FuseOp.READLINK, FuseOp.READ, FuseOp.READDIR, FuseOp.READDIRPLUS, FuseOp.STATFS]);

interface Node {
  nlookup: number;
  /** mtime (s, ns) and size at this mount's last open, for keep_cache. */
  openedMtime: number;
  openedSize: number;
  attr: FsAttr | null;
}

interface Handle {
  fh: number;
  ino: number;
  file: OpenFile | null;
  /**
   * A file CREATE made (mknod) without opening it in the FS: the FS open (OpenMode `mode`) is
   * made by the first op that needs it (read, write, a truncate through the handle), so a
   * create + close (touch, tar of empty files, lock files) costs one RPC, not an open and a
   * close too. `opening` is that open in flight.
   */
  deferred?: { mode: number; opening?: Promise<OpenFile> };
  /** Largest size this handle knows of (DAX: writes within it need no FS). */
  size: number;
  /** A DAX write happened: the FS is told the new mtime at release. */
  daxWritten: boolean;
  /** A dax_map refresh is running. */
  remapping: boolean;
}

export class FsMount extends EventEmitter {
  readonly mountpoint: string;
  readonly proc: Process;
  readonly fs: FsClient;
  readonly #opts: Opts;
  readonly #port: IoPort;
  readonly #region: SharedRegion;
  readonly #slotCids: number[];
  readonly #freeSlots: number[];
  readonly #slotWaiters: ((slot: number) => void)[] = [];
  readonly #nodes = new Map<number, Node>();
  readonly #handles = new Map<number, Handle>();
  /**
   * Directory attributes as the FS answered them, and until when (performance.now() ms) they
   * count as fresh: the attribute timeout after that answer. Every namespace change answers
   * its directories' attributes (EntryReply, unlink/rmdir, RenameReply), so the GETATTR that
   * `default_permissions` sends for a directory after each change (the kernel invalidates a
   * changed directory's attributes) is answered from here, no Request: exactly as fresh as
   * the kernel's own attribute cache would be. A change whose reply does not carry them
   * (an error, createino) drops the entry; rename and rmdir drop them all (a moved or removed
   * directory changes too). Bounded: DIR_ATTRS_MAX entries.
   */
  readonly #dirAttrs = new Map<number, { a: FsAttr; until: number }>();
  /**
   * Exclusive mounts only: every name of each directory this mount made (mkdir) and has seen
   * every change of since (all of them go through this mount). A LOOKUP of a name not there
   * is answered ENOENT (a negative entry) without a Request: the lookup the kernel sends
   * before each create, and before a rename to a new name. A change that failed (the
   * directory's state is then not known here) drops the directory's set; so does a directory
   * past NAMES_MAX names in all.
   */
  readonly #names = new Map<number, Set<string>>();
  #namesCount = 0;
  /** Requests in JS's hands: id -> op (for interrupts). */
  readonly #inflight = new Map<number, number>();
  #nextFh = 1;
  #fuse!: FuseBinding;
  #session: FuseSession | null = null;
  #closing = false;
  /** The native DAX read path is set up and attached to the Process's channel. */
  #native = false;
  readonly #nativeSetup: NativeSetup | null;
  /** Per-op counters, for stats and tests. */
  readonly counts = { requests: 0, errors: 0, interrupted: 0, daxReads: 0, daxWrites: 0, mediatedReads: 0, mediatedWrites: 0, lookups: 0, readdirPlus: 0, opens: 0, dirAttrHits: 0, negativeHits: 0 };

  private constructor(opts: Opts, proc: Process, fs: FsClient, region: SharedRegion, slotCids: number[], nativeSetup: NativeSetup | null) {
    super();
    this.#nativeSetup = nativeSetup;
    this.mountpoint = opts.mountpoint;
    this.#opts = opts;
    this.proc = proc;
    this.fs = fs;
    this.#port = new IoPort(proc);
    this.#region = region;
    this.#slotCids = slotCids;
    this.#freeSlots = slotCids.map((_, i) => i);
  }

  /**
   * Connect to the Controller, find the FS, register the data slots, mount.
   * Errors: EBUSY (a live mount at the point), ENOENT/ENOTDIR (mount point), ENOENT (no FS
   * named `fs` within waitMs), ENODEV (no fuse addon or /dev/fuse), EINVAL (options), and
   * fuse_session_mount's errno (EPERM: not allowed to mount).
   */
  static async mount(o: MountOptions): Promise<FsMount> {
    const opts = { dax: false, writeback: false, slots: 32, maxWrite: 1 << 20, nativeDax: process.env.FRACTOS_MOUNT_NATIVE !== '0', nativeDirect: process.env.FRACTOS_MOUNT_NATIVE === 'direct', ...o, attrTimeout: o.attrTimeout ?? (o.exclusive ? EXCLUSIVE_TIMEOUT : 1) };
    if (!(opts.slots >= 1 && opts.slots <= 1024 && Number.isInteger(opts.slots))) throw new FractosError('EINVAL', `slots ${opts.slots} not in 1..1024`);
    if (!(opts.maxWrite >= 4096 && opts.maxWrite <= (1 << 20) && opts.maxWrite % 4096 === 0)) throw new FractosError('EINVAL', `maxWrite ${opts.maxWrite} not a multiple of 4096 in 4 KiB..1 MiB`);
    if (!(opts.attrTimeout >= 0 && opts.attrTimeout <= 86400)) throw new FractosError('EINVAL', `attrTimeout ${opts.attrTimeout} not in 0..86400 s`);
    const stale = await prepareMountpoint(opts.mountpoint);
    if (stale) opts.log?.warn({ mountpoint: opts.mountpoint }, 'removed a stale FUSE mount (its server had died)');
    const proc = await connect(opts.controller, { name: `mount:${opts.mountpoint}`.slice(0, 64) });
    try {
      const fs = await FsClient.connect(proc, opts.fs ?? 'fs', opts.waitMs ?? 30_000);
      // Shared whole: the FS given a slot maps the region and copies straight into it (no memory_copy).
      const native = opts.dax && opts.nativeDax;
      const at = opts.slots * opts.maxWrite;
      const { cid, region } = await proc.memoryCreateShared(at + (native ? NATIVE_SLOTS * NATIVE_SLOT_BYTES : 0), Perm.RW, { shareWhole: true });
      const slotCids: number[] = [];
      for (let i = 0; i < opts.slots; i++) slotCids.push(await proc.memoryDiminish(cid, i * opts.maxWrite, opts.maxWrite));
      const m = new FsMount(opts, proc, fs, region, slotCids, native ? await FsMount.#nativeCaps(proc, cid, at) : null);
      await m.#port.reserve(Math.min(opts.slots, 64));
      await m.#start();
      return m;
    } catch (err) {
      await proc.close().catch(() => {});
      throw err;
    }
  }

  /** The native path's slots: a Memory cap and a continuation pair (preset with the slot index) each. */
  static async #nativeCaps(proc: Process, cid: number, at: number): Promise<NativeSetup> {
    const salt = randomBytes(6).toString('hex');
    const okTag = tagOf(`mount.dax.ok.${salt}`);
    const errTag = tagOf(`mount.dax.err.${salt}`);
    const caps = new Uint32Array(NATIVE_SLOTS * 3);
    await Promise.all(Array.from({ length: NATIVE_SLOTS }, async (_, i) => {
      const id = Buffer.alloc(4);
      id.writeUInt32LE(i, 0);
      const [mem, ok, err] = await Promise.all([
        proc.memoryDiminish(cid, at + i * NATIVE_SLOT_BYTES, NATIVE_SLOT_BYTES),
        proc.requestCreate(okTag, { imms: [{ offset: 0, bytes: id }] }),
        proc.requestCreate(errTag, { imms: [{ offset: 0, bytes: id }] }),
      ]);
      caps.set([mem, ok, err], 3 * i);
    }));
    return { okTag, errTag, at, caps };
  }

  async #start(): Promise<void> {
    // The FS going away: its Requests' owner fails (or they are revoked): unmount.
    await this.proc.monitorReceive(this.fs.roots.lookup, () => this.#exit('fs-gone'));
    this.proc.on('close', () => this.#exit('controller-gone'));
    const fsName = (this.#opts.fs ?? 'fs').replace(/[^A-Za-z0-9._-]/g, '_');
    const o = [`fsname=fractos:${fsName}`, 'subtype=fractos', 'default_permissions'];
    if (process.getuid?.() === 0) o.push('allow_other');
    const { binding, session } = fuseMount(this.mountpoint, ['-o', o.join(',')], {
      maxWrite: this.#opts.maxWrite, maxBackground: Math.max(12, this.#opts.slots * 2), writeback: this.#opts.writeback, splice: false,
    }, (op, id, ino, a, b, c, d, name, name2, data, uid, gid) => this.#onEvent(op, id, ino, a, b, c, d, name, name2, data, uid, gid));
    this.#fuse = binding;
    this.#session = session;
    const n = this.#nativeSetup;
    if (n) {
      const L = IO_LAYOUT;
      const hook = binding.daxSetup(session, new Uint32Array([n.okTag, n.errTag, L.offset, L.buffer, L.onSuccess, L.onError, L.bytes, L.code, this.#opts.nativeDirect ? 1 : 0, this.#opts.writeback ? 0xffffffff : L.flags]), this.#region.buffer, n.at, NATIVE_SLOT_BYTES, n.caps);
      this.#native = this.proc.setFrameHook(hook, session);
      if (!this.#native) this.#opts.log?.warn({ mountpoint: this.mountpoint }, 'native DAX reads off: the channel takes no frame hook (tcp)');
    }
  }

  /** Counters of the native DAX read path (null: off). */
  get nativeStats(): DaxStats | null {
    return this.#session && this.#native ? this.#fuse.daxStats(this.#session) : null;
  }

  /** Let the native path serve reads of `h` (a DAX open) within its size, with its extents. */
  #nativeFile(h: Handle): void {
    const f = h.file;
    if (!this.#native || !this.#session || !f?.dax || !this.#handles.has(h.fh)) return;
    const x = new Float64Array(f.extents.length * 4);
    f.extents.forEach((e, i) => x.set([e.fileOffset, e.length, e.read, e.write], 4 * i));
    this.#fuse.daxFile(this.#session, h.fh, h.ino, h.size, f.blockSize || 4096, x);
  }

  /** Stop native service of handle `fh` (`h`: record a native write for its mtime at release). */
  #nativeForget(fh: number, h?: Handle): void {
    if (this.#native && this.#session && this.#fuse.daxForget(this.#session, fh) && h) h.daxWritten = true;
  }

  /** Requests received and not answered yet. */
  get pending(): number {
    return this.#session ? this.#fuse.pending(this.#session) : 0;
  }

  /** Unmount (pending requests answered ENOTCONN), close every open, leave the Controller. Idempotent. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#session) this.#fuse.stop(this.#session);
    if (this.#native) this.proc.setFrameHook(null);
    this.#session = null;
    const files = [...this.#handles.values()].map((h) => h.file).filter((f): f is OpenFile => f !== null);
    this.#handles.clear();
    await Promise.all(files.map((f) => this.fs.close(f).catch(() => {})));
    await this.#port.close().catch(() => {});
    await this.proc.close().catch(() => {});
  }

  #exit(why: MountExit): void {
    if (this.#closing) return;
    this.#opts.log?.warn({ mountpoint: this.mountpoint, why }, 'mount ends');
    this.close().finally(() => this.emit('exit', why));
  }

  // ---- answers ------------------------------------------------------------------------

  #fail(id: number, err: unknown): void {
    this.#inflight.delete(id);
    this.counts.errors++;
    if (this.#session) this.#fuse.replyErr(this.#session, id, errnoOf(err));
  }

  #ok(id: number): void {
    this.#inflight.delete(id);
    if (this.#session) this.#fuse.replyErr(this.#session, id, 0);
  }

  readonly #attrBuf = new Float64Array(ATTR_LEN);

  #attrArray(a: FsAttr, out = this.#attrBuf): Float64Array {
    out[Attr.INO] = a.ino;
    out[Attr.MODE] = a.mode;
    out[Attr.NLINK] = a.nlink;
    out[Attr.UID] = a.uid;
    out[Attr.GID] = a.gid;
    out[Attr.RDEV] = 0;
    out[Attr.SIZE] = a.size;
    out[Attr.BLOCKS] = a.blocks;
    out[Attr.ATIME_S] = a.atimeSec;
    out[Attr.ATIME_NS] = a.atimeNsec;
    out[Attr.MTIME_S] = a.mtimeSec;
    out[Attr.MTIME_NS] = a.mtimeNsec;
    out[Attr.CTIME_S] = a.ctimeSec;
    out[Attr.CTIME_NS] = a.ctimeNsec;
    return out;
  }

  #node(a: FsAttr): Node {
    let n = this.#nodes.get(a.ino);
    if (!n) {
      n = { nlookup: 0, openedMtime: -1, openedSize: -1, attr: a };
      this.#nodes.set(a.ino, n);
    }
    n.attr = a;
    return n;
  }

  /** Answer an entry (lookup, mknod, mkdir, symlink, link): counts one lookup of the ino. */
  #entry(id: number, a: FsAttr): void {
    this.#inflight.delete(id);
    if (!this.#session) return;
    const t = this.#opts.attrTimeout;
    if (this.#fuse.replyEntry(this.#session, id, a.ino, 1, this.#attrArray(a), t, t)) this.#node(a).nlookup++;
  }

  #attr(id: number, a: FsAttr): void {
    this.#inflight.delete(id);
    this.#node(a);
    if (this.#session) this.#fuse.replyAttr(this.#session, id, this.#attrArray(a), this.#opts.attrTimeout);
  }

  /** Note a directory's attributes as the FS just answered them (see #dirAttrs). */
  #noteDir(a: FsAttr): void {
    const t = this.#opts.attrTimeout;
    if (t <= 0 || (a.mode & 0o170000) !== S_IFDIR) return;
    if (this.#dirAttrs.size >= DIR_ATTRS_MAX && !this.#dirAttrs.has(a.ino)) this.#dirAttrs.clear();
    this.#dirAttrs.set(a.ino, { a, until: performance.now() + t * 1000 });
  }

  #nameAdd(dir: number, name: string): void {
    const set = this.#names.get(dir);
    if (!set || set.has(name)) return;
    if (this.#namesCount >= NAMES_MAX) return this.#namesDrop(dir);
    set.add(name);
    this.#namesCount++;
  }

  #nameDel(dir: number, name: string): void {
    if (this.#names.get(dir)?.delete(name)) this.#namesCount--;
  }

  #namesDrop(dir: number): void {
    const set = this.#names.get(dir);
    if (!set) return;
    this.#namesCount -= set.size;
    this.#names.delete(dir);
  }

  /** Answer LOOKUP of `name` in `dir` ENOENT from #names when the directory is known whole and has no such name; false otherwise. */
  #knownMissing(id: number, dir: number, name: string): boolean {
    const set = this.#names.get(dir);
    // Long names go to the FS (ENAMETOOLONG is its answer, not ENOENT).
    if (!set || set.has(name) || Buffer.byteLength(name) > NAME_MAX) return false;
    this.counts.negativeHits++;
    this.#inflight.delete(id);
    if (this.#session) this.#fuse.replyEntry(this.#session, id, 0, 0, null, 0, this.#opts.attrTimeout);
    return true;
  }

  /** Answer GETATTR of `ino` from #dirAttrs when fresh (for the rest of its timeout); false when not there. */
  #cachedDir(id: number, ino: number): boolean {
    const c = this.#dirAttrs.get(ino);
    if (!c) return false;
    const left = c.until - performance.now();
    if (left <= 0) {
      this.#dirAttrs.delete(ino);
      return false;
    }
    this.counts.dirAttrHits++;
    this.#inflight.delete(id);
    if (this.#session) this.#fuse.replyAttr(this.#session, id, this.#attrArray(c.a), left / 1000);
    return true;
  }

  /**
   * FOPEN_NOFLUSH on file opens unless the writeback cache is on: FLUSH (every close(2)) has
   * nothing to do here (locks are the kernel's, writes are the FS's when answered), so the
   * kernel need not send it: one request less per close. With --writeback the kernel sends
   * it anyway (it writes dirty pages back first).
   */
  #noFlush(): number {
    return this.#opts.writeback ? 0 : OpenReplyFlag.NOFLUSH;
  }

  #openFlags(ino: number, f: OpenFile): number {
    const n = this.#node(f.attr);
    const mt = f.attr.mtimeSec * 1e9 + f.attr.mtimeNsec;
    const keep = n.openedMtime === mt && n.openedSize === f.attr.size;
    n.openedMtime = mt;
    n.openedSize = f.attr.size;
    void ino;
    return (keep ? OpenReplyFlag.KEEP_CACHE : 0) | this.#noFlush();
  }

  #newHandle(ino: number, file: OpenFile | null): number {
    if (file) this.counts.opens++;
    const fh = this.#nextFh++;
    const h: Handle = { fh, ino, file, size: file?.size ?? 0, daxWritten: false, remapping: false };
    this.#handles.set(fh, h);
    this.#nativeFile(h);
    return fh;
  }

  // ---- dispatch -------------------------------------------------------------------------

  #onEvent(op: number, id: number, ino: number, a: number, b: number, c: number, d: number, name: string, name2: string, data: Buffer | Float64Array | undefined, uid: number, gid: number): void {
    try {
      this.#dispatch(op, id, ino, a, b, c, d, name, name2, data, uid, gid);
    } catch (err) {
      // A synchronous throw (a name FsClient refuses before sending: ENAMETOOLONG) is the answer.
      if (id) this.#fail(id, err);
    }
  }

  #dispatch(op: number, id: number, ino: number, a: number, b: number, c: number, d: number, name: string, name2: string, data: Buffer | Float64Array | undefined, uid: number, gid: number): void {
    switch (op) {
      case FuseOp.INIT:
        this.emit('ready', { maxWrite: a, want: b, protoMinor: c });
        return;
      case FuseOp.EXIT:
        this.#exit('unmounted');
        return;
      case FuseOp.INTERRUPT: {
        const what = this.#inflight.get(id);
        if (what !== undefined && INTERRUPTIBLE.has(what)) {
          this.counts.interrupted++;
          this.#fail(id, { code: 'EINTR' });
        }
        return;
      }
      case FuseOp.FORGET: {
        const n = this.#nodes.get(ino);
        if (n && (n.nlookup -= a) <= 0) this.#nodes.delete(ino);
        return;
      }
    }
    this.counts.requests++;
    this.#inflight.set(id, op);
    const who: Who = { uid, gid };
    const fail = (e: unknown): void => this.#fail(id, e);
    const entry = (x: FsAttr): void => this.#entry(id, x);
    const attr = (x: FsAttr): void => this.#attr(id, x);
    const ok = (): void => this.#ok(id);
    // A change in directory `ino`: answered with the entry and the directory's attributes, or failed (#dirAttrs).
    const made = (x: EntryAttr): void => {
      this.#noteDir(x.parent);
      this.#nameAdd(ino, name);
      entry(x);
    };
    const dirFail = (e: unknown): void => {
      this.#dirAttrs.delete(ino);
      this.#namesDrop(ino);
      fail(e);
    };
    const fs = this.fs;
    switch (op) {
      case FuseOp.LOOKUP:
        this.counts.lookups++;
        if (this.#knownMissing(id, ino, name)) return;
        fs.lookup(ino, name, who).then((x) => {
          this.#noteDir(x);
          entry(x);
        }, (e: unknown) => {
          // A negative entry, cached for the entry timeout (the kernel drops it on a create here).
          if ((e as { code?: string }).code === 'ENOENT' && this.#session) {
            this.#inflight.delete(id);
            this.#fuse.replyEntry(this.#session, id, 0, 0, null, 0, this.#opts.attrTimeout);
          } else fail(e);
        });
        return;
      case FuseOp.GETATTR:
        if (this.#cachedDir(id, ino)) return;
        fs.getattr(ino, who).then((x) => {
          this.#noteDir(x);
          attr(x);
        }, fail);
        return;
      case FuseOp.SETATTR:
        this.#setattr(id, ino, a, b, c, data as Float64Array, who);
        return;
      case FuseOp.READLINK:
        fs.readlink(ino, who).then((t) => {
          this.#inflight.delete(id);
          if (this.#session) this.#fuse.replyReadlink(this.#session, id, t);
        }, fail);
        return;
      case FuseOp.MKNOD:
        if ((a & 0o170000) !== 0 && (a & 0o170000) !== S_IFREG) return fail({ code: 'EPERM' });
        fs.mknod(ino, name, a, who).then(made, dirFail);
        return;
      case FuseOp.MKDIR:
        fs.mkdir(ino, name, a | S_IFDIR, who).then((x) => {
          // A directory this mount made is empty: known whole from now on (exclusive mounts).
          if (this.#opts.exclusive && !this.#names.has(x.ino)) this.#names.set(x.ino, new Set());
          made(x);
        }, dirFail);
        return;
      case FuseOp.SYMLINK:
        fs.symlink(ino, name, name2, who).then(made, dirFail);
        return;
      case FuseOp.LINK:
        // The entry goes into directory `a` (FUSE: ino is the file, a the new parent).
        fs.link(ino, a, name, who).then((x) => {
          this.#noteDir(x.parent);
          this.#nameAdd(a, name);
          entry(x);
        }, (e: unknown) => {
          this.#dirAttrs.delete(a);
          this.#namesDrop(a);
          fail(e);
        });
        return;
      case FuseOp.UNLINK:
        this.#openDeferred().then(() => fs.unlink(ino, name, who)).then((d) => {
          this.#noteDir(d);
          this.#nameDel(ino, name);
          ok();
        }, dirFail);
        return;
      case FuseOp.RMDIR:
        fs.rmdir(ino, name, who).then((d) => {
          this.#dirAttrs.clear();
          this.#noteDir(d);
          this.#nameDel(ino, name);
          ok();
        }, (e: unknown) => {
          this.#dirAttrs.clear();
          this.#namesDrop(ino);
          fail(e);
        });
        return;
      case FuseOp.RENAME:
        this.#openDeferred().then(() => fs.rename(ino, name, a, name2, b, who)).then((r) => {
          this.#dirAttrs.clear();
          this.#noteDir(r.parent);
          this.#noteDir(r.newParent);
          // EXCHANGE keeps both names; otherwise the name moves (over a target or not).
          if (!(b & RenameFlags.EXCHANGE)) {
            this.#nameDel(ino, name);
            this.#nameAdd(a, name2);
          }
          ok();
        }, (e: unknown) => {
          this.#dirAttrs.clear();
          this.#namesDrop(ino);
          this.#namesDrop(a);
          fail(e);
        });
        return;
      case FuseOp.OPEN:
        fs.openIno(ino, this.#mode(a), { flags: a & O_TRUNC ? OpenFlags.TRUNC : 0, dax: this.#opts.dax }, who).then((f) => {
          this.#inflight.delete(id);
          const fh = this.#newHandle(ino, f);
          if (!this.#session || !this.#fuse.replyOpen(this.#session, id, fh, this.#openFlags(ino, f))) this.#release(fh);
        }, fail);
        return;
      case FuseOp.CREATE:
        if (!this.#opts.dax) {
          this.#createDeferred(id, ino, name, a, b, who);
          return;
        }
        this.#dirAttrs.delete(ino);
        fs.createIno(ino, name, (a & 0o7777) | S_IFREG, this.#mode(b), { flags: (b & O_TRUNC ? OpenFlags.TRUNC : 0) | (b & O_EXCL ? OpenFlags.EXCL : 0), dax: this.#opts.dax }, who).then((f) => {
          this.#nameAdd(ino, name);
          this.#inflight.delete(id);
          const fh = this.#newHandle(f.attr.ino, f);
          const t = this.#opts.attrTimeout;
          const flags = this.#openFlags(f.attr.ino, f);
          if (this.#session && this.#fuse.replyCreate(this.#session, id, f.attr.ino, 1, this.#attrArray(f.attr), t, t, fh, flags)) this.#node(f.attr).nlookup++;
          else this.#release(fh);
        }, dirFail);
        return;
      case FuseOp.READ:
        this.#read(id, a, b, c);
        return;
      case FuseOp.WRITE:
        this.#write(id, data as Buffer, b, c);
        return;
      case FuseOp.FLUSH:
        ok();
        return;
      case FuseOp.RELEASE:
        this.#release(a).then(ok, ok);
        return;
      case FuseOp.FSYNC:
      case FuseOp.FSYNCDIR:
        fs.fsync(ino, b !== 0, who).then(ok, fail);
        return;
      case FuseOp.OPENDIR: {
        const fh = this.#newHandle(ino, null);
        this.#inflight.delete(id);
        if (!this.#session || !this.#fuse.replyOpen(this.#session, id, fh, 0)) this.#handles.delete(fh);
        return;
      }
      case FuseOp.READDIR:
      case FuseOp.READDIRPLUS:
        if (op === FuseOp.READDIRPLUS) this.counts.readdirPlus++;
        this.#readdir(id, ino, a, b, who, op === FuseOp.READDIRPLUS);
        return;
      case FuseOp.RELEASEDIR:
        this.#handles.delete(a);
        ok();
        return;
      case FuseOp.STATFS:
        fs.statfs(who).then((s) => {
          this.#inflight.delete(id);
          if (this.#session) this.#fuse.replyStatfs(this.#session, id, new Float64Array([s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.ffree, s.namemax]));
        }, fail);
        return;
      default:
        // ACCESS (default_permissions: the kernel checks), FALLOCATE.
        fail({ code: op === FuseOp.FALLOCATE ? 'EOPNOTSUPP' : 'ENOSYS' });
    }
  }

  #mode(flags: number): number {
    const acc = flags & O_ACCMODE;
    // The writeback cache reads pages of write-only files to fill partial writes.
    if (this.#opts.writeback && acc === O_WRONLY) return OpenMode.RW;
    return acc === O_RDWR ? OpenMode.RW : acc === O_WRONLY ? OpenMode.WRITE : OpenMode.READ;
  }

  /**
   * CREATE of a mediated mount: mknod, answered with a handle whose FS open is deferred
   * (Handle.deferred). The name existing already (a race with another client: the kernel
   * sends CREATE after a negative lookup) is EEXIST with O_EXCL, else an ordinary createino.
   */
  #createDeferred(id: number, parent: number, name: string, mode: number, flags: number, who: Who): void {
    this.fs.mknod(parent, name, (mode & 0o7777) | S_IFREG, who).then((attr) => {
      this.#noteDir(attr.parent);
      this.#nameAdd(parent, name);
      this.#inflight.delete(id);
      const fh = this.#nextFh++;
      this.#handles.set(fh, { fh, ino: attr.ino, file: null, deferred: { mode: this.#mode(flags) }, size: 0, daxWritten: false, remapping: false });
      const t = this.#opts.attrTimeout;
      if (this.#session && this.#fuse.replyCreate(this.#session, id, attr.ino, 1, this.#attrArray(attr), t, t, fh, this.#noFlush())) this.#node(attr).nlookup++;
      else this.#handles.delete(fh);
    }, (e: unknown) => {
      this.#dirAttrs.delete(parent);
      this.#namesDrop(parent);
      if ((e as { code?: string }).code !== 'EEXIST' || flags & O_EXCL) return this.#fail(id, e);
      this.fs.createIno(parent, name, (mode & 0o7777) | S_IFREG, this.#mode(flags), { flags: flags & O_TRUNC ? OpenFlags.TRUNC : 0 }, who).then((f) => {
        this.#inflight.delete(id);
        const fh = this.#newHandle(f.attr.ino, f);
        const t = this.#opts.attrTimeout;
        if (this.#session && this.#fuse.replyCreate(this.#session, id, f.attr.ino, 1, this.#attrArray(f.attr), t, t, fh, this.#openFlags(f.attr.ino, f))) this.#node(f.attr).nlookup++;
        else this.#release(fh);
      }, (e2: unknown) => this.#fail(id, e2));
    });
  }

  /**
   * `run` with the FS open of handle `fh`, opening it first when CREATE deferred it. The
   * deferred open asserts root: the kernel already let the caller create the file with this
   * access mode, which open(2) grants whatever the new file's mode bits say (as the FS's own
   * createino does); `fail` gets EBADF (no such handle) or the open's error.
   */
  #withFile(fh: number, run: (h: Handle, f: OpenFile) => void, fail: (e: unknown) => void): void {
    const h = this.#handles.get(fh);
    if (h?.file) return run(h, h.file);
    if (!h?.deferred) return fail({ code: 'EBADF' });
    const d = h.deferred;
    d.opening ??= this.fs.openIno(h.ino, d.mode, { dax: false }, { uid: 0, gid: 0 }).then((f) => {
      this.counts.opens++;
      h.file = f;
      h.size = Math.max(h.size, f.size);
      if (!this.#handles.has(fh)) this.fs.close(f, true).catch(() => {}); // released meanwhile
      return f;
    });
    d.opening.then((f) => run(h, f), fail);
  }

  /**
   * Make the FS opens of every deferred handle (before an unlink or a rename that may drop a
   * file's last link: the FS keeps an unlinked file only while it is open, and a created
   * file must stay writable through its fd after `rm`, as with mkstemp + unlink). Resolves
   * at once when there is none (a create that was closed is not a handle any more).
   */
  #openDeferred(): Promise<void> {
    let all: Promise<unknown>[] | null = null;
    for (const [fh, h] of this.#handles) {
      if (!h.deferred || h.file) continue;
      (all ??= []).push(new Promise<void>((r) => this.#withFile(fh, () => r(), () => r())));
    }
    return all ? Promise.all(all).then(() => {}) : Promise.resolve();
  }

  #setattr(id: number, ino: number, toSet: number, fh: number, hasFh: number, v: Float64Array, who: Who): void {
    const valid = toSet & (SetAttr.MODE | SetAttr.UID | SetAttr.GID | SetAttr.SIZE | SetAttr.ATIME | SetAttr.MTIME | SetAttr.ATIME_NOW | SetAttr.MTIME_NOW | SetAttr.CTIME);
    // A truncate through a handle is allowed by that handle's open: make a deferred one now.
    if (hasFh && valid & SetAttr.SIZE && this.#handles.get(fh)?.deferred && !this.#handles.get(fh)!.file) {
      return this.#withFile(fh, () => this.#setattr(id, ino, toSet, fh, hasFh, v, who), (e) => this.#fail(id, e));
    }
    const h = hasFh ? this.#handles.get(fh) : undefined;
    // A truncate revokes the DAX Requests of the blocks it frees: no native read from here on
    // (reads taken before complete as they would have); the extents are fetched again after it.
    if (valid & SetAttr.SIZE) for (const x of this.#handles.values()) if (x.ino === ino) this.#nativeForget(x.fh, x);
    this.fs.setattr(ino, {
      valid, mode: v[0]! & 0o7777, uid: v[1], gid: v[2], size: v[3], atime: [v[4]!, v[5]!], mtime: [v[6]!, v[7]!], handle: h?.file?.handle ?? 0,
    }, who).then((a) => {
      if (valid & SetAttr.SIZE) {
        for (const x of this.#handles.values()) {
          if (x.ino !== ino) continue;
          x.size = a.size;
          if (this.#native && x.file?.dax) this.#remap(x);
        }
      }
      this.#noteDir(a);
      this.#attr(id, a);
    }, (e: unknown) => {
      this.#dirAttrs.delete(ino);
      this.#fail(id, e);
    });
  }

  async #release(fh: number): Promise<void> {
    const h = this.#handles.get(fh);
    this.#handles.delete(fh);
    if (h) this.#nativeForget(fh, h);
    // A deferred open still being made is closed by #withFile once it is there.
    if (!h?.file) return;
    // DAX writes bypass the FS: record their mtime now (the FS updates it for mediated writes).
    // The kernel's cached attributes do not have that mtime: drop them (attributes only).
    if (h.daxWritten) {
      await this.fs.setattr(h.ino, { valid: SetAttr.MTIME_NOW }).then(() => this.#session && this.#fuse.invalInode(this.#session, h.ino, -1, 0), () => {});
    }
    await this.fs.close(h.file, true);
  }

  /**
   * readdir / readdirplus (`plus`: the FS's readdir with attributes, answered as entries: the
   * kernel caches them for the timeouts, so `ls -l` or stat after readdir needs no lookup).
   * Every entry packed by readdirplus but '.' and '..' counts one lookup (as lookup does).
   */
  #readdir(id: number, ino: number, size: number, off: number, who: Who, plus: boolean): void {
    this.fs.readdir(ino, off, 0, who, plus).then(({ entries }) => {
      this.#inflight.delete(id);
      if (!this.#session) return;
      const names: string[] = [];
      const f = new Float64Array(entries.length * (ATTR_LEN + 1));
      entries.forEach((e, i) => {
        names.push(e.name);
        const at = i * (ATTR_LEN + 1);
        if (e.attr) this.#attrArray(e.attr, f.subarray(at, at + ATTR_LEN));
        else {
          f[at + Attr.INO] = e.ino;
          f[at + Attr.MODE] = e.type === DirType.DIR ? S_IFDIR : e.type === DirType.LNK ? S_IFLNK : S_IFREG;
        }
        f[at + ATTR_LEN] = e.cookie;
      });
      const t = this.#opts.attrTimeout;
      const packed = this.#fuse.replyDir(this.#session, id, size, plus, names, f, t, t);
      if (plus) {
        for (let i = 0; i < packed; i++) {
          const e = entries[i]!;
          if (e.attr && e.name !== '.' && e.name !== '..') this.#node(e.attr).nlookup++;
        }
      }
    }, (e: unknown) => this.#fail(id, e));
  }

  // ---- data -----------------------------------------------------------------------------

  #slot(run: (slot: number) => void): void {
    const s = this.#freeSlots.pop();
    if (s !== undefined) run(s);
    else this.#slotWaiters.push(run);
  }

  #freeSlot(s: number): void {
    const w = this.#slotWaiters.shift();
    if (w) w(s);
    else this.#freeSlots.push(s);
  }

  #slotBytes(s: number, n: number): Uint8Array {
    const at = s * this.#opts.maxWrite;
    return this.#region.bytes.subarray(at, at + n);
  }

  /** The DAX extent holding [off, off+len) in whole blocks, or null (mediated then). */
  #daxExtent(h: Handle, off: number, len: number): { req: number; volOff: number; write: number } | null {
    const f = h.file;
    if (!f || !f.dax) return null;
    for (const x of f.extents) {
      if (off >= x.fileOffset && off + len <= x.fileOffset + x.length) return { req: x.read, write: x.write, volOff: off - x.fileOffset };
    }
    return null;
  }

  /** End of the last DAX extent of `f` (bytes). */
  #mapped(f: OpenFile): number {
    let end = 0;
    for (const x of f.extents) end = Math.max(end, x.fileOffset + x.length);
    return end;
  }

  /** Refresh the extents of a DAX open (dax_map) after it grew; one refresh at a time. */
  #remap(h: Handle): void {
    const f = h.file;
    if (!f || h.remapping) return;
    h.remapping = true;
    const old = f.extents;
    this.fs.daxMap(f, 0).then((xs) => {
      f.extents = xs;
      const keep = new Set(xs.flatMap((x) => [x.read, x.write]));
      const gone = old.flatMap((x) => [x.read, x.write]).filter((c) => c && !keep.has(c));
      if (gone.length) this.proc.capDrop(...gone).catch(() => {});
      this.#nativeFile(h);
    }, () => {}).finally(() => (h.remapping = false));
  }

  /** A DAX Request was revoked under an open (a truncate): forget the extents, go on mediated (then remap). */
  #daxLost(h: Handle, retry: () => void): void {
    this.#nativeForget(h.fh, h);
    if (h.file) {
      h.file.extents = [];
      this.#remap(h);
    }
    retry();
  }

  #read(id: number, size: number, off: number, fh: number): void {
    this.#withFile(fh, (h, f) => this.#readFile(id, size, off, h, f), (e) => this.#fail(id, e));
  }

  #readFile(id: number, size: number, off: number, h: Handle, f: OpenFile): void {
    size = Math.min(size, this.#opts.maxWrite);
    this.#slot((s) => {
      const done = (err: FractosError | null, n: number): void => {
        if (err) {
          this.#freeSlot(s);
          return this.#fail(id, err);
        }
        this.#inflight.delete(id);
        if (this.#session) this.#fuse.replyBuf(this.#session, id, this.#slotBytes(s, n));
        this.#freeSlot(s);
      };
      // DAX: the whole blocks around the range, inside one extent, clamped to the size this
      // handle knows; the answer is the asked part of the slot.
      const bs = f.blockSize || 4096;
      const end = Math.min(off + size, h.size);
      const aOff = off - (off % bs);
      const aLen = Math.ceil((end - aOff) / bs) * bs;
      const x = end > off && aLen <= this.#opts.maxWrite ? this.#daxExtent(h, aOff, aLen) : null;
      if (x) {
        this.counts.daxReads++;
        this.#port.io(x.req, false, x.volOff, aLen, this.#slotCids[s]!, (err) => {
          if (err?.code === 'EREVOKED') return this.#daxLost(h, () => this.#port.io(f.read, false, off, size, this.#slotCids[s]!, done));
          if (err) return done(err, 0);
          this.#inflight.delete(id);
          if (this.#session) this.#fuse.replyBuf(this.#session, id, this.#slotBytes(s, end - aOff).subarray(off - aOff));
          this.#freeSlot(s);
        });
        return;
      }
      this.counts.mediatedReads++;
      this.#port.io(f.read, false, off, size, this.#slotCids[s]!, done);
    });
  }

  #write(id: number, data: Buffer, off: number, fh: number): void {
    this.#withFile(fh, (h, f) => this.#writeFile(id, data, off, h, f), (e) => this.#fail(id, e));
  }

  #writeFile(id: number, data: Buffer, off: number, h: Handle, f: OpenFile): void {
    const len = data.length;
    if (len > this.#opts.maxWrite) return this.#fail(id, { code: 'EINVAL' });
    this.#slot((s) => {
      this.#slotBytes(s, len).set(data);
      const done = (err: FractosError | null, n: number): void => {
        this.#freeSlot(s);
        if (err) return this.#fail(id, err);
        if (off + n > h.size) {
          h.size = off + n;
          this.#nativeFile(h);
        }
        this.#inflight.delete(id);
        if (this.#session) this.#fuse.replyWrite(this.#session, id, n);
      };
      // DAX only for whole blocks inside the size the FS knows (no growth, no partial block):
      // anything else goes through the FS, which allocates and records the size.
      const bs = f.blockSize || 4096;
      const x = off % bs === 0 && len % bs === 0 && off + len <= h.size ? this.#daxExtent(h, off, len) : null;
      const mediated = (): void => {
        this.counts.mediatedWrites++;
        this.#port.io(f.write, true, off, len, this.#slotCids[s]!, (err, n) => {
          // The file grew past the extents this open knows: fetch the new ones (next writes go DAX).
          if (!err && f.dax && off + n > this.#mapped(f)) this.#remap(h);
          done(err, n);
        });
      };
      if (x && x.write) {
        this.counts.daxWrites++;
        h.daxWritten = true;
        this.#port.io(x.write, true, x.volOff, len, this.#slotCids[s]!, (err) => {
          if (err?.code === 'EREVOKED') return this.#daxLost(h, mediated);
          done(err, err ? 0 : len);
        });
        return;
      }
      mediated();
    });
  }
}

export { ROOT_INO };

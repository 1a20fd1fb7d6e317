/**
 * Client side of the FS contract (schema.ts: path-based; contract.ts: inode-based): finds the
 * FS's root Requests by name and wraps each operation as an RPC. Imports only libfractos and
 * the contract, so a client (fs-mount/, the fio runner, apps) depends on nothing else of the FS.
 */
import { FractosError } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import type { Invocation } from '../libfractos/schema.js';
import { Close, Create, Delete, List, ListReply, MAX_DAX_EXTENTS, Open, OpenMode, OpenReply, Stat, StatReply, Truncate } from './schema.js';
import {
  AttrReply, DaxMap, DaxMapReply, DIRENT_ATTR_BYTES, DirType, EntryReply, LinkReply, NAME_MAX, NS_OPS, ReaddirReply, RenameReply, StatfsReply, SYMLINK_MAX,
  type Attr, type NsOp,
} from './contract.js';

/** One DAX extent: file range and the blockdev Requests for it (0 when not handed out). */
export interface DaxExtent {
  fileOffset: number;
  length: number;
  read: number;
  write: number;
}

/** An open file: the handle, its Requests (cids owned by the caller), DAX extents (all of them), and its attributes at open. */
export interface OpenFile {
  handle: number;
  size: number;
  dax: boolean;
  blockSize: number;
  read: number;
  write: number;
  close: number;
  /** The open's dax_map Request (0 for mediated opens). */
  map: number;
  extents: DaxExtent[];
  attr: Attr;
}

export interface OpenOptions {
  /** OpenMode bits (default RW). */
  mode?: number;
  dax?: boolean;
  create?: boolean;
}

/** The caller a namespace Request acts for (what FUSE passes); default root. */
export interface Who {
  uid: number;
  gid: number;
}

/** One readdir entry. */
export interface Dirent {
  ino: number;
  /** Pass back as readdir's `cookie` to continue after this entry. */
  cookie: number;
  type: number;
  name: string;
  /** The entry's attributes (readdir with `plus`). */
  attr?: Attr;
}

/** statfs's answer, in `bsize` blocks and inodes. */
export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namemax: number;
}

const T = 60_000;
const ROOT: Who = { uid: 0, gid: 0 };
const PATH_OPS = ['create', 'open', 'stat', 'list', 'delete', 'truncate'] as const;
/** One of the FS's root Requests: a path-based or an inode-based (NS_OPS) operation. */
export type FsRoot = (typeof PATH_OPS)[number] | NsOp;

/** Errors: ENAMETOOLONG (over NAME_MAX bytes), checked here so the name fits the field; the FS checks again. */
function checkName(name: string): string {
  if (Buffer.byteLength(name, 'utf8') > NAME_MAX) throw new FractosError('ENAMETOOLONG', `name of ${Buffer.byteLength(name, 'utf8')} bytes > ${NAME_MAX}`);
  return name;
}

/** The extents of an OpenReply/DaxMapReply page: `n` records of `bytes`, caps x{i}r/x{i}w. */
function extentsOf(bytes: Uint8Array, n: number, caps: Record<string, number>): DaxExtent[] {
  const ext = Buffer.from(bytes);
  const out: DaxExtent[] = [];
  for (let i = 0; i < Math.min(n, MAX_DAX_EXTENTS); i++) {
    const at = (k: number): number => ext.readUInt32LE(16 * i + k) + ext.readUInt32LE(16 * i + k + 4) * 0x100000000;
    out.push({ fileOffset: at(0), length: at(8), read: caps[`x${i}r`] ?? 0, write: caps[`x${i}w`] ?? 0 });
  }
  return out;
}

function attrOf(imms: Attr): Attr {
  const { ino, generation, mode, nlink, uid, gid, size, blocks, blksize, atimeSec, atimeNsec, mtimeSec, mtimeNsec, ctimeSec, ctimeNsec } = imms;
  return { ino, generation, mode, nlink, uid, gid, size, blocks, blksize, atimeSec, atimeNsec, mtimeSec, mtimeNsec, ctimeSec, ctimeNsec };
}

/** The attributes under `p`-prefixed names (EntryReply, RenameReply: pIno, pMode, ...). */
function prefixedAttrOf(imms: Record<string, unknown>, p: 'p' | 'n'): Attr {
  const a = {} as Record<string, unknown>;
  for (const [k, pk] of PREFIXED[p]) a[k] = imms[pk];
  return a as unknown as Attr;
}
const ATTR_KEYS = ['ino', 'generation', 'mode', 'nlink', 'uid', 'gid', 'size', 'blocks', 'blksize', 'atimeSec', 'atimeNsec', 'mtimeSec', 'mtimeNsec', 'ctimeSec', 'ctimeNsec'] as const;
const prefixedKeys = (p: string): [string, string][] => ATTR_KEYS.map((k) => [k, p + k[0]!.toUpperCase() + k.slice(1)]);
const PREFIXED = { p: prefixedKeys('p'), n: prefixedKeys('n') };

/** An entry made (mknod, mkdir, symlink, link): its inode's attributes and, in `parent`, its directory's after the change. */
export type EntryAttr = Attr & { parent: Attr };

/** Decode ReaddirReply's `entries` (see contract.ts); `plus`: the records carry attributes. Errors: EPROTO (records past the bytes). */
export function decodeDirents(entries: Uint8Array, count: number, plus = false): Dirent[] {
  const b = Buffer.from(entries.buffer, entries.byteOffset, entries.length);
  const out: Dirent[] = [];
  const u64 = (at: number): number => b.readUInt32LE(at) + b.readUInt32LE(at + 4) * 0x100000000;
  let o = 0;
  try {
    for (let i = 0; i < count; i++) {
      const ino = u64(o);
      const cookie = u64(o + 8);
      const type = b[o + 16]!;
      const len = b.readUInt16LE(o + 17);
      const d: Dirent = { ino, cookie, type, name: b.toString('utf8', o + 19, o + 19 + len) };
      o += 19 + len;
      if (plus) {
        d.attr = {
          ino, generation: 1, mode: b.readUInt32LE(o), nlink: b.readUInt32LE(o + 4), uid: b.readUInt32LE(o + 8), gid: b.readUInt32LE(o + 12),
          size: u64(o + 16), blocks: u64(o + 24), blksize: 4096,
          atimeSec: u64(o + 32), atimeNsec: b.readUInt32LE(o + 40), mtimeSec: u64(o + 44), mtimeNsec: b.readUInt32LE(o + 52), ctimeSec: u64(o + 56), ctimeNsec: b.readUInt32LE(o + 64),
        };
        o += DIRENT_ATTR_BYTES;
      }
      out.push(d);
    }
  } catch (err) {
    throw new FractosError('EPROTO', `readdir reply: ${count} records do not fit ${b.length} bytes: ${(err as Error).message}`);
  }
  return out;
}

export { DirType };

/** The FS's root Requests, published as `${name}.${op}` (and registered with the RM under these names). */
export const FS_ROOTS: readonly FsRoot[] = [...PATH_OPS, ...(Object.keys(NS_OPS) as NsOp[])];
export type FsRoots = Record<FsRoot, number>;

export class FsClient {
  private constructor(
    readonly proc: Process,
    readonly roots: FsRoots,
  ) {}

  /**
   * A client of the FS whose root Requests the caller already holds (e.g. a resource-manager
   * grant: `requests` by FS_ROOTS name). Errors: ENOENT (a root missing).
   */
  static fromRoots(proc: Process, requests: Readonly<Record<string, number>>): FsClient {
    const roots = {} as FsRoots;
    for (const op of FS_ROOTS) {
      const c = requests[op];
      if (!c) throw new FractosError('ENOENT', `no FS Request '${op}'`);
      roots[op] = c;
    }
    return new FsClient(proc, roots);
  }

  /** Wait for the FS named `name` (default `fs`) to publish its Requests. Errors: ENOENT after `timeoutMs`. */
  static async connect(proc: Process, name = 'fs', timeoutMs = 30_000): Promise<FsClient> {
    const cids = await Promise.all(FS_ROOTS.map((op) => proc.kvWait(`${name}.${op}`, timeoutMs)));
    return new FsClient(proc, Object.fromEntries(FS_ROOTS.map((op, i) => [op, cids[i]!])) as FsRoots);
  }

  /** Errors: EEXIST, EINVAL. */
  async create(path: string): Promise<void> {
    await this.proc.rpc(this.roots.create, Create, { path }, {}, { timeoutMs: T });
  }

  /** Errors: ENOENT, EINVAL, EISDIR. A DAX open's extents are all fetched (dax_map pages). */
  async open(path: string, o: OpenOptions = {}): Promise<OpenFile> {
    return this.#opened(await this.proc.rpc(this.roots.open, Open, { path, mode: o.mode ?? OpenMode.RW, dax: o.dax ? 1 : 0, create: o.create ? 1 : 0 }, {}, { timeoutMs: T }));
  }

  async #opened(inv: Invocation): Promise<OpenFile> {
    const { imms, caps } = OpenReply.decode(inv);
    const c = caps as Record<string, number>;
    const f: OpenFile = {
      handle: imms.handle, size: imms.size, dax: imms.dax !== 0, blockSize: imms.blockSize, read: caps.read, write: caps.write, close: caps.close, map: caps.map,
      extents: extentsOf(imms.extents, imms.nExtents, c), attr: attrOf(imms),
    };
    if (f.dax && imms.total > f.extents.length) f.extents.push(...(await this.daxMap(f, f.extents.length)));
    return f;
  }

  /**
   * The DAX extents of open `f` from index `first` to the last (dax_map pages of
   * MAX_DAX_EXTENTS). Re-fetch after the file grew. Errors: EINVAL (not DAX), ERANGE, ENOENT.
   */
  async daxMap(f: OpenFile, first = 0): Promise<DaxExtent[]> {
    const out: DaxExtent[] = [];
    for (;;) {
      const { imms, caps } = DaxMapReply.decode(await this.proc.rpc(f.map, DaxMap, { first }, {}, { timeoutMs: T }));
      out.push(...extentsOf(imms.extents, imms.nExtents, caps as Record<string, number>));
      first += imms.nExtents;
      if (first >= imms.total || imms.nExtents === 0) return out;
    }
  }

  /**
   * Close an open file: the FS revokes its Requests, DAX ones included. The caller's cids stay
   * in its space (every use now fails with EREVOKED); `drop` removes them too.
   */
  async close(f: OpenFile, drop = false): Promise<void> {
    await this.proc.rpc(f.close, Close, {}, {}, { timeoutMs: T });
    if (drop) {
      const mine = [f.read, f.write, f.close, f.map, ...f.extents.flatMap((x) => [x.read, x.write])].filter(Boolean);
      this.proc.capDrop(...mine).catch(() => {});
    }
  }

  async stat(path: string): Promise<{ size: number; extents: number; allocated: number }> {
    return StatReply.decode(await this.proc.rpc(this.roots.stat, Stat, { path }, {}, { timeoutMs: T })).imms;
  }

  /** Paths of the regular files under `prefix` (every depth), written into Memory `buffer` by the FS. */
  async list(prefix: string, buffer: number, bytes: Uint8Array): Promise<string[]> {
    const r = ListReply.decode(await this.proc.rpc(this.roots.list, List, { path: prefix }, { buffer }, { timeoutMs: T })).imms;
    if (r.bytes === 0) return [];
    return Buffer.from(bytes.buffer, bytes.byteOffset, r.bytes).toString('utf8').split('\n');
  }

  /** Remove the file at `path` and revoke every open of it (DAX included) at once. Errors: ENOENT, EISDIR. */
  async delete(path: string): Promise<void> {
    await this.proc.rpc(this.roots.delete, Delete, { path }, {}, { timeoutMs: T });
  }

  async truncate(path: string, size: number): Promise<void> {
    await this.proc.rpc(this.roots.truncate, Truncate, { path, size }, {}, { timeoutMs: T });
  }

  // ---- inode-based contract (contract.ts); `who` is the caller FUSE names (default root) ----

  async #attr(op: NsOp, imms: Record<string, unknown>, who: Who): Promise<Attr> {
    const inv = await this.proc.rpc(this.roots[op], NS_OPS[op] as never, { ...imms, uid: who.uid, gid: who.gid } as never, {}, { timeoutMs: T });
    return attrOf(AttrReply.decode(inv).imms);
  }

  async #done(op: NsOp, imms: Record<string, unknown>, who: Who): Promise<void> {
    await this.proc.rpc(this.roots[op], NS_OPS[op] as never, { ...imms, uid: who.uid, gid: who.gid } as never, {}, { timeoutMs: T });
  }

  async #entryAttr(op: NsOp, imms: Record<string, unknown>, who: Who): Promise<EntryAttr> {
    const inv = await this.proc.rpc(this.roots[op], NS_OPS[op] as never, { ...imms, uid: who.uid, gid: who.gid } as never, {}, { timeoutMs: T });
    const r = EntryReply.decode(inv).imms;
    return { ...attrOf(r), parent: prefixedAttrOf(r, 'p') };
  }

  async lookup(parent: number, name: string, who = ROOT): Promise<Attr> {
    return this.#attr('lookup', { parent, name: checkName(name) }, who);
  }

  async getattr(ino: number, who = ROOT): Promise<Attr> {
    return this.#attr('getattr', { ino }, who);
  }

  /** setattr: `a.valid` holds SetAttr bits; the other fields are read where their bit is set. */
  async setattr(
    ino: number,
    a: { valid: number; mode?: number; uid?: number; gid?: number; size?: number; atime?: [number, number]; mtime?: [number, number]; ctime?: [number, number]; handle?: number },
    who = ROOT,
  ): Promise<Attr> {
    return this.#attr('setattr', {
      ino, valid: a.valid, mode: a.mode ?? 0, newUid: a.uid ?? 0, newGid: a.gid ?? 0, size: a.size ?? 0,
      atimeSec: a.atime?.[0] ?? 0, atimeNsec: a.atime?.[1] ?? 0, mtimeSec: a.mtime?.[0] ?? 0, mtimeNsec: a.mtime?.[1] ?? 0,
      ctimeSec: a.ctime?.[0] ?? 0, ctimeNsec: a.ctime?.[1] ?? 0, handle: a.handle ?? 0,
    }, who);
  }

  async mknod(parent: number, name: string, mode: number, who = ROOT, umask = 0): Promise<EntryAttr> {
    return this.#entryAttr('mknod', { parent, name: checkName(name), mode, umask }, who);
  }

  async mkdir(parent: number, name: string, mode: number, who = ROOT, umask = 0): Promise<EntryAttr> {
    return this.#entryAttr('mkdir', { parent, name: checkName(name), mode, umask }, who);
  }

  async symlink(parent: number, name: string, target: string, who = ROOT): Promise<EntryAttr> {
    if (Buffer.byteLength(target, 'utf8') > SYMLINK_MAX) throw new FractosError('ENAMETOOLONG', `symlink target > ${SYMLINK_MAX} bytes`);
    return this.#entryAttr('symlink', { parent, name: checkName(name), target }, who);
  }

  async readlink(ino: number, who = ROOT): Promise<string> {
    const inv = await this.proc.rpc(this.roots.readlink, NS_OPS.readlink, { ino, uid: who.uid, gid: who.gid }, {}, { timeoutMs: T });
    return LinkReply.decode(inv).imms.target;
  }

  async link(ino: number, newParent: number, newName: string, who = ROOT): Promise<EntryAttr> {
    return this.#entryAttr('link', { ino, newParent, newName: checkName(newName) }, who);
  }

  /** Answers the parent directory's attributes after the change. */
  async unlink(parent: number, name: string, who = ROOT): Promise<Attr> {
    return this.#attr('unlink', { parent, name: checkName(name) }, who);
  }

  /** Answers the parent directory's attributes after the change. */
  async rmdir(parent: number, name: string, who = ROOT): Promise<Attr> {
    return this.#attr('rmdir', { parent, name: checkName(name) }, who);
  }

  /** flags: RenameFlags bits. Answers both directories' attributes after the move. */
  async rename(parent: number, name: string, newParent: number, newName: string, flags = 0, who = ROOT): Promise<{ parent: Attr; newParent: Attr }> {
    const imms = { parent, name: checkName(name), newParent, newName: checkName(newName), flags, uid: who.uid, gid: who.gid };
    const r = RenameReply.decode(await this.proc.rpc(this.roots.rename, NS_OPS.rename, imms, {}, { timeoutMs: T })).imms;
    return { parent: prefixedAttrOf(r, 'p'), newParent: prefixedAttrOf(r, 'n') };
  }

  /** open by ino: mode an OpenMode, flags OpenFlags. */
  async openIno(ino: number, mode: number, o: { flags?: number; dax?: boolean } = {}, who = ROOT): Promise<OpenFile> {
    const imms = { ino, mode, flags: o.flags ?? 0, dax: o.dax ? 1 : 0, uid: who.uid, gid: who.gid };
    return this.#opened(await this.proc.rpc(this.roots.openino, NS_OPS.openino, imms, {}, { timeoutMs: T }));
  }

  /** create-or-open `name` in `parent` (OpenFlags.EXCL: EEXIST when it exists). */
  async createIno(parent: number, name: string, fileMode: number, mode: number, o: { flags?: number; dax?: boolean; umask?: number } = {}, who = ROOT): Promise<OpenFile> {
    const imms = { parent, name: checkName(name), fileMode, umask: o.umask ?? 0, mode, flags: o.flags ?? 0, dax: o.dax ? 1 : 0, uid: who.uid, gid: who.gid };
    return this.#opened(await this.proc.rpc(this.roots.createino, NS_OPS.createino, imms, {}, { timeoutMs: T }));
  }

  async fsync(ino: number, datasync = false, who = ROOT): Promise<void> {
    return this.#done('fsync', { ino, datasync: datasync ? 1 : 0 }, who);
  }

  /** One readdir page after `cookie` (0: from the start); `end` when the listing is complete; `plus`: each entry with its `attr`. */
  async readdir(ino: number, cookie = 0, max = 0, who = ROOT, plus = false): Promise<{ entries: Dirent[]; end: boolean }> {
    const inv = await this.proc.rpc(this.roots.readdir, NS_OPS.readdir, { ino, cookie, max, uid: who.uid, gid: who.gid, plus: plus ? 1 : 0 }, {}, { timeoutMs: T });
    const r = ReaddirReply.decode(inv).imms;
    return { entries: decodeDirents(r.entries, r.count, plus), end: r.end !== 0 };
  }

  /** Every entry of directory `ino` ('.' and '..' included), paging readdir. */
  async readdirAll(ino: number, who = ROOT): Promise<Dirent[]> {
    const out: Dirent[] = [];
    let cookie = 0;
    for (;;) {
      const { entries, end } = await this.readdir(ino, cookie, 0, who);
      out.push(...entries);
      if (end || entries.length === 0) return out;
      cookie = entries[entries.length - 1]!.cookie;
    }
  }

  async statfs(who = ROOT): Promise<StatFs> {
    const inv = await this.proc.rpc(this.roots.statfs, NS_OPS.statfs, { uid: who.uid, gid: who.gid }, {}, { timeoutMs: T });
    return StatfsReply.decode(inv).imms;
  }

  /** The ino of absolute `path` ('/' is ROOT_INO), by lookups from the root (no symlinks followed). Errors: those of lookup. */
  async resolve(path: string, who = ROOT): Promise<Attr> {
    let a = await this.getattr(1, who);
    for (const name of path.split('/').filter(Boolean)) a = await this.lookup(a.ino, name, who);
    return a;
  }
}

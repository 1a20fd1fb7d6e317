/**
 * Client side of the FS contract (schema.ts): finds the FS's root Requests by name and wraps
 * each operation as an RPC. Imports only libfractos and the schema.
 */
import { FractosError } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import { Close, Create, Delete, List, ListReply, MAX_DAX_EXTENTS, Open, OpenMode, OpenReply, Stat, StatReply, Truncate } from './schema.js';

/** One DAX extent: file range and the blockdev Requests for it (0 when not handed out). */
export interface DaxExtent {
  fileOffset: number;
  length: number;
  read: number;
  write: number;
}

/** An open file: the handle, its Requests (cids owned by the caller), and DAX extents. */
export interface OpenFile {
  handle: number;
  size: number;
  dax: boolean;
  blockSize: number;
  read: number;
  write: number;
  close: number;
  extents: DaxExtent[];
}

export interface OpenOptions {
  /** OpenMode bits (default RW). */
  mode?: number;
  dax?: boolean;
  create?: boolean;
}

const T = 60_000;

/** The FS's root Requests, published as `${name}.${op}` (and registered with the RM under these names). */
export const FS_ROOTS = ['create', 'open', 'stat', 'list', 'delete', 'truncate'] as const;
export type FsRoots = Record<(typeof FS_ROOTS)[number], number>;

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
    const get = (op: string): Promise<number> => proc.kvWait(`${name}.${op}`, timeoutMs);
    const [create, open, stat, list, del, truncate] = await Promise.all([get('create'), get('open'), get('stat'), get('list'), get('delete'), get('truncate')]);
    return new FsClient(proc, { create, open, stat, list, delete: del, truncate });
  }

  /** Errors: EEXIST, EINVAL. */
  async create(path: string): Promise<void> {
    await this.proc.rpc(this.roots.create, Create, { path }, {}, { timeoutMs: T });
  }

  /** Errors: ENOENT, EINVAL, ERANGE (DAX with too many extents). */
  async open(path: string, o: OpenOptions = {}): Promise<OpenFile> {
    const inv = await this.proc.rpc(this.roots.open, Open, { path, mode: o.mode ?? OpenMode.RW, dax: o.dax ? 1 : 0, create: o.create ? 1 : 0 }, {}, { timeoutMs: T });
    const { imms, caps } = OpenReply.decode(inv);
    const c = caps as Record<string, number>;
    const ext = Buffer.from(imms.extents);
    const extents: DaxExtent[] = [];
    for (let i = 0; i < Math.min(imms.nExtents, MAX_DAX_EXTENTS); i++) {
      const at = (k: number): number => ext.readUInt32LE(16 * i + k) + ext.readUInt32LE(16 * i + k + 4) * 0x100000000;
      extents.push({ fileOffset: at(0), length: at(8), read: c[`x${i}r`] ?? 0, write: c[`x${i}w`] ?? 0 });
    }
    return { handle: imms.handle, size: imms.size, dax: imms.dax !== 0, blockSize: imms.blockSize, read: caps.read, write: caps.write, close: caps.close, extents };
  }

  /**
   * Close an open file: the FS revokes its Requests, DAX ones included. The caller's cids stay
   * in its space (every use now fails with EREVOKED); `drop` removes them too.
   */
  async close(f: OpenFile, drop = false): Promise<void> {
    await this.proc.rpc(f.close, Close, {}, {}, { timeoutMs: T });
    if (drop) {
      const mine = [f.read, f.write, f.close, ...f.extents.flatMap((x) => [x.read, x.write])].filter(Boolean);
      this.proc.capDrop(...mine).catch(() => {});
    }
  }

  async stat(path: string): Promise<{ size: number; extents: number; allocated: number }> {
    return StatReply.decode(await this.proc.rpc(this.roots.stat, Stat, { path }, {}, { timeoutMs: T })).imms;
  }

  /** Names under `prefix`, written into Memory `buffer` by the FS. */
  async list(prefix: string, buffer: number, bytes: Uint8Array): Promise<string[]> {
    const r = ListReply.decode(await this.proc.rpc(this.roots.list, List, { path: prefix }, { buffer }, { timeoutMs: T })).imms;
    if (r.bytes === 0) return [];
    return Buffer.from(bytes.buffer, bytes.byteOffset, r.bytes).toString('utf8').split('\n');
  }

  async delete(path: string): Promise<void> {
    await this.proc.rpc(this.roots.delete, Delete, { path }, {}, { timeoutMs: T });
  }

  async truncate(path: string, size: number): Promise<void> {
    await this.proc.rpc(this.roots.truncate, Truncate, { path, size }, {}, { timeoutMs: T });
  }
}

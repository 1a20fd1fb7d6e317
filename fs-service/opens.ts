/**
 * Open files: the handles of mediated and DAX opens, the Requests handed out for them, and
 * the monitors that close an open whose client went away.
 *
 * Invariants:
 * - An open handle is live from its OpenReply until close, the delete of its file, or the
 *   loss of every cap its client held (whichever comes first); handle ids are never reused.
 * - Everything an open hands out is an entry of the FS (`cids`): its mediated read/write and
 *   close Requests (handle preset) and, for DAX, revocation-tree children of the blockdev's
 *   per-volume read/write Requests (`daxByVolume`). Closing revokes them all, whoever holds
 *   them now; freeing an extent revokes that volume's children in every open of the file
 *   (`revokeDax`), so no client keeps a Request to a volume the FS gave back.
 * - `live` holds the handed-out Requests whose delegated caps may still exist; a
 *   monitor_delegate on each removes it when the last cap from it is gone, and the open is
 *   closed when none is left. A revoked Request's monitor never fires, so revoking removes it first.
 * - At most MAX_OPENS handles (ENFILE beyond). A DAX open's extent Requests are made a page
 *   (MAX_DAX_EXTENTS extents) at a time: the first page with the OpenReply, the others when
 *   the client asks through the open's `map` Request (dax_map), so a file of any number of
 *   extents opens DAX; each volume's children are made once per open and revoked with it.
 * - When an inode's last open goes, `released` tells the namespace (an unlinked file's data
 *   is freed then).
 * - A DAX open for writing changes the device behind the block cache: the file's cached
 *   blocks are dropped (`invalidate`) when it opens and when it closes.
 */
import { FractosError } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import type { VolumeHandle } from '../blockdev-adaptor/client.js';
import { Close, DoneReply, MAX_DAX_EXTENTS, OpenMode, OpenReply, Read, Write } from './schema.js';
import { DaxMap, DaxMapReply, MAX_OPENS } from './contract.js';
import { BLOCK, type FsCounts, type FsLog, type Inode } from './inode.js';
import { attrOf } from './attrs.js';

/** What opens need from the rest of the FS. */
export interface OpensDeps {
  /** The open volume behind an extent (extents.ts). */
  volume(id: number): VolumeHandle | undefined;
  /** Drop every cached block of `ino` (cache.ts). */
  invalidate(ino: Inode): void;
  /** The last open of `ino` is gone (namespace.ts frees an unlinked file then; close answers after). */
  released(ino: Inode): Promise<void>;
}

/** An open file as mediated I/O sees it: the handle id (its staging-slot key) and the file. */
export interface OpenHandle {
  readonly id: number;
  readonly ino: Inode;
}

/** An open made by `Opens.prepare`, not yet answered (`answer`) or given up (`abandon`). */
export interface PreparedOpen {
  readonly h: Handle;
  readonly caps: Record<string, number>;
  /** DAX extents in `ext` (first page). */
  readonly n: number;
  readonly ext: Buffer;
}

interface Handle extends OpenHandle {
  mode: number;
  dax: boolean;
  /** Requests handed out for this open (mediated, close, DAX revtree children): revoked on close. */
  cids: number[];
  /** DAX revtree children per extent volume (revoked when that extent goes). */
  daxByVolume: Map<number, number[]>;
  /**
   * Handed-out Requests whose delegated caps may still exist: a monitor_delegate on each
   * removes it when the last cap delegated from it is gone; when none is left the client
   * can no longer use the open and the FS closes it (client closed its channel or died).
   */
  live: Set<number>;
}

/** Errors: EINVAL unless `mode` is OpenMode.READ, WRITE or RW. */
export function checkOpenMode(mode: number): void {
  if (mode !== OpenMode.READ && mode !== OpenMode.WRITE && mode !== OpenMode.RW) throw new FractosError('EINVAL', `bad open mode ${mode}`);
}

export class Opens {
  readonly #proc: Process;
  readonly #counts: Pick<FsCounts, 'orphanedCloses'>;
  readonly #log: FsLog | undefined;
  readonly #deps: OpensDeps;
  readonly #handles = new Map<number, Handle>();
  readonly #byIno = new Map<number, Set<Handle>>();
  #nextHandle = 1;

  constructor(proc: Process, counts: Pick<FsCounts, 'orphanedCloses'>, log: FsLog | undefined, deps: OpensDeps) {
    this.#proc = proc;
    this.#counts = counts;
    this.#log = log;
    this.#deps = deps;
  }

  /** Open handles (mediated and DAX). */
  get size(): number {
    return this.#handles.size;
  }

  /** The FS's own cids of an open's Requests (mediated and close in `requests`, DAX in `dax`), or null when it is not open. */
  caps(handle: number): { requests: number[]; dax: number[] } | null {
    const h = this.#handles.get(handle);
    if (!h) return null;
    const dax = [...h.daxByVolume.values()].flat();
    return { requests: h.cids.filter((c) => !dax.includes(c)), dax };
  }

  /** The open `handle`, open for `need` (an OpenMode bit). Errors: ENOENT (not open), EPERM (not open for that). */
  get(handle: number, need: number): OpenHandle {
    const h = this.#handles.get(handle);
    if (!h) throw new FractosError('ENOENT', `no open handle ${handle}`);
    if (!(h.mode & need)) throw new FractosError('EPERM', `handle ${handle} not open for ${need & OpenMode.WRITE ? 'writing' : 'reading'}`);
    return h;
  }

  /** Whether `ino` has a DAX open. */
  hasDax(ino: Inode): boolean {
    for (const h of this.#byIno.get(ino.id) ?? []) if (h.dax) return true;
    return false;
  }

  /** Open handles of `ino`. */
  count(ino: Inode): number {
    return this.#byIno.get(ino.id)?.size ?? 0;
  }

  /**
   * Revtree children of the blockdev Requests of `ino`'s extents [first, first +
   * MAX_DAX_EXTENTS) for open `h` (made once per volume), into `caps` (x{i}r/x{i}w, i from 0)
   * and `ext` (fileOffset, length records); answers how many extents.
   */
  async #daxPage(h: Handle, first: number, caps: Record<string, number>, ext: Buffer): Promise<number> {
    const p = this.#proc;
    const xs = h.ino.extents.slice(first, first + MAX_DAX_EXTENTS);
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i]!;
      if (x.pooled) throw new FractosError('EIO', `'${h.ino.path}' has pooled extents: not made private before its DAX open`);
      let list = h.daxByVolume.get(x.volume);
      if (!list) {
        const v = this.#deps.volume(x.volume);
        if (!v) throw new FractosError('EIO', `volume ${x.volume} of '${h.ino.path}' not open`);
        // Revocation tree children of the blockdev's per-volume Requests (volume preset):
        // closing or freeing the extent revokes exactly these, whoever holds them.
        const xr = h.mode & OpenMode.READ ? await p.capCreateRevtree(v.read) : 0;
        const xw = h.mode & OpenMode.WRITE ? await p.capCreateRevtree(v.write) : 0;
        list = [xr, xw];
        h.daxByVolume.set(x.volume, list);
        for (const c of list.filter(Boolean)) {
          h.cids.push(c);
          if (!this.#handles.has(h.id)) continue;
          h.live.add(c);
          const hid = h.id;
          await p.monitorDelegate(c, () => this.#delegatesGone(hid, c));
        }
      }
      caps[`x${i}r`] = list[0]!;
      caps[`x${i}w`] = list[1]!;
      ext.writeUInt32LE(x.fileOffset % 0x100000000, 16 * i);
      ext.writeUInt32LE(Math.floor(x.fileOffset / 0x100000000), 16 * i + 4);
      ext.writeUInt32LE(x.length % 0x100000000, 16 * i + 8);
      ext.writeUInt32LE(Math.floor(x.length / 0x100000000), 16 * i + 12);
    }
    return xs.length;
  }

  /**
   * Open `ino` (mode checked by `checkOpenMode`) and answer OpenReply on `ok`: mediated
   * read/write and close Requests, the file's attributes, and with `dax` the `map` Request
   * and the first page of extents with their blockdev Requests on revocation trees.
   * Errors: ENFILE (MAX_OPENS), what delivering the reply answers (the open is then closed again).
   */
  async open(ino: Inode, mode: number, dax: boolean, ok: number): Promise<void> {
    await this.answer(await this.prepare(ino, mode, dax), ok);
  }

  /**
   * The first part of `open`: the open's Requests made and their monitors armed, not yet
   * handed out (create runs it while the new file is made durable). Follow with `answer`,
   * or `abandon` when the open is not to be answered. Errors: ENFILE.
   */
  async prepare(ino: Inode, mode: number, dax: boolean): Promise<PreparedOpen> {
    if (this.#handles.size >= MAX_OPENS) throw new FractosError('ENFILE', `${MAX_OPENS} open handles`);
    const p = this.#proc;
    const h: Handle = { id: this.#nextHandle++, ino, mode, dax, cids: [], daxByVolume: new Map(), live: new Set() };
    // One round trip for all of them (pipelined request_creates).
    const none = Promise.resolve(0);
    const [read, write, close, map] = await Promise.all([
      mode & OpenMode.READ ? p.createRequest(Read, { handle: h.id }) : none,
      mode & OpenMode.WRITE ? p.createRequest(Write, { handle: h.id }) : none,
      p.createRequest(Close, { handle: h.id }),
      dax ? p.createRequest(DaxMap, { handle: h.id }) : none,
    ]);
    h.cids.push(...[read, write, close, map].filter(Boolean));
    const caps: Record<string, number> = { read, write, close, map };
    const ext = Buffer.alloc(16 * MAX_DAX_EXTENTS);
    const n = dax ? await this.#daxPage(h, 0, caps, ext) : 0;
    // DAX writes bypass the block cache: drop the file's cached blocks now and at close.
    if (dax && mode & OpenMode.WRITE) this.#deps.invalidate(ino);
    this.#handles.set(h.id, h);
    let set = this.#byIno.get(ino.id);
    if (!set) this.#byIno.set(ino.id, (set = new Set()));
    set.add(h);
    // Close the open when every cap delegated from its Requests is gone (the client dropped
    // them, closed its channel or died): monitor_delegate on each Request handed out. The
    // monitors arm when the reply installs the caps in the client's space; a revoked Request's
    // monitor never fires (close/delete/truncate revoke them), so `live` forgets revoked ones.
    // (The callbacks capture ids only: libfractos keeps a monitor's callback until it fires.)
    const hid = h.id;
    for (const c of h.cids) h.live.add(c);
    const nonzero = Object.fromEntries(Object.entries(caps).filter(([, c]) => c !== 0));
    try {
      await Promise.all(h.cids.map((c) => p.monitorDelegate(c, () => this.#delegatesGone(hid, c))));
    } catch (err) {
      await this.#revoke(h); // Not armed: nobody can use this open.
      throw err;
    }
    return { h, caps: nonzero, n, ext };
  }

  /** Hand a prepared open to its client: OpenReply on `ok` (the file's attributes as they are now). On failure the open is closed again. */
  async answer(o: PreparedOpen, ok: number): Promise<void> {
    const { h, n, ext } = o;
    try {
      await this.#proc.invoke(ok, OpenReply, { ...attrOf(h.ino), handle: h.id, dax: h.dax ? 1 : 0, blockSize: BLOCK, total: h.dax ? h.ino.extents.length : 0, nExtents: n, extents: ext }, o.caps);
    } catch (err) {
      await this.#revoke(h); // Not delivered: nobody can use this open.
      throw err;
    }
    // The FS keeps its own entries (to revoke them later): the reply only delegated them.
  }

  /** Close a prepared open that is not answered (its Requests revoked). */
  async abandon(o: PreparedOpen): Promise<void> {
    if (this.#handles.get(o.h.id) === o.h) await this.#revoke(o.h);
  }

  /**
   * dax_map(first) of open `handle`: DaxMapReply on `ok` with the extents from index
   * `first` (a page). Errors: ENOENT (not open), EINVAL (not DAX), ERANGE (`first` past the extents).
   */
  async daxMap(handle: number, first: number, ok: number): Promise<void> {
    const h = this.#handles.get(handle);
    if (!h) throw new FractosError('ENOENT', `no open handle ${handle}`);
    if (!h.dax) throw new FractosError('EINVAL', `handle ${handle} is not a DAX open`);
    if (first > h.ino.extents.length) throw new FractosError('ERANGE', `extent ${first} of ${h.ino.extents.length}`);
    const caps: Record<string, number> = {};
    const ext = Buffer.alloc(16 * MAX_DAX_EXTENTS);
    const n = await this.#daxPage(h, first, caps, ext);
    const nonzero = Object.fromEntries(Object.entries(caps).filter(([, c]) => c !== 0));
    await this.#proc.invoke(ok, DaxMapReply, { total: h.ino.extents.length, first, nExtents: n, extents: ext }, nonzero);
  }

  /** monitor_delegate of one of `h`'s Requests fired: close the open once none is held outside the FS. */
  #delegatesGone(handle: number, cid: number): void {
    const h = this.#handles.get(handle);
    if (!h || !h.live.delete(cid) || h.live.size > 0) return;
    this.#counts.orphanedCloses++;
    this.#log?.info({ handle: h.id, path: h.ino.path }, 'client gone: open closed');
    this.#revoke(h).catch(() => {});
  }

  async #revoke(h: Handle): Promise<void> {
    this.#handles.delete(h.id);
    if (h.dax && h.mode & OpenMode.WRITE) this.#deps.invalidate(h.ino);
    const set = this.#byIno.get(h.ino.id);
    set?.delete(h);
    if (set?.size === 0) this.#byIno.delete(h.ino.id);
    h.live.clear();
    const cids = h.cids.splice(0);
    await Promise.all(cids.map((c) => this.#proc.capRevoke(c).catch(() => {})));
    this.#proc.capDrop(...cids).catch(() => {});
    if (!this.#byIno.has(h.ino.id)) await this.#deps.released(h.ino);
  }

  /** Close `handle` (its Requests revoked, DAX ones included) and answer DoneReply on `ok`. Errors: ENOENT. */
  async close(handle: number, ok: number): Promise<void> {
    const h = this.#handles.get(handle);
    if (!h) throw new FractosError('ENOENT', `no open handle ${handle}`);
    await this.#revoke(h);
    await this.#proc.invoke(ok, DoneReply);
  }

  /** Close every open of `ino` (its file is deleted). */
  async closeAll(ino: Inode): Promise<void> {
    for (const h of [...(this.#byIno.get(ino.id) ?? [])]) await this.#revoke(h);
  }

  /** Revoke the DAX Requests every open of `ino` holds on `vols` (their extents are being freed). */
  async revokeDax(ino: Inode, vols: Set<number>): Promise<void> {
    const revokes: Promise<unknown>[] = [];
    for (const h of this.#byIno.get(ino.id) ?? []) {
      for (const v of vols) {
        for (const c of h.daxByVolume.get(v) ?? []) {
          if (!c) continue;
          h.live.delete(c); // its monitor will not fire: revoked
          revokes.push(this.#proc.capRevoke(c).catch(() => {}));
        }
        h.daxByVolume.delete(v);
      }
    }
    await Promise.all(revokes);
  }
}

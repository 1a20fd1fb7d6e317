/**
 * `IoTarget`s that drive FractOS Requests from a client Process, for the fio runner:
 * - blockdev: a volume's read/write Requests;
 * - fs: an open file's mediated read/write Requests (served by the FS);
 * - dax: an open file's per-extent blockdev Requests (revocation-tree children).
 *
 * Hot path (per op): pick a free slot, one `requestInvoke` of the read/write Request with the
 * slot's preallocated arguments (offset/length rewritten in place, the slot's 4 KiB-aligned
 * buffer and its onSuccess/onError continuations). Slots are set up once: one shared region
 * of `slots * bs` bytes registered once, one `memoryDiminish` view per slot, one continuation
 * pair per slot (IoPort, preset slot id). No request_create/revoke and no JSON per op.
 */
import { FractosError } from '../../libfractos/errors.js';
import type { Process } from '../../libfractos/process.js';
import { IoPort } from '../../blockdev-adaptor/client.js';
import type { IoTarget } from './workload.js';
import { Perm } from '../../libfractos/protocol.js';

/** A contiguous piece of the target's address space served by one read/write Request pair. */
export interface TargetExtent {
  /** First byte of the piece in the target's address space. */
  fileOffset: number;
  length: number;
  /** Read Request (0: reads fail with EPERM). */
  read: number;
  /** Write Request (0: writes fail with EPERM). */
  write: number;
}

export interface RequestTargetOptions {
  /** Ops in flight at most (fio's iodepth x numjobs). */
  slots: number;
  /** Largest op, bytes (fio's bs). */
  bs: number;
  /** VolumeWrite flags (WriteFlags.FUA to wait for a device flush per write); default 0. */
  writeFlags?: number;
}

/** An IoTarget over FractOS read/write Requests (see the file comment). */
export class RequestTarget implements IoTarget {
  readonly size: number;
  readonly #extents: TargetExtent[];
  readonly #port: IoPort;
  readonly #bufs: number[];
  readonly #free: number[];
  readonly #flags: number;
  readonly #dones: ((err: FractosError | null) => void)[];
  readonly #slotDone: ((err: FractosError | null, bytes: number) => void)[];
  readonly #p: Process;
  readonly #regionCid: number;
  /** The mapped bytes of slot i are bytes.subarray(i * bs, (i + 1) * bs). */
  readonly bytes: Uint8Array;
  readonly bs: number;

  private constructor(p: Process, extents: TargetExtent[], port: IoPort, regionCid: number, bufs: number[], bytes: Uint8Array, o: RequestTargetOptions) {
    this.#p = p;
    this.#extents = extents;
    this.size = extents.reduce((m, x) => Math.max(m, x.fileOffset + x.length), 0);
    this.#port = port;
    this.#regionCid = regionCid;
    this.#bufs = bufs;
    this.bytes = bytes;
    this.bs = o.bs;
    this.#flags = o.writeFlags ?? 0;
    this.#free = bufs.map((_, i) => bufs.length - 1 - i);
    this.#dones = bufs.map(() => () => {});
    // One completion closure per slot, bound once.
    this.#slotDone = bufs.map((_, i) => (err: FractosError | null) => {
      const cb = this.#dones[i]!;
      this.#free.push(i);
      cb(err);
    });
  }

  /** Set up the slots (shared region, per-slot views and continuations). */
  static async create(p: Process, extents: TargetExtent[], o: RequestTargetOptions): Promise<RequestTarget> {
    const bs = Math.ceil(o.bs / 4096) * 4096;
    // Shared whole: the adaptor given a slot maps the region and does device I/O straight into it.
    const { cid, region } = await p.memoryCreateShared(o.slots * bs, Perm.RW, { shareWhole: true });
    const bufs: number[] = [];
    for (let i = 0; i < o.slots; i++) bufs.push(await p.memoryDiminish(cid, i * bs, bs));
    const port = new IoPort(p);
    await port.reserve(o.slots);
    return new RequestTarget(p, extents, port, cid, bufs, region.bytes, { ...o, bs });
  }

  read(offset: number, length: number, cb: (err: Error | null) => void): void {
    this.#op(false, offset, length, cb);
  }

  write(offset: number, length: number, cb: (err: Error | null) => void): void {
    this.#op(true, offset, length, cb);
  }

  #op(write: boolean, offset: number, length: number, cb: (err: Error | null) => void): void {
    const slot = this.#free.pop();
    if (slot === undefined) return cb(new FractosError('EAGAIN', 'more ops in flight than slots'));
    let x: TargetExtent | undefined;
    const ex = this.#extents;
    for (let i = 0; i < ex.length; i++) {
      const e = ex[i]!;
      if (offset >= e.fileOffset && offset < e.fileOffset + e.length) {
        x = e;
        break;
      }
    }
    const req = x ? (write ? x.write : x.read) : 0;
    if (!x || offset + length > x.fileOffset + x.length || length > this.bs || !req) {
      this.#free.push(slot);
      const code = x && !req ? 'EPERM' : 'ERANGE';
      return cb(new FractosError(code, `no ${write ? 'write' : 'read'} Request for [${offset}, ${offset + length})`));
    }
    this.#dones[slot] = cb;
    this.#port.io(req, write, offset - x.fileOffset, length, this.#bufs[slot]!, this.#slotDone[slot]!, write ? this.#flags : 0);
  }

  /** Revoke the continuations and drop the buffers. */
  async close(): Promise<void> {
    await this.#port.close();
    await this.#p.capRevoke(this.#regionCid).catch(() => {});
  }
}

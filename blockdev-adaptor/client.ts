/**
 * Client side of the blockdev contract (schema.ts), for the FS service, the fio runner and
 * DAX clients. Imports only libfractos, the schema and admin-secret.ts: no adaptor code.
 *
 * `IoPort` is the allocation-free way to keep many reads/writes in flight: continuation
 * Requests (onSuccess/onError pairs) are created once per concurrent op and reused; each
 * carries its pair id as a preset immediate at offset 0, below the reply fields (which
 * start at REPLY_IMM_BASE), so the same Request serves any number of completions without
 * request_create/revoke per op.
 */
import { randomBytes } from 'node:crypto';
import { adminProof } from './admin-secret.js';
import { FractosError, errorCodeFromWire } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import type { RequestArgs } from '../libfractos/protocol.js';
import { ErrorReply, tagOf, type Invocation } from '../libfractos/schema.js';
import {
  AdminClaim, AdminReply, IoReply, MAX_LISTED_VOLUMES, VolumeCreate, VolumeList, VolumeListReply, VolumeOpen, VolumeRead, VolumeReply, VolumeWrite,
} from './schema.js';

/** A volume as seen by a client: its id, size and per-volume Requests (cids owned by the caller). */
export interface VolumeHandle {
  volume: number;
  size: number;
  blockSize: number;
  read: number;
  write: number;
  delete: number;
}

function volumeOf(inv: Invocation): VolumeHandle {
  const { imms, caps } = VolumeReply.decode(inv);
  return { volume: imms.volume, size: imms.size, blockSize: imms.blockSize, read: caps.read, write: caps.write, delete: caps.delete };
}

/** The volume-administration Requests of a blockdev, held by the claim's owner (cids in its space). */
export interface VolumeAdmin {
  list: number;
  create: number;
  open: number;
}

/**
 * Claim the volume administration of blockdev `name` (bootstrap `${name}.admin_claim`): the
 * caller becomes its only owner until it drops the returned caps (`adminRelease`), closes its
 * channel or dies. While another Process holds it the blockdev answers EBUSY; this retries
 * until `timeoutMs` (ms; 0: one try) has passed, since a previous holder's release reaches
 * the blockdev asynchronously. `secret`: the blockdev's admin secret (admin-secret.ts), sent
 * as its proof. Errors: EBUSY (still held), EPERM (the blockdev has an admin secret and
 * `secret` is missing or another), ENOENT (no such blockdev within `timeoutMs`), ETIMEDOUT,
 * request_invoke's.
 */
export async function adminClaim(p: Process, name = 'blockdev', timeoutMs = 0, secret?: Uint8Array): Promise<VolumeAdmin> {
  const imms = secret ? { proof: adminProof(secret) } : {};
  const deadline = Date.now() + timeoutMs;
  const claim = await p.kvWait(`${name}.admin_claim`, Math.max(1, timeoutMs));
  try {
    for (let delay = 20; ; delay = Math.min(500, delay * 2)) {
      try {
        const { caps } = AdminReply.decode(await p.rpc(claim, AdminClaim, imms, {}, { timeoutMs: 30_000 }));
        return { list: caps.list, create: caps.create, open: caps.open };
      } catch (err) {
        if (!(err instanceof FractosError) || err.code !== 'EBUSY' || Date.now() + delay > deadline) throw err;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  } finally {
    p.capDrop(claim).catch(() => {});
  }
}

/**
 * Give the claim back: drop the caller's admin caps. The blockdev then revokes them and every
 * per-volume Request handed out under the claim, and reopens it (asynchronously).
 */
export async function adminRelease(p: Process, admin: VolumeAdmin): Promise<void> {
  await p.capDrop(admin.list, admin.create, admin.open);
}

/** volume_create through the admin Request `createCid`. Errors: the adaptor's (ENOSPC, EINVAL). */
export async function volumeCreate(p: Process, createCid: number, size: number): Promise<VolumeHandle> {
  return volumeOf(await p.rpc(createCid, VolumeCreate, { size }, {}, { timeoutMs: 120_000 }));
}

/** volume_open of an existing volume. Errors: ENOENT. */
export async function volumeOpen(p: Process, openCid: number, volume: number): Promise<VolumeHandle> {
  return volumeOf(await p.rpc(openCid, VolumeOpen, { volume }, {}, { timeoutMs: 30_000 }));
}

/** volume_list through the admin Request `listCid`: every volume id of the device, ascending. */
export async function volumeList(p: Process, listCid: number): Promise<number[]> {
  const { count, ids } = VolumeListReply.decode(await p.rpc(listCid, VolumeList, {}, {}, { timeoutMs: 30_000 })).imms;
  const b = Buffer.from(ids.buffer, ids.byteOffset, ids.byteLength);
  return Array.from({ length: Math.min(count, MAX_LISTED_VOLUMES) }, (_, i) => b.readUInt32LE(4 * i));
}

/** Completion of an IoPort op: null and the bytes transferred, or the error. */
export type IoDone = (err: FractosError | null, bytes: number) => void;

const F_OFFSET = VolumeRead.fields.find((f) => f.name === 'offset')!.offset;
const F_FLAGS = VolumeWrite.fields.find((f) => f.name === 'flags')!.offset;
const S_BUFFER = VolumeRead.slot('buffer');
const S_OK = VolumeRead.slot('onSuccess');
const S_ERR = VolumeRead.slot('onError');
const BYTES_OFF = IoReply.fields[0]!.offset;
const CODE_OFF = ErrorReply.fields[0]!.offset;

/**
 * The read/write layout for native callers (the mount's native DAX path, fs-mount/): where
 * offset (u64) and length (u32, right after it) go, a write's flags (u32), the cap slots of buffer and continuations,
 * and where IoReply's bytes (u32) and ErrorReply's code (u16) arrive in the continuation.
 */
export const IO_LAYOUT = { offset: F_OFFSET, flags: F_FLAGS, buffer: S_BUFFER, onSuccess: S_OK, onError: S_ERR, bytes: BYTES_OFF, code: CODE_OFF } as const;

interface Pair {
  id: number;
  ok: number;
  err: number;
  done: IoDone | null;
  // Preallocated invocation arguments, rewritten per op (encoded synchronously by requestInvoke).
  head: Buffer; // offset u64 + length u32 (+ flags u32)
  args: RequestArgs;
  argsW: RequestArgs;
  /**
   * The invocation's REPLY, bound once: a refused invocation (nothing delivered, so no
   * continuation will run) fails the op in flight. A success REPLY may be read after the
   * continuation (quiet), even after the pair was reissued: it is ignored.
   */
  onReply: (err: FractosError | null) => void;
}

/**
 * Issues blockdev read/write invocations with pooled continuation Requests. Works for any
 * Request with the VolumeRead/VolumeWrite layout (a volume's Requests, DAX revtree
 * children, derived ones) and for fs.read/fs.write (same field order after a u32 preset).
 */
export class IoPort {
  readonly #p: Process;
  readonly #okTag: number;
  readonly #errTag: number;
  readonly #pairs: Pair[] = [];
  readonly #free: Pair[] = [];
  #creating = 0;
  #closed = false;

  constructor(p: Process) {
    this.#p = p;
    const salt = randomBytes(6).toString('hex');
    this.#okTag = tagOf(`ioport.ok.${salt}`);
    this.#errTag = tagOf(`ioport.err.${salt}`);
    p.onRequest(this.#okTag, (inv) => this.#complete(inv, false));
    p.onRequest(this.#errTag, (inv) => this.#complete(inv, true));
  }

  /** Create `n` continuation pairs up front (so that the first ops do not pay request_create). */
  async reserve(n: number): Promise<void> {
    const made: Pair[] = [];
    for (let i = this.#pairs.length + this.#creating; i < n; i++) made.push(await this.#newPair());
    this.#free.push(...made);
  }

  async #newPair(): Promise<Pair> {
    this.#creating++;
    try {
      const id = this.#pairs.length + this.#creating;
      const idb = Buffer.alloc(4);
      idb.writeUInt32LE(id, 0);
      const [ok, err] = await Promise.all([
        this.#p.requestCreate(this.#okTag, { imms: [{ offset: 0, bytes: idb }] }),
        this.#p.requestCreate(this.#errTag, { imms: [{ offset: 0, bytes: idb }] }),
      ]);
      const head = Buffer.alloc(16);
      const pair: Pair = {
        id, ok, err, done: null, head,
        args: { imms: [{ offset: F_OFFSET, bytes: head.subarray(0, 12) }], caps: [{ slot: S_BUFFER, cap: 0 }, { slot: S_OK, cap: ok }, { slot: S_ERR, cap: err }] },
        argsW: { imms: [{ offset: F_OFFSET, bytes: head.subarray(0, 12) }, { offset: F_FLAGS, bytes: head.subarray(12, 16) }], caps: [{ slot: S_BUFFER, cap: 0 }, { slot: S_OK, cap: ok }, { slot: S_ERR, cap: err }] },
        onReply: (e) => {
          const done = pair.done;
          if (!e || !done) return;
          pair.done = null;
          this.#free.push(pair);
          done(e, 0);
        },
      };
      this.#pairs[id - 1] = pair;
      return pair;
    } finally {
      this.#creating--;
    }
  }

  /**
   * Invoke `req` (a read or write Request with the blockdev layout) for `length` bytes at
   * `offset` into/out of Memory `buffer`; `done(err, bytes)` once the continuation runs.
   * `flags` (writes only; WriteFlags) is sent when `write` is true. Errors (to done): the
   * provider's code, or request_invoke's (EREVOKED, EBADCAP, ...).
   */
  io(req: number, write: boolean, offset: number, length: number, buffer: number, done: IoDone, flags = 0): void {
    const pair = this.#free.pop();
    if (!pair) {
      this.#newPair().then(
        (p) => this.#issue(p, req, write, offset, length, buffer, done, flags),
        (e: unknown) => done(e instanceof FractosError ? e : new FractosError('EIO', String(e)), 0),
      );
      return;
    }
    this.#issue(pair, req, write, offset, length, buffer, done, flags);
  }

  #issue(pair: Pair, req: number, write: boolean, offset: number, length: number, buffer: number, done: IoDone, flags: number): void {
    if (this.#closed) {
      done(new FractosError('EDISCONNECTED', 'port closed'), 0);
      return;
    }
    pair.done = done;
    const h = pair.head;
    h.writeUInt32LE(offset % 0x100000000, 0);
    h.writeUInt32LE(Math.floor(offset / 0x100000000), 4);
    h.writeUInt32LE(length, 8);
    h.writeUInt32LE(flags, 12);
    const args = write ? pair.argsW : pair.args;
    args.caps![0]!.cap = buffer;
    // quiet: the continuation answers; the REPLY does not wake us by itself (docs/queues.md)
    this.#p.requestInvokeCb(req, args, true, pair.onReply);
  }

  #complete(inv: Invocation, failed: boolean): void {
    const id = inv.view(0, 4).readUInt32LE(0);
    const pair = this.#pairs[id - 1];
    if (!pair || !pair.done) return;
    const done = pair.done;
    pair.done = null;
    this.#free.push(pair);
    if (failed) {
      const code = inv.view(CODE_OFF, 2).readUInt16LE(0);
      const e = ErrorReply.decode(inv).imms;
      done(new FractosError(errorCodeFromWire(code), e.message), 0);
    } else done(null, inv.view(BYTES_OFF, 4).readUInt32LE(0));
  }

  /** Promise form of `io`, for control paths. */
  ioAsync(req: number, write: boolean, offset: number, length: number, buffer: number, flags = 0): Promise<number> {
    return new Promise((resolve, reject) => this.io(req, write, offset, length, buffer, (e, n) => (e ? reject(e) : resolve(n)), flags));
  }

  /** Revoke every continuation Request (in-flight ops never complete after this). */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#pairs.flatMap((p) => [this.#p.capRevoke(p.ok).catch(() => {}), this.#p.capRevoke(p.err).catch(() => {})]));
  }
}

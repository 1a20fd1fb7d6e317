/**
 * A Process's channel as the Controller sees it: its capability space, the objects it
 * owns, its delivery credits and the calls the Controller made to it (served memory).
 */
import { FractosError } from '../libfractos/errors.js';
import type { Link } from '../libfractos/link.js';
import { PendingCalls, type ReplyCb } from '../libfractos/calls.js';
import type { CapEntry, Obj, Target } from './objects.js';

/** A delivery waiting for credits: `run` delivers it when credits allow, `fail` answers its invoker. */
export interface Delivery {
  run: () => void;
  fail: (err: FractosError) => void;
}

export class ProcConn {
  /**
   * cid -> entry. Cids are issued in order from a per-space u32 counter (1, 2, ..., 2^32-1,
   * then 1 again, skipping cids in use), so a cid value comes back only after 2^32-2 other
   * cids were issued in this space: a stale cid is EBADCAP instead of naming whatever cap
   * came later (a slot index plus a 12-bit generation came back after 4096 reuses of a slot).
   */
  readonly #caps = new Map<number, CapEntry>();
  /** The next cid to issue (1..2^32-1). */
  #nextCid = 1;
  /** Base objects this Process registered (revoked when it goes away). */
  readonly owned = new Set<Obj>();
  /** DELIVERs sent and not yet acknowledged by a DELIVER_ACK (credits in use). */
  outstanding = 0;
  /** Bytes of the `outstanding` DELIVER frames. */
  outstandingBytes = 0;
  /** Sizes (bytes) of the outstanding DELIVERs, oldest first from `#sizesHead`. */
  #sizes: number[] = [];
  #sizesHead = 0;
  /** Deliveries waiting for credits, from `queueHead` on (slots before it are consumed). */
  readonly queue: (Delivery | undefined)[] = [];
  queueHead = 0;
  /** Bytes of the deliveries in `queue` (queuedDeliveryBytes of each). */
  queuedBytes = 0;
  name = '';
  pid = 0;
  /** Kernel uid of the Process (-1: unknown, e.g. a tcp channel). */
  uid = -1;
  /** HELLO feature bits (Feature). */
  features = 0;
  alive = true;
  readonly calls = new PendingCalls();

  constructor(
    readonly id: number,
    readonly link: Link,
  ) {}

  /** Entries of this space (a live view; copy it before removing entries while iterating). */
  get caps(): IterableIterator<CapEntry> {
    return this.#caps.values();
  }

  /** Entries in this space. */
  get capCount(): number {
    return this.#caps.size;
  }

  /** Install a cap in this space. Errors: ENOSPC when the space holds `maxCaps` entries. */
  install(target: Target, maxCaps: number): CapEntry {
    if (this.#caps.size >= maxCaps) throw new FractosError('ENOSPC', `capability space full (${maxCaps} caps)`);
    let cid = this.#nextCid;
    while (this.#caps.has(cid)) cid = cid === 0xffffffff ? 1 : cid + 1; // only after a wrap
    this.#nextCid = cid === 0xffffffff ? 1 : cid + 1;
    const e: CapEntry = { target, proc: this, cid };
    this.#caps.set(cid, e);
    target.entries.add(e);
    return e;
  }

  /** The entry for a cid. Errors: EBADCAP when the cid is not in this space. */
  lookup(cid: number): CapEntry {
    const e = this.#caps.get(cid);
    if (e === undefined) throw new FractosError('EBADCAP', `cid ${cid} is not in the capability space of process ${this.id}`);
    return e;
  }

  /** Remove an entry (no revocation). Returns it. */
  remove(cid: number): CapEntry | undefined {
    const e = this.#caps.get(cid);
    if (!e) return undefined;
    this.#caps.delete(cid);
    e.target.entries.delete(e);
    return e;
  }

  /** Count a DELIVER of `bytes` bytes sent to this Process. */
  delivered(bytes: number): void {
    this.outstanding++;
    this.outstandingBytes += bytes;
    this.#sizes.push(bytes);
  }

  /**
   * A DELIVER_ACK of `n`: the oldest `n` outstanding DELIVERs were taken in (a channel
   * delivers in order). Errors: EPROTO when fewer than `n` are outstanding.
   */
  acked(n: number): void {
    if (n > this.outstanding) throw new FractosError('EPROTO', `DELIVER_ACK of ${n} with ${this.outstanding} deliveries outstanding`);
    this.outstanding -= n;
    for (let i = 0; i < n; i++) this.outstandingBytes -= this.#sizes[this.#sizesHead++]!;
    if (this.#sizesHead === this.#sizes.length) {
      this.#sizes = [];
      this.#sizesHead = 0;
    } else if (this.#sizesHead > 1024 && this.#sizesHead * 2 > this.#sizes.length) {
      this.#sizes = this.#sizes.slice(this.#sizesHead);
      this.#sizesHead = 0;
    }
  }

  /** Test hook: the next cid this space issues (1..2^32-1), to exercise the wrap. */
  setNextCidForTest(cid: number): void {
    if (!Number.isInteger(cid) || cid < 1 || cid > 0xffffffff) throw new FractosError('EINVAL', `cid ${cid} outside 1..2^32-1`);
    this.#nextCid = cid;
  }

  /**
   * Call the Process (served memory read/write); `cb` gets the REPLY frame, EFAULT when
   * the Process is gone, or ETIMEDOUT when no REPLY came within `timeoutMs` (ms; a late
   * REPLY is then ignored).
   */
  call(frameFor: (seq: number) => Buffer, timeoutMs: number, what: string, cb: ReplyCb): void {
    if (!this.alive) {
      cb(new FractosError('EFAULT', `process ${this.id} is gone`), null);
      return;
    }
    this.link.send(frameFor(this.calls.addWithDeadline(cb, timeoutMs, `${what} by process ${this.id} (${this.name})`)));
  }
}

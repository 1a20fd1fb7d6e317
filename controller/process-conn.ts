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

/** Bits of a cid that index the capability space; the rest is a generation. */
export const CID_INDEX_BITS = 20;
const INDEX_MASK = (1 << CID_INDEX_BITS) - 1;

export class ProcConn {
  /**
   * index -> entry. A cid is `index | generation << 20`: an index is reused after
   * cap_drop with the next generation, so a stale cid is EBADCAP instead of naming
   * whatever cap took its slot (like Zircon handle values).
   */
  readonly caps: (CapEntry | undefined)[] = [undefined]; // index 0 is never used
  readonly #gens: number[] = [0];
  readonly freeCids: number[] = [];
  /** Base objects this Process registered (revoked when it goes away). */
  readonly owned = new Set<Obj>();
  outstanding = 0;
  /** Deliveries waiting for credits, from `queueHead` on (slots before it are consumed). */
  readonly queue: (Delivery | undefined)[] = [];
  queueHead = 0;
  name = '';
  pid = 0;
  /** HELLO feature bits (Feature). */
  features = 0;
  alive = true;
  readonly calls = new PendingCalls();

  constructor(
    readonly id: number,
    readonly link: Link,
  ) {}

  /** Install a cap in this space. Errors: ENOSPC when the space is full. */
  install(target: Target, maxCaps: number): CapEntry {
    let idx = this.freeCids.pop();
    if (idx === undefined) {
      if (this.caps.length > Math.min(maxCaps, INDEX_MASK)) throw new FractosError('ENOSPC', `capability space full (${maxCaps} caps)`);
      idx = this.caps.length;
      this.caps.push(undefined);
      this.#gens.push(0);
    }
    const cid = (idx | (this.#gens[idx]! << CID_INDEX_BITS)) >>> 0;
    const e: CapEntry = { target, proc: this, cid };
    this.caps[idx] = e;
    target.entries.add(e);
    return e;
  }

  /** The entry for a cid. Errors: EBADCAP when the cid is not in this space. */
  lookup(cid: number): CapEntry {
    const e = this.caps[cid & INDEX_MASK];
    if (e === undefined || e.cid !== cid) throw new FractosError('EBADCAP', `cid ${cid} is not in the capability space of process ${this.id}`);
    return e;
  }

  /** Remove an entry (no revocation). Returns it. */
  remove(cid: number): CapEntry | undefined {
    const idx = cid & INDEX_MASK;
    const e = this.caps[idx];
    if (!e || e.cid !== cid) return undefined;
    this.caps[idx] = undefined;
    this.#gens[idx] = (this.#gens[idx]! + 1) & (0xffffffff >>> CID_INDEX_BITS);
    this.freeCids.push(idx);
    e.target.entries.delete(e);
    return e;
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

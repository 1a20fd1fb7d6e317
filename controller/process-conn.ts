/**
 * A Process's channel as the Controller sees it: its capability space, the objects it
 * owns, its delivery credits and the calls the Controller made to it (served memory).
 */
import { FractosError } from '../libfractos/errors.js';
import type { Link } from '../libfractos/link.js';
import { PendingCalls, type ReplyCb } from '../libfractos/calls.js';
import type { CapEntry, Obj, Target } from './objects.js';

/** A delivery waiting for credits: the frame builder runs when credits allow. */
export interface QueuedDelivery {
  run: () => void;
}

export class ProcConn {
  /** cid -> entry; cids are dense small integers, reused after cap_drop. */
  readonly caps: (CapEntry | undefined)[] = [undefined]; // cid 0 is never used
  readonly freeCids: number[] = [];
  capCount = 0;
  /** Base objects this Process registered (revoked when it goes away). */
  readonly owned = new Set<Obj>();
  outstanding = 0;
  readonly queue: QueuedDelivery[] = [];
  queueHead = 0;
  name = '';
  pid = 0;
  helloDone = false;
  alive = true;
  readonly calls = new PendingCalls();

  constructor(
    readonly id: number,
    readonly link: Link,
  ) {}

  /** Install a cap in this space. Errors: ENOSPC when the space is full. */
  install(target: Target, maxCaps: number): CapEntry {
    let cid = this.freeCids.pop();
    if (cid === undefined) {
      if (this.caps.length > maxCaps) throw new FractosError('ENOSPC', `capability space full (${maxCaps} caps)`);
      cid = this.caps.length;
      this.caps.push(undefined);
    }
    const e: CapEntry = { target, proc: this, cid };
    this.caps[cid] = e;
    this.capCount++;
    target.entries.add(e);
    return e;
  }

  /** The entry for a cid. Errors: EBADCAP when the cid is not in this space. */
  lookup(cid: number): CapEntry {
    const e = this.caps[cid];
    if (e === undefined) throw new FractosError('EBADCAP', `cid ${cid} is not in the capability space of process ${this.id}`);
    return e;
  }

  /** Remove an entry (no revocation). Returns it. */
  remove(cid: number): CapEntry | undefined {
    const e = this.caps[cid];
    if (!e) return undefined;
    this.caps[cid] = undefined;
    this.freeCids.push(cid);
    this.capCount--;
    e.target.entries.delete(e);
    return e;
  }

  /** Call the Process (served memory read/write); `cb` gets the REPLY frame. */
  call(frameFor: (seq: number) => Buffer, cb: ReplyCb): void {
    if (!this.alive) {
      cb(new FractosError('EFAULT', `process ${this.id} is gone`), null);
      return;
    }
    this.link.send(frameFor(this.calls.add(cb)));
  }
}

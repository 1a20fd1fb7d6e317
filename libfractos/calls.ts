/**
 * Calls in flight on a link: sequence numbers and the callbacks waiting for their REPLY.
 * Used by Processes (calls to their Controller), by Controllers (served-memory calls to
 * Processes, calls to peers).
 */
import { FractosError, errorCodeFromWire } from './errors.js';
import { HEADER_BYTES, frameCode, frameSeq } from './protocol.js';

/** Callback of a call: an error, or the REPLY frame (valid only during the callback). */
export type ReplyCb = (err: FractosError | null, frame: Buffer | null) => void;

export class PendingCalls {
  #seq = 1;
  readonly #pending = new Map<number, ReplyCb>();

  /** Register a callback; returns the seq to put in the call's header. */
  add(cb: ReplyCb): number {
    const seq = this.#seq;
    this.#seq = (this.#seq + 1) >>> 0 || 1;
    this.#pending.set(seq, cb);
    return seq;
  }

  get size(): number {
    return this.#pending.size;
  }

  /** Deliver a REPLY frame. Errors: EPROTO for a seq with no call waiting. */
  complete(frame: Buffer): void {
    const seq = frameSeq(frame);
    const cb = this.#pending.get(seq);
    if (!cb) throw new FractosError('EPROTO', `reply to unknown seq ${seq}`);
    this.#pending.delete(seq);
    const code = frameCode(frame);
    if (code !== 0) cb(new FractosError(errorCodeFromWire(code), frame.toString('utf8', HEADER_BYTES)), null);
    else cb(null, frame);
  }

  /** Fail every call in flight with `code` (the link went away). */
  failAll(code: 'EDISCONNECTED' | 'EFAULT', message: string): void {
    const cbs = [...this.#pending.values()];
    this.#pending.clear();
    for (const cb of cbs) cb(new FractosError(code, message), null);
  }
}

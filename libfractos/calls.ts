/**
 * Calls in flight on a link: sequence numbers and the callbacks waiting for their REPLY.
 * Used by Processes (calls to their Controller), by Controllers (served-memory calls to
 * Processes, calls to peers).
 */
import { FractosError, errorCodeFromWire } from './errors.js';
import { HEADER_BYTES, frameCode, frameSeq } from './protocol.js';

/** Callback of a call: an error, or the REPLY frame (valid only during the callback). */
export type ReplyCb = (err: FractosError | null, frame: Buffer | null) => void;

const EXPIRED: ReplyCb = () => {};

/** How many expired calls a PendingCalls remembers, so that their late REPLYs are ignored. */
export const MAX_EXPIRED_CALLS = 1024;

export class PendingCalls {
  #seq = 1;
  readonly #pending = new Map<number, ReplyCb>();
  /** Seqs of calls that timed out (oldest first): a late REPLY to one is consumed silently. */
  readonly #expired: number[] = [];

  /**
   * Register a callback; returns the seq to put in the call's header, in [1, 2^31): seqs
   * with the top bit set belong to a native loop on the same channel (native/include/frame_hook.h).
   */
  add(cb: ReplyCb): number {
    const seq = this.#seq;
    this.#seq = (this.#seq + 1) & 0x7fffffff || 1;
    this.#pending.set(seq, cb);
    return seq;
  }

  /**
   * Register a callback that fails with ETIMEDOUT unless its REPLY arrives within
   * `timeoutMs` (ms). A REPLY arriving later is dropped (the last MAX_EXPIRED_CALLS expired
   * seqs are remembered; an older late REPLY is EPROTO, like any unknown seq).
   */
  addWithDeadline(cb: ReplyCb, timeoutMs: number, what: string): number {
    let timer: NodeJS.Timeout | null = null;
    const seq = this.add((err, frame) => {
      if (timer) clearTimeout(timer);
      cb(err, frame);
    });
    timer = setTimeout(() => {
      timer = null;
      if (this.#pending.get(seq) === undefined) return;
      this.#pending.set(seq, EXPIRED);
      this.#expired.push(seq);
      if (this.#expired.length > MAX_EXPIRED_CALLS) {
        const old = this.#expired.shift()!;
        if (this.#pending.get(old) === EXPIRED) this.#pending.delete(old);
      }
      cb(new FractosError('ETIMEDOUT', `${what} did not complete within ${timeoutMs} ms`), null);
    }, timeoutMs);
    timer.unref();
    return seq;
  }

  /** Calls waiting for their REPLY (expired ones not counted). */
  get size(): number {
    return this.#pending.size - this.#expired.length;
  }

  /** Deliver a REPLY frame. Errors: EPROTO for a seq with no call waiting. */
  complete(frame: Buffer): void {
    const seq = frameSeq(frame);
    const cb = this.#pending.get(seq);
    if (!cb) throw new FractosError('EPROTO', `reply to unknown seq ${seq}`);
    this.#pending.delete(seq);
    if (cb === EXPIRED) {
      this.#expired.splice(this.#expired.indexOf(seq), 1);
      return;
    }
    const code = frameCode(frame);
    if (code !== 0) cb(new FractosError(errorCodeFromWire(code), frame.toString('utf8', HEADER_BYTES)), null);
    else cb(null, frame);
  }

  /** Fail one call in flight (its frame could not be sent); unknown seqs are ignored. */
  fail(seq: number, err: FractosError): void {
    const cb = this.#pending.get(seq);
    if (!cb || cb === EXPIRED) return;
    this.#pending.delete(seq);
    cb(err, null);
  }

  /** Fail every call in flight with `code` (the link went away). */
  failAll(code: 'EDISCONNECTED' | 'EFAULT', message: string): void {
    const cbs = [...this.#pending.values()].filter((cb) => cb !== EXPIRED);
    this.#pending.clear();
    this.#expired.length = 0;
    for (const cb of cbs) cb(new FractosError(code, message), null);
  }
}

/**
 * A pool of equal, preallocated slots (the blockdev's bounce slots, the FS's staging slots)
 * shared fairly between clients. A service cannot tell Processes apart, only the grants it
 * made: the key is such a grant (a volume, an open handle). A slot may stay held for as long
 * as a client's Memory takes to answer a memory_copy (a served buffer that never answers
 * holds it until the copy fails), so:
 * - one key holds at most `perKey` slots at once: a stalled client cannot hold them all, and
 *   the others keep `size - perKey` (or more) between them;
 * - waiters are served round-robin across keys, FIFO within a key: a key with many queued
 *   operations does not delay another key's next one by more than one slot turn per key;
 * - one key queues at most `maxQueued` waiters (EAGAIN beyond): the queue is bounded too.
 */
import { FractosError } from '../libfractos/errors.js';

export class FairSlots<K> {
  readonly size: number;
  readonly perKey: number;
  readonly maxQueued: number;
  readonly #free: number[] = [];
  readonly #held = new Map<K, number>();
  readonly #waiting = new Map<K, ((slot: number) => void)[]>();
  /** Keys with waiters, in round-robin order. */
  #order: K[] = [];

  /**
   * `size` slots numbered 0 .. size - 1; a key holds at most `perKey` (1 .. size) at once and
   * queues at most `maxQueued` (>= 0) more. Errors (RangeError): arguments out of range.
   */
  constructor(size: number, perKey: number, maxQueued = 1024) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`FairSlots size must be a positive integer, got ${size}`);
    if (!Number.isInteger(perKey) || perKey < 1 || perKey > size) throw new RangeError(`FairSlots perKey must be in [1, ${size}], got ${perKey}`);
    this.size = size;
    if (!Number.isInteger(maxQueued) || maxQueued < 0) throw new RangeError(`FairSlots maxQueued must be an integer >= 0, got ${maxQueued}`);
    this.perKey = perKey;
    this.maxQueued = maxQueued;
    for (let i = size - 1; i >= 0; i--) this.#free.push(i);
  }

  /** Slots `key` holds now. */
  heldBy(key: K): number {
    return this.#held.get(key) ?? 0;
  }

  /** Free slots now. */
  get free(): number {
    return this.#free.length;
  }

  /** Operations waiting for a slot, all keys. */
  get waiting(): number {
    let n = 0;
    for (const q of this.#waiting.values()) n += q.length;
    return n;
  }

  /**
   * `cb(slot)` once `key` may hold one more slot and one is free (at once when possible).
   * Pair with `release`. Errors (thrown, cb not called): EAGAIN when `key` already has
   * `maxQueued` waiters.
   */
  acquire(key: K, cb: (slot: number) => void): void {
    if (this.#free.length > 0 && this.heldBy(key) < this.perKey && !this.#waiting.has(key)) {
      this.#give(key, cb);
      return;
    }
    const q = this.#waiting.get(key);
    if ((q?.length ?? 0) >= this.maxQueued) throw new FractosError('EAGAIN', `more than ${this.maxQueued} operations of one client wait for a slot`);
    if (q) q.push(cb);
    else {
      this.#waiting.set(key, [cb]);
      this.#order.push(key);
    }
  }

  /** Promise form of `acquire` (rejects with its EAGAIN). */
  acquireAsync(key: K): Promise<number> {
    return new Promise((resolve) => this.acquire(key, resolve));
  }

  /** Give back `slot`, held by `key`; the next waiter in round-robin order gets it. */
  release(key: K, slot: number): void {
    const h = this.heldBy(key) - 1;
    if (h > 0) this.#held.set(key, h);
    else this.#held.delete(key);
    this.#free.push(slot);
    this.#dispatch();
  }

  #give(key: K, cb: (slot: number) => void): void {
    this.#held.set(key, this.heldBy(key) + 1);
    cb(this.#free.pop()!);
  }

  // Hand free slots to waiting keys below their cap, one per key per turn.
  #dispatch(): void {
    let scanned = 0;
    while (this.#free.length > 0 && scanned < this.#order.length) {
      const key = this.#order.shift()!;
      const q = this.#waiting.get(key)!;
      if (this.heldBy(key) >= this.perKey) {
        this.#order.push(key);
        scanned++;
        continue;
      }
      scanned = 0;
      const cb = q.shift()!;
      if (q.length > 0) this.#order.push(key);
      else this.#waiting.delete(key);
      this.#give(key, cb);
    }
  }
}

/**
 * A pool of equal, preallocated slots (the blockdev's bounce slots, the FS's staging slots)
 * shared fairly between clients. A service cannot tell Processes apart, only the grants it
 * made: the key is such a grant (a volume, an open handle), and one client may hold many
 * (open a file 4 times, open 4 DAX files). A slot may stay held for as long as a client's
 * Memory takes to answer a memory_copy (a served buffer that never answers holds it until
 * the copy fails, up to the Controller's served timeout), so each acquire names the class of
 * its copy (`mayStall`, see `mayStall(desc)`):
 * - prompt copies (shared Memory on this Controller: the Controller, or a mapping, copies it
 *   without the client's help) and may-stall copies (served Memory, or Memory on another
 *   Controller) are accounted apart; may-stall copies hold at most `maxStalling` slots
 *   together, so prompt copies always find `size - maxStalling` slots however many grants
 *   a stalling client holds;
 * - within each class one key holds at most `perKey` slots at once: a stalled grant cannot
 *   hold its whole class;
 * - waiters are served round-robin across (class, key), FIFO within one: a key with many
 *   queued operations does not delay another key's next one by more than one slot turn per
 *   key;
 * - one key queues at most `maxQueued` waiters per class (EAGAIN beyond): the queue is
 *   bounded too.
 */
import { FractosError } from '../libfractos/errors.js';

import type { MemoryDescriptor } from '../libfractos/schema.js';

/**
 * True when a memory_copy to/from the Memory `desc` describes may be held up by its owner or
 * a link: served Memory (its owner answers each copy, up to the Controller's served
 * timeout) or Memory on another Controller (the copy crosses a peer link, which may be slow
 * or down until the peer timeout). False for shared Memory on this Controller, which the
 * Controller copies itself.
 */
export function mayStall(desc: Pick<MemoryDescriptor, 'local' | 'backing'>): boolean {
  return !desc.local || desc.backing !== 'shared';
}

/** Per-class state: slots held and waiters, by key. */
interface ClassState<K> {
  held: Map<K, number>;
  waiting: Map<K, ((slot: number) => void)[]>;
}

export class FairSlots<K> {
  readonly size: number;
  readonly perKey: number;
  readonly maxQueued: number;
  /** Most slots may-stall copies hold together. */
  readonly maxStalling: number;
  readonly #free: number[] = [];
  /** [prompt, may-stall]. */
  readonly #cls: [ClassState<K>, ClassState<K>] = [
    { held: new Map(), waiting: new Map() },
    { held: new Map(), waiting: new Map() },
  ];
  /** Class (0 prompt, 1 may-stall) of each held slot. */
  readonly #slotCls: Uint8Array;
  #stalling = 0;
  /** (class, key) pairs with waiters, in round-robin order. */
  #order: [0 | 1, K][] = [];

  /**
   * `size` slots numbered 0 .. size - 1; a key holds at most `perKey` (1 .. size) at once in
   * each class and queues at most `maxQueued` (>= 0) more; may-stall copies hold at most
   * `maxStalling` (1 .. size, default size: no class bound) together.
   * Errors (RangeError): arguments out of range.
   */
  constructor(size: number, perKey: number, maxQueued = 1024, maxStalling = size) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`FairSlots size must be a positive integer, got ${size}`);
    if (!Number.isInteger(perKey) || perKey < 1 || perKey > size) throw new RangeError(`FairSlots perKey must be in [1, ${size}], got ${perKey}`);
    if (!Number.isInteger(maxQueued) || maxQueued < 0) throw new RangeError(`FairSlots maxQueued must be an integer >= 0, got ${maxQueued}`);
    if (!Number.isInteger(maxStalling) || maxStalling < 1 || maxStalling > size) throw new RangeError(`FairSlots maxStalling must be in [1, ${size}], got ${maxStalling}`);
    this.size = size;
    this.perKey = perKey;
    this.maxQueued = maxQueued;
    this.maxStalling = maxStalling;
    this.#slotCls = new Uint8Array(size);
    for (let i = size - 1; i >= 0; i--) this.#free.push(i);
  }

  /** Slots `key` holds now: of class `stall` (true: may-stall, false: prompt), or of both when omitted. */
  heldBy(key: K, stall?: boolean): number {
    if (stall !== undefined) return this.#cls[stall ? 1 : 0].held.get(key) ?? 0;
    return (this.#cls[0].held.get(key) ?? 0) + (this.#cls[1].held.get(key) ?? 0);
  }

  /** Free slots now. */
  get free(): number {
    return this.#free.length;
  }

  /** Slots held by may-stall copies now (at most maxStalling). */
  get stalling(): number {
    return this.#stalling;
  }

  /** Operations waiting for a slot, all keys and classes. */
  get waiting(): number {
    let n = 0;
    for (const c of this.#cls) for (const q of c.waiting.values()) n += q.length;
    return n;
  }

  /**
   * `cb(slot)` once `key` may hold one more slot of its class (`stall`: a may-stall copy,
   * default false) and one is free (at once when possible). Pair with `release`.
   * Errors (thrown, cb not called): EAGAIN when `key` already has `maxQueued` waiters in
   * that class.
   */
  acquire(key: K, cb: (slot: number) => void, stall = false): void {
    const c = stall ? 1 : 0;
    const st = this.#cls[c];
    if (this.#free.length > 0 && this.#mayGive(c, key) && !st.waiting.has(key)) {
      this.#give(c, key, cb);
      return;
    }
    const q = st.waiting.get(key);
    if ((q?.length ?? 0) >= this.maxQueued) throw new FractosError('EAGAIN', `more than ${this.maxQueued} operations of one client wait for a slot`);
    if (q) q.push(cb);
    else {
      st.waiting.set(key, [cb]);
      this.#order.push([c, key]);
    }
  }

  /** Promise form of `acquire` (rejects with its EAGAIN). */
  acquireAsync(key: K, stall = false): Promise<number> {
    return new Promise((resolve) => this.acquire(key, resolve, stall));
  }

  /** Give back `slot`, held by `key` (its class is remembered); the next waiter in round-robin order gets it. */
  release(key: K, slot: number): void {
    const c = this.#slotCls[slot]! as 0 | 1;
    const held = this.#cls[c].held;
    const h = (held.get(key) ?? 0) - 1;
    if (h > 0) held.set(key, h);
    else held.delete(key);
    if (c === 1) this.#stalling--;
    this.#free.push(slot);
    this.#dispatch();
  }

  #mayGive(c: 0 | 1, key: K): boolean {
    return (this.#cls[c].held.get(key) ?? 0) < this.perKey && (c === 0 || this.#stalling < this.maxStalling);
  }

  #give(c: 0 | 1, key: K, cb: (slot: number) => void): void {
    const held = this.#cls[c].held;
    held.set(key, (held.get(key) ?? 0) + 1);
    if (c === 1) this.#stalling++;
    const slot = this.#free.pop()!;
    this.#slotCls[slot] = c;
    cb(slot);
  }

  // Hand free slots to waiting (class, key) pairs below their caps, one per pair per turn.
  #dispatch(): void {
    let scanned = 0;
    while (this.#free.length > 0 && scanned < this.#order.length) {
      const entry = this.#order.shift()!;
      const [c, key] = entry;
      const st = this.#cls[c];
      const q = st.waiting.get(key)!;
      if (!this.#mayGive(c, key)) {
        this.#order.push(entry);
        scanned++;
        continue;
      }
      scanned = 0;
      const cb = q.shift()!;
      if (q.length > 0) this.#order.push(entry);
      else st.waiting.delete(key);
      this.#give(c, key, cb);
    }
  }
}

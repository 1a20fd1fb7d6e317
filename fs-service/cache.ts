/**
 * The FS's block cache: an LRU of 4 KiB file blocks (BLOCK), write-through, used by mediated
 * I/O only (DAX goes straight to the blockdev).
 *
 * Invariants:
 * - A cached block is a copy of what the device holds for that file block: writers put a
 *   block only after writing it back, and a read puts what it read only when no mediated
 *   write of the file ran meanwhile (mediated.ts checks `writing`/`wgen`).
 * - Whoever changes the device bytes behind the cache's back drops the file's blocks first:
 *   truncate (from the new size on), delete (all), a DAX open for writing (at open and close).
 * - Keys are (inode id, block number) packed as id * 2^32 + block: files up to 16 TiB.
 * - Bounded: at most `blocks` buffers of BLOCK bytes, plus a free list of at most 1024
 *   evicted buffers reused by `put`.
 */
import { LRUCache } from 'lru-cache';
import { BLOCK, type FsCounts } from './inode.js';

const SPAN = 0x100000000;

export class BlockCache {
  readonly #lru: LRUCache<number, Buffer>;
  readonly #spare: Buffer[] = [];
  readonly #counts: Pick<FsCounts, 'hits' | 'misses'>;

  /** `blocks`: capacity in BLOCK-byte blocks (16 at least); `counts`: where `readRun` counts hits/misses. */
  constructor(blocks: number, counts: Pick<FsCounts, 'hits' | 'misses'>) {
    this.#counts = counts;
    this.#lru = new LRUCache<number, Buffer>({
      max: Math.max(16, blocks),
      dispose: (b) => {
        if (this.#spare.length < 1024) this.#spare.push(b);
      },
    });
  }

  /** Block `blk` of inode `ino` (an id), or undefined; not counted. */
  get(ino: number, blk: number): Buffer | undefined {
    return this.#lru.get(ino * SPAN + blk);
  }

  /** Cache a copy of `src` (BLOCK bytes) as block `blk` of inode `ino`. */
  put(ino: number, blk: number, src: Uint8Array): void {
    const b = this.#spare.pop() ?? Buffer.allocUnsafe(BLOCK);
    b.set(src);
    this.#lru.set(ino * SPAN + blk, b);
  }

  /**
   * Copy blocks `first` .. `first + n - 1` of inode `ino` into `into` (block i at i * BLOCK)
   * while they are cached. True, counted as `n` hits, when all were; else false, counted as
   * `n` misses (`into` then holds a prefix of them: the caller reads the run from the device).
   */
  readRun(ino: number, first: number, n: number, into: Buffer): boolean {
    let hits = 0;
    for (let i = 0; i < n; i++) {
      const c = this.get(ino, first + i);
      if (!c) break;
      into.set(c, i * BLOCK);
      hits++;
    }
    if (hits === n) {
      this.#counts.hits += n;
      return true;
    }
    this.#counts.misses += n;
    return false;
  }

  /** Drop every cached block of inode `ino` from block `fromBlock` on. */
  invalidate(ino: number, fromBlock: number): void {
    const base = ino * SPAN;
    for (const k of [...this.#lru.keys()]) if (k >= base + fromBlock && k < base + SPAN) this.#lru.delete(k);
  }
}

/**
 * Mappings of other Processes' shared regions, for adaptors that do I/O straight into their
 * clients' Memory (the blockdev's io_uring path, the FS's staging copies): a region's fd comes
 * from `Process.memoryMap(cid)` (MEMORY_MAP, docs/protocol.md), is mapped once and cached by
 * the Controller's region key, so later buffers in the same region cost no round trip.
 *
 * Bounded: at most `maxRegions` regions and `maxBytes` bytes of address space mapped (an
 * lru-cache, least recently used dropped first; a dropped mapping is unmapped when the last view
 * of it is collected). Rights: a region mapped from a read-only cap is mapped read-only; a
 * later buffer that needs to be written maps it again from its own cap. A cached mapping stays
 * valid memory whatever happens to the caps (the memfd lives while mapped): who may use which
 * bytes is still decided per operation by the caps the caller was given (their descriptor's
 * perms, offset and size, and the Controller's revocation checks on the continuation).
 * Keys are unique for one Controller's life: use one RegionMaps per Process (connection).
 */
import { closeSync } from 'node:fs';
import { LRUCache } from 'lru-cache';
import { mapFd, type RegionMapping } from '../native/shm/index.js';
import type { Process } from './process.js';
import { Perm } from './protocol.js';
import type { MemoryDescriptor } from './schema.js';

/** Default bound on mapped address space (bytes): mappings cost address space, the pages are the clients'. */
export const DEFAULT_MAPPED_BYTES = 64 * 2 ** 30;
/** Default bound on regions mapped at once. */
export const DEFAULT_MAPPED_REGIONS = 256;

interface Entry {
  map: RegionMapping;
  writable: boolean;
}

/** Options of RegionMaps. */
export interface RegionMapsOptions {
  /** Most bytes of regions mapped at once (default DEFAULT_MAPPED_BYTES). */
  maxBytes?: number;
  /** Most regions mapped at once (default DEFAULT_MAPPED_REGIONS). */
  maxRegions?: number;
  /** A region was mapped and cached (the whole mapping): e.g. registered with a native I/O loop. */
  onMap?: (key: number, map: RegionMapping) => void;
  /** A cached mapping left the cache (evicted, replaced, forgotten). */
  onDrop?: (key: number, map: RegionMapping) => void;
}

export class RegionMaps {
  readonly #proc: Process;
  readonly #cache: LRUCache<number, Entry>;
  /** MEMORY_MAPs in flight by region key, read-only / writable. */
  readonly #pending: [Map<number, Promise<Entry | null>>, Map<number, Promise<Entry | null>>] = [new Map(), new Map()];
  readonly #onMap: RegionMapsOptions['onMap'];
  /** Regions mapped (MEMORY_MAP calls that succeeded) since start. */
  mapped = 0;
  /** MEMORY_MAP calls that failed (the caller then copies through memory_copy). */
  refused = 0;

  constructor(proc: Process, opts: RegionMapsOptions = {}) {
    this.#proc = proc;
    this.#cache = new LRUCache<number, Entry>({
      max: opts.maxRegions ?? DEFAULT_MAPPED_REGIONS,
      maxSize: opts.maxBytes ?? DEFAULT_MAPPED_BYTES,
      sizeCalculation: (e) => Math.max(1, e.map.size),
      ...(opts.onDrop ? { dispose: (e: Entry, key: number) => opts.onDrop!(key, e.map) } : {}),
    });
    this.#onMap = opts.onMap;
  }

  /** Regions mapped now. */
  get size(): number {
    return this.#cache.size;
  }

  /**
   * The bytes `[0, length)` of the buffer `desc` describes, from a region already mapped, or
   * null (not mapped yet, mapped read-only and `write` asked, or not a local shared region).
   * `write`: the caller will store into the bytes.
   */
  cached(desc: MemoryDescriptor, length: number, write: boolean): Uint8Array | null {
    if (!desc.local || desc.backing !== 'shared' || !desc.regionKey || length > desc.size) return null;
    const e = this.#cache.get(desc.regionKey);
    if (!e || (write && !e.writable)) return null;
    return viewOf(e, desc.regionOffset, length);
  }

  /**
   * Like `cached`, mapping the region first when needed (one MEMORY_MAP of `cid`, the cap
   * `desc` describes; concurrent calls for one region share it). Null when the region cannot
   * be mapped here (`desc.mappable` false, the cap lacks the rights, or MEMORY_MAP refused):
   * the caller then copies with memory_copy, which gives the error if there is one. Never rejects.
   */
  async view(cid: number, desc: MemoryDescriptor, length: number, write: boolean): Promise<Uint8Array | null> {
    const hit = this.cached(desc, length, write);
    if (hit) return hit;
    if (!desc.mappable || !desc.local || desc.backing !== 'shared' || length > desc.size || (write && !(desc.perms & Perm.WRITE))) return null;
    const pending = this.#pending[write ? 1 : 0];
    let p = pending.get(desc.regionKey);
    if (!p) {
      p = this.#map(cid);
      pending.set(desc.regionKey, p);
      void p.finally(() => pending.delete(desc.regionKey));
    }
    const e = await p;
    if (!e || (write && !e.writable)) return null;
    return viewOf(e, desc.regionOffset, length);
  }

  /** Forget the mapping of region `key` (e.g. after a fault on it). */
  forget(key: number): void {
    this.#cache.delete(key);
  }

  async #map(cid: number): Promise<Entry | null> {
    let m;
    try {
      m = await this.#proc.memoryMap(cid);
    } catch {
      this.refused++;
      return null;
    }
    try {
      const writable = (m.perms & Perm.WRITE) !== 0;
      const e: Entry = { map: mapFd(m.fd, m.regionSize, writable), writable };
      const old = this.#cache.get(m.regionKey);
      // A read-only mapping never replaces a writable one of the same region.
      if (!old || e.writable || !old.writable) {
        this.#cache.set(m.regionKey, e);
        this.#onMap?.(m.regionKey, e.map);
      }
      this.mapped++;
      return e;
    } catch {
      this.refused++;
      return null;
    } finally {
      closeSync(m.fd);
    }
  }
}

function viewOf(e: Entry, offset: number, length: number): Uint8Array | null {
  try {
    return e.map.view(offset, length);
  } catch {
    return null; // outside the mapping, or a view too long for it: memory_copy instead
  }
}

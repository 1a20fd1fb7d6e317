/**
 * Shared Memory regions as sealed memfds (native/include/memfd_region.h) mapped as
 * ArrayBuffers, through the `fractos_shm` addon. The owner of a Memory object creates a
 * region (`createRegionFd`) and passes its fd to its Controller with the region's first
 * MEMORY_CREATE, so both see the same bytes; no name in /dev/shm, nothing another process can
 * open without being given the fd. Also `peerCred`: who is at the other end of a unix socket,
 * from the kernel (SO_PEERCRED); and `flock` (the binding's), the lock of the Controller's
 * state dir and of the blockdev's device claims; and `copyGuarded`, a copy that answers a
 * fault code instead of dying of SIGBUS when a mapped file shrank under it.
 */
import { FractosError } from '../../libfractos/errors.js';
import { loadNative, nativeError } from '../loader.js';

interface ShmBinding {
  memfdCreate(size: number, seals: number): number;
  map(fd: number, size: number, writable: boolean): ArrayBuffer[];
  seals(fd: number): number;
  address(ab: ArrayBuffer): number;
  peerCred(fd: number): PeerCred;
  /** flock(2) on `fd`: exclusive or shared, waiting or not; 0, or -errno (-EWOULDBLOCK: held elsewhere). */
  flock(fd: number, exclusive: boolean, wait: boolean): number;
  copyGuarded(dst: Uint8Array, src: Uint8Array): CopyFault;
}

/** Credentials of a unix-socket peer as the kernel recorded them when it connected. */
export interface PeerCred {
  /** OS process id (0: the kernel knows none, e.g. not a unix socket or another pid namespace). */
  pid: number;
  uid: number;
  gid: number;
}

/** Load the addon (native/loader.ts order). Throws NativeUnavailableError('shm') (ENODEV). */
export function loadShm(): ShmBinding {
  return loadNative<ShmBinding>('shm').binding;
}

/** memfd seals (fcntl F_ADD_SEALS / F_GET_SEALS bits, Linux ABI). */
export const Seal = { SEAL: 1, SHRINK: 2, GROW: 4, WRITE: 8 } as const;
/** Seals of a region made by `createRegionFd`: no shrinking (SIGBUS), no growing, no more seals. */
export const REGION_SEALS = Seal.SHRINK | Seal.GROW | Seal.SEAL;
/** Largest region (bytes): sizes travel as u64 on the wire but as safe integers in JS. */
export const MAX_REGION_BYTES = Number.MAX_SAFE_INTEGER;

function wrap(err: unknown): never {
  throw nativeError(err);
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw new FractosError('EINVAL', `bad region size ${size}`);
}

function checkFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw new FractosError('EBADF', `bad fd ${fd}`);
}

/**
 * A new region: a memfd of `size` bytes (zero-filled, sparse: pages cost memory once
 * touched), mode 0600, close-on-exec, sealed with `seals` (default REGION_SEALS; tests pass
 * others to make fds the Controller must refuse). The caller owns the fd (close it with
 * fs.closeSync). Errors: EINVAL (size), ENOMEM, EMFILE, ENODEV (addon not built).
 */
export function createRegionFd(size: number, seals: number = REGION_SEALS): number {
  checkSize(size);
  try {
    return loadShm().memfdCreate(size, seals);
  } catch (err) {
    return wrap(err);
  }
}

/** Longest Uint8Array (V8's typed-array limit) and largest N-API external ArrayBuffer, bytes. */
export const MAX_VIEW_BYTES = 2 ** 32;
const WINDOW_STEP = 2 ** 31;

/**
 * A region mapped once, seen through ArrayBuffer windows (N-API makes no external ArrayBuffer
 * over 4 GiB): one over everything up to 4 GiB, else one every 2 GiB, each 4 GiB long or to
 * the end. Unmapped when every window is garbage-collected.
 */
export class RegionMapping {
  readonly size: number;
  readonly writable: boolean;
  readonly #windows: ArrayBuffer[];

  /** @internal use mapFd */
  constructor(windows: ArrayBuffer[], size: number, writable: boolean) {
    this.#windows = windows;
    this.size = size;
    this.writable = writable;
  }

  /** The whole mapping as one ArrayBuffer (regions up to 4 GiB). Errors: ERANGE. */
  get buffer(): ArrayBuffer {
    if (this.size > MAX_VIEW_BYTES) throw new FractosError('ERANGE', `a mapping of ${this.size} bytes is over 4 GiB: use view()`);
    return this.#windows[0]!;
  }

  /**
   * Bytes [offset, offset + length) of the mapping, without a copy: any range up to 4 GiB in
   * a mapping up to 4 GiB; in a larger one any range up to 2 GiB (or up to 4 GiB starting at
   * a multiple of 2 GiB). Errors: ERANGE.
   */
  view(offset: number, length: number): Uint8Array {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size)
      throw new FractosError('ERANGE', `view ${offset}+${length} of a mapping of ${this.size} bytes`);
    // The last window runs to the end: an offset past its start is in it.
    const k = Math.min(Math.floor(offset / WINDOW_STEP), this.#windows.length - 1);
    const w = this.#windows[k]!;
    const at = offset - k * WINDOW_STEP;
    if (at + length > w.byteLength) throw new FractosError('ERANGE', `view ${offset}+${length} crosses a 4 GiB window of a mapping of ${this.size} bytes`);
    return new Uint8Array(w, at, length);
  }
}

/**
 * Map bytes [0, size) of `fd` shared (MAP_NORESERVE: a sparse region costs the pages
 * touched), read-write or read-only (a read-only fd can only be mapped read-only: EACCES
 * otherwise). The mapping outlives `fd` (close it when done).
 * Errors: EINVAL (size), EBADF, EACCES, ENOMEM, ENODEV.
 */
export function mapFd(fd: number, size: number, writable: boolean): RegionMapping {
  checkFd(fd);
  checkSize(size);
  try {
    return new RegionMapping(loadShm().map(fd, size, writable), size, writable);
  } catch (err) {
    return wrap(err);
  }
}

/** The seals of `fd` (Seal bits), or a negative errno (-EINVAL: not a memfd). */
export function fdSeals(fd: number): number {
  checkFd(fd);
  return loadShm().seals(fd);
}

/** Where a guarded copy faulted: 0 none (all copied), or the operand whose access raised SIGBUS. */
export const CopyFault = { NONE: 0, SRC: 1, DST: 2, OTHER: 3 } as const;
export type CopyFault = (typeof CopyFault)[keyof typeof CopyFault];

let bound: ShmBinding | null = null;

/**
 * Copy all of `src` to the start of `dst` (memmove: the two may overlap) under a SIGBUS
 * guard, in one native call. A mapping of a region that its owner truncated (ftruncate of
 * its file; a sealed region cannot shrink) raises SIGBUS on access past the new end; inside this copy the fault
 * ends the copy and is answered, anywhere else it still kills the process. The Controller
 * and the services copy from and to other Processes' regions only through here.
 * @param dst bytes written, at least `src.length` long
 * @param src bytes read
 * @returns CopyFault.NONE when every byte was copied; SRC / DST when the fault lay in that
 *   operand (the bytes of `dst` are then partly copied, undefined); OTHER for neither.
 * @throws TypeError for operands that are not Uint8Arrays, RangeError when `src` is longer
 *   than `dst`; FractosError ENODEV when the addon is not built.
 */
export function copyGuarded(dst: Uint8Array, src: Uint8Array): CopyFault {
  bound ??= loadShm();
  return bound.copyGuarded(dst, src);
}

/** Address of a mapping (mod 2^53), for O_DIRECT alignment checks. */
export function mappingAddress(ab: ArrayBuffer): number {
  return loadShm().address(ab);
}

/**
 * The kernel's credentials of the peer of connected socket `fd` (getsockopt SO_PEERCRED):
 * pid, uid and gid of the process that connected, as seen from this pid namespace. For a
 * unix socket only; Linux answers pid 0 for other sockets.
 * Errors: EINVAL (fd not an integer >= 0), EIO (getsockopt failed: EBADF, ENOTSOCK),
 * ENODEV (addon not built).
 */
export function peerCred(fd: number): PeerCred {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw new FractosError('EINVAL', `bad socket fd ${fd}`);
  try {
    return loadShm().peerCred(fd);
  } catch (err) {
    return wrap(err);
  }
}

/**
 * Shared-memory regions (POSIX shm, `/dev/shm`) mapped as ArrayBuffers, through the
 * `fractos_shm` addon. The owner of a Memory object creates a region; its Controller
 * opens the same name, so both see the same bytes. Also `peerCred`: who is at the other
 * end of a unix socket, from the kernel (SO_PEERCRED); and `flock` (the binding's), the lock
 * of the Controller's state dir and of the blockdev's device claims; and `copyGuarded`, a
 * copy that answers a fault code instead of dying of SIGBUS when a mapped region was
 * truncated by its owner.
 */
import { FractosError } from '../../libfractos/errors.js';
import { loadNative, nativeError } from '../loader.js';

interface ShmBinding {
  create(name: string, size: number): ArrayBuffer;
  open(name: string): ArrayBuffer;
  unlink(name: string): void;
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

const NAME_RE = /^\/[A-Za-z0-9._-]{1,200}$/;

function check(name: string): void {
  if (!NAME_RE.test(name)) throw new FractosError('EINVAL', `bad shm region name '${name}'`);
}

function wrap(err: unknown): never {
  throw nativeError(err);
}

/** Create and map a new region of `size` bytes (zero-filled). Errors: EEXIST, EINVAL, ENOSPC, EPERM. */
export function shmCreate(name: string, size: number): ArrayBuffer {
  check(name);
  if (!Number.isSafeInteger(size) || size < 0) throw new FractosError('EINVAL', `bad region size ${size}`);
  try {
    return loadShm().create(name, size);
  } catch (err) {
    return wrap(err);
  }
}

/** Map an existing region whole. Errors: ENOENT, EINVAL, EPERM. */
export function shmOpen(name: string): ArrayBuffer {
  check(name);
  try {
    return loadShm().open(name);
  } catch (err) {
    return wrap(err);
  }
}

/** Remove a region's name; existing mappings stay valid until garbage-collected. */
export function shmUnlink(name: string): void {
  check(name);
  try {
    loadShm().unlink(name);
  } catch (err) {
    wrap(err);
  }
}

/** Where a guarded copy faulted: 0 none (all copied), or the operand whose access raised SIGBUS. */
export const CopyFault = { NONE: 0, SRC: 1, DST: 2, OTHER: 3 } as const;
export type CopyFault = (typeof CopyFault)[keyof typeof CopyFault];

let bound: ShmBinding | null = null;

/**
 * Copy all of `src` to the start of `dst` (memmove: the two may overlap) under a SIGBUS
 * guard, in one native call. A mapping of a region that its owner truncated (ftruncate of
 * its /dev/shm object) raises SIGBUS on access past the new end; inside this copy the fault
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
export function shmAddress(ab: ArrayBuffer): number {
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

/**
 * Exclusive claims on a device (block device or regular file), so that nothing writes under
 * a running blockdev: the blockdev holds one for its whole life, the fio runner while it
 * prepares a device or runs real fio on it; `fractos blockdev --format`, a second blockdev
 * and the fio runner refuse a claimed device with EBUSY naming the holder's pid.
 *
 * A claim is an open file description of PATH with an exclusive `flock` (a block device is
 * opened with O_EXCL as well, which also refuses a mounted device). Both go away with the
 * holder's last fd, its death included: no stale lock to clean up. The holder's pid is read
 * from /proc/locks (the FLOCK entry on PATH's inode).
 */
import { closeSync, constants, existsSync, openSync, readFileSync, statSync } from 'node:fs';
import { FractosError } from '../libfractos/errors.js';
import { loadShm } from '../native/shm/index.js';

const EWOULDBLOCK = 11;

/** A held claim. `release()` closes it (idempotent). */
export interface DeviceClaim {
  readonly path: string;
  release(): void;
}

/** Who holds the claim on a device: the pid from /proc/locks (0 when not found) and a role read from its command line. */
export interface DeviceHolder {
  pid: number;
  role: string;
}

/** The /proc/locks id of an inode: `MAJ:MIN:INO`, major and minor in hex as the kernel prints them. */
function lockId(dev: number, ino: number): string {
  const major = (dev >>> 8) & 0xfff;
  const minor = (dev & 0xff) | ((dev >>> 12) & 0xfff00);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${ino}`;
}

/** What a pid is, from its command line: `blockdev`, `fio runner`, or its command name. */
function roleOf(pid: number): string {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    if (argv.includes('blockdev')) return 'blockdev';
    if (argv.includes('fio')) return 'fio runner';
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() || 'process';
  } catch {
    return 'process';
  }
}

/** The holder of an exclusive flock on `path`'s inode, from /proc/locks, or null. */
function flockHolder(path: string): DeviceHolder | null {
  let locks: string;
  try {
    locks = readFileSync('/proc/locks', 'utf8');
  } catch {
    return null;
  }
  const st = statSync(path);
  const id = lockId(st.dev, st.ino);
  for (const line of locks.split('\n')) {
    // "1: FLOCK  ADVISORY  WRITE 1234 00:05:678 0 EOF" (waiters are "1: -> FLOCK ...").
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'FLOCK' || f[3] !== 'WRITE' || f[5] !== id) continue;
    const pid = Number(f[4]);
    return { pid, role: roleOf(pid) };
  }
  return null;
}

function busy(path: string, h: DeviceHolder | null): FractosError {
  if (h && h.pid > 0) return new FractosError('EBUSY', `${path} is in use by ${h.role} pid ${h.pid}`);
  return new FractosError('EBUSY', `${path} is in use (opened exclusively by another process, or mounted)`);
}

/**
 * Who holds `path` now: the holder of the claim (pid and role), `{ pid: 0, role: '' }` when a
 * block device is opened exclusively without a claim (mounted, say), or null when it is free
 * or does not exist. Errors: none (an unreadable /proc/locks reads as no claim).
 */
export function deviceHolder(path: string): DeviceHolder | null {
  if (!existsSync(path)) return null;
  const h = flockHolder(path);
  if (h) return h;
  if (statSync(path).isBlockDevice()) {
    try {
      closeSync(openSync(path, constants.O_RDONLY | constants.O_EXCL));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EBUSY') return flockHolder(path) ?? { pid: 0, role: '' };
    }
  }
  return null;
}

/** Throws EBUSY (`PATH is in use by blockdev pid N`) when `path` is claimed; nothing when it is free or absent. */
export function assertDeviceFree(path: string): void {
  const h = deviceHolder(path);
  if (h) throw busy(path, h.pid ? h : null);
}

/**
 * Claim `path` (an existing block device or regular file) for the caller until `release()`
 * or the process ends. Errors: EBUSY `PATH is in use by blockdev pid N` (claimed elsewhere, or
 * a mounted / exclusively opened block device), ENOENT, EPERM, EINVAL (neither a block device
 * nor a regular file), ENODEV (the shm addon, which provides flock, is unavailable).
 */
export function claimDevice(path: string): DeviceClaim {
  const { flock } = loadShm();
  let fd: number;
  try {
    const st = statSync(path);
    if (!st.isBlockDevice() && !st.isFile()) throw new FractosError('EINVAL', `${path} is neither a block device nor a regular file`);
    fd = openSync(path, constants.O_RDONLY | (st.isBlockDevice() ? constants.O_EXCL : 0));
  } catch (e) {
    if (e instanceof FractosError) throw e;
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EBUSY') throw busy(path, flockHolder(path));
    if (err.code === 'ENOENT') throw new FractosError('ENOENT', `${path}: no such device or file`);
    if (err.code === 'EACCES' || err.code === 'EPERM') throw new FractosError('EPERM', `${path}: ${err.message}`);
    throw new FractosError('EIO', `${path}: ${err.message}`);
  }
  const r = flock(fd, true, false);
  if (r !== 0) {
    closeSync(fd);
    if (r === -EWOULDBLOCK) throw busy(path, flockHolder(path));
    throw new FractosError('EIO', `flock(${path}) failed: errno ${-r}`);
  }
  let open = true;
  return {
    path,
    release(): void {
      if (!open) return;
      open = false;
      closeSync(fd);
    },
  };
}

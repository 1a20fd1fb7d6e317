/**
 * The mount point before a mount: it must be a directory; a live FUSE mount there refuses the
 * new one (EBUSY); a stale one (its server died: every access answers ENOTCONN) is lazily
 * unmounted first, so a restart after `kill -9` of the mount process works.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { FractosError } from '../libfractos/errors.js';

/** How long a stat of an existing FUSE mount may take before it counts as live but hung (ms). */
export const PROBE_MS = 2000;

/** A mount of /proc/self/mountinfo: its point (unescaped), fs type and source. */
export interface MountEntry {
  point: string;
  fstype: string;
  source: string;
}

/** The mounts of this mount namespace (/proc/self/mountinfo, proc(5)). */
export function mounts(): MountEntry[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 0 || f.length < dash + 3) continue;
    out.push({ point: unescape(f[4]!), fstype: f[dash + 1]!, source: unescape(f[dash + 2]!) });
  }
  return out;
}

/** The FUSE mount at `point` (resolved), or null. */
export function fuseMountAt(point: string): MountEntry | null {
  const p = resolve(point);
  const all = mounts().filter((m) => m.point === p && (m.fstype === 'fuse' || m.fstype.startsWith('fuse.')));
  return all.length ? all[all.length - 1]! : null;
}

/** Lazy unmount through fusermount3 (works for root and for the mount's owner). Errors: EIO with its stderr. */
export function fusermountUnmount(point: string): void {
  const r = spawnSync('fusermount3', ['-u', '-z', point], { encoding: 'utf8' });
  if (r.error) throw new FractosError('ENODEV', `fusermount3: ${r.error.message}`);
  if (r.status !== 0) throw new FractosError('EIO', `fusermount3 -u -z ${point}: ${r.stderr.trim()}`);
}

/**
 * Check `point` before mounting (see the module comment).
 * Errors: ENOENT (missing), ENOTDIR, EBUSY (a live FUSE mount, or one that does not answer
 * within PROBE_MS), EIO (a stale mount that could not be removed).
 * @returns whether a stale mount was removed
 */
export async function prepareMountpoint(point: string): Promise<boolean> {
  const m = fuseMountAt(point);
  if (m) {
    let timer: NodeJS.Timeout | undefined;
    const probe = await Promise.race([
      stat(point).then(() => 'live', (e: NodeJS.ErrnoException) => (e.code === 'ENOTCONN' ? 'stale' : 'live')),
      new Promise<string>((r) => (timer = setTimeout(() => r('hung'), PROBE_MS))),
    ]);
    clearTimeout(timer);
    if (probe !== 'stale') {
      throw new FractosError('EBUSY', `${point} is already a mount point (${m.fstype} ${m.source}${probe === 'hung' ? ', not answering' : ''}); unmount it first: fusermount3 -u ${point}`);
    }
    fusermountUnmount(point);
  }
  let st;
  try {
    st = await stat(point);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new FractosError(e.code === 'ENOENT' ? 'ENOENT' : e.code === 'ENOTDIR' ? 'ENOTDIR' : 'EIO', `mount point ${point}: ${e.message}`);
  }
  if (!st.isDirectory()) throw new FractosError('ENOTDIR', `mount point ${point} is not a directory`);
  return m !== null;
}

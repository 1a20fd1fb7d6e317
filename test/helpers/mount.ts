/**
 * Fixtures of the `fractos mount` tests: why FUSE tests must skip here (no /dev/fuse, no
 * fusermount3, no fuse addon), a single-host stack of spawned services (Controller, blockdev,
 * FS), `fractos mount` as a child, and shell scripts run without blocking the test process.
 */
import { execFile, spawnSync } from 'node:child_process';
import { accessSync, closeSync, constants, ftruncateSync, mkdirSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from '../../libfractos/index.js';
import { loadFuse } from '../../native/fuse/index.js';
import { spawnFractos, tempDir, type Spawned } from './spawn.js';
import { fuseMountAt, fusermountUnmount } from '../../fs-mount/mountpoint.js';

/** Empty when FUSE can be used here; else why FUSE tests skip. */
export function fuseReason(): string {
  try {
    accessSync('/dev/fuse', constants.R_OK | constants.W_OK);
  } catch {
    return '/dev/fuse is missing or not usable';
  }
  if (spawnSync('fusermount3', ['-V']).error) return 'fusermount3 is missing (Debian: fuse3)';
  try {
    loadFuse();
  } catch (e) {
    return `the fuse addon does not load: ${(e as Error).message}`;
  }
  return '';
}

export interface Stack {
  dir: string;
  addr: string;
  device: string;
  controller: Spawned;
  blockdev: Spawned;
  fs: Spawned;
  /** (Re)start the FS service (after a kill -9). */
  startFs(): Promise<Spawned>;
  stop(): Promise<void>;
}

/** Controller, blockdev (formatted `device`) and FS as child processes. */
export async function startStack(device: string): Promise<Stack> {
  const dir = tempDir('fractos-mount-');
  const addr = `unix:${join(dir, 'c.sock')}`;
  const controller = await spawnFractos(['controller', '--id', '1', '--state-dir', join(dir, 'state'), '--listen', addr], /^controller \d+ epoch/);
  const blockdev = await spawnFractos(['blockdev', '--device', device, '--controller', addr, '--format', '--queue-depth', '32'], /^ready blockdev/, { timeoutMs: 60_000 });
  const startFs = (): Promise<Spawned> => spawnFractos(['fs', '--controller', addr], /^ready fs/, { timeoutMs: 60_000 });
  const s: Stack = {
    dir, addr, device, controller, blockdev, fs: await startFs(),
    startFs: async () => (s.fs = await startFs()),
    stop: async () => {
      for (const p of [s.fs, s.blockdev, s.controller]) await p.stop().catch(() => {});
    },
  };
  return s;
}

/** Whether the FS at `addr` serves the inode contract (its `fs.lookup` is published). */
export async function servesInodes(addr: string): Promise<boolean> {
  const p = await connect(addr, { name: 'probe' });
  try {
    await p.kvWait('fs.lookup', 3000);
    return true;
  } catch {
    return false;
  } finally {
    await p.close();
  }
}

/** A fresh mount point folder in the stack's dir. */
export function mountDir(s: Stack, name: string): string {
  const d = join(s.dir, name);
  mkdirSync(d, { recursive: true });
  return d;
}

/** `fractos mount POINT` as a child, once it printed its ready line; `env`: variables added to this process's. */
export function mount(s: Stack, point: string, extra: string[] = [], env?: NodeJS.ProcessEnv): Promise<Spawned> {
  return spawnFractos(['mount', point, '--controller', s.addr, ...extra], /^ready mount/, { timeoutMs: 60_000, env });
}

/** Remove whatever FUSE mount is left at `point` (a test that failed half-way). */
export function cleanupMount(point: string): void {
  if (fuseMountAt(point)) {
    try {
      fusermountUnmount(point);
    } catch {
      // nothing to do
    }
  }
}

/** Run a bash script (set -e) in `cwd`, without blocking this process (the mount may be served by it). */
export function sh(script: string, cwd: string, timeoutMs = 120_000): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile('bash', ['-ec', script], { cwd, timeout: timeoutMs, maxBuffer: 64 << 20 }, (e, out, err) => {
      const code = e ? (typeof (e as { code?: unknown }).code === 'number' ? (e as { code: number }).code : 1) : 0;
      resolve({ code, out, err });
    });
  });
}

/**
 * The stack of a mount test file, started before any test is declared (ava wants every
 * declaration in the first tick after the first one): a sparse device file under /var/tmp
 * (O_DIRECT), the services, the inode-contract probe. `reason` is why the file skips ('' to run).
 * `point(name)` makes a mount point in the stack's folder (mountDir) that `cleanup` unmounts
 * and removes before it stops the stack.
 */
export async function mountFixture(label: string, deviceBytes = 256 << 20): Promise<{ reason: string; stack: Stack | null; point: (name: string) => string; cleanup: () => Promise<void> }> {
  let reason = fuseReason();
  let stack: Stack | null = null;
  let dir = '';
  if (!reason) {
    try {
      dir = mkdtempSync(join('/var/tmp', 'fractos-mount-'));
      const dev = join(dir, 'dev');
      const fd = openSync(dev, 'w');
      ftruncateSync(fd, deviceBytes);
      closeSync(fd);
      stack = await startStack(dev);
      if (!(await servesInodes(stack.addr))) reason = 'the FS service does not serve the inode contract (fs.lookup) here';
    } catch (e) {
      reason = `the stack does not start here (io_uring / O_DIRECT?): ${(e as Error).message.split('\n')[0]}`;
    }
    if (reason) {
      await stack?.stop();
      stack = null;
    }
  }
  if (reason) console.log(`${label}: skipping: ${reason}`);
  const points: string[] = [];
  return {
    reason,
    stack,
    point: (name) => {
      const p = mountDir(stack!, name);
      points.push(p);
      return p;
    },
    cleanup: async () => {
      for (const p of points) cleanupMount(p);
      await stack?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

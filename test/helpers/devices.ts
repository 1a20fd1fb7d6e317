/**
 * Block-device fixtures for storage tests: probe io_uring + O_DIRECT once, make sparse
 * device files, and register tests as skipped (with the reason) where the probe fails.
 */
import test from 'ava';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UringBackend } from '../../blockdev-adaptor/uring-backend.js';
import { loadUring } from '../../native/uring/index.js';

export interface DeviceDir {
  /** Empty when the probe passed; else why the tests skip. */
  reason: string;
  /** A fresh folder under /var/tmp (a disk file system: tmpfs refuses O_DIRECT). */
  dir: string;
  /** `test`, or `test.skip` when the probe failed. */
  vtest: typeof test | typeof test.skip;
  /** A sparse file of `size` bytes in `dir`. */
  devFile(size: number, name?: string): string;
}

/** Probe io_uring and O_DIRECT under /var/tmp/PREFIX-*; removes the folder after the file's tests. */
export async function deviceDir(prefix: string, label: string): Promise<DeviceDir> {
  let reason = '';
  let dir = '';
  try {
    loadUring();
    dir = mkdtempSync(join('/var/tmp', `${prefix}-`));
    writeFileSync(join(dir, 'probe'), Buffer.alloc(8192));
    await (await UringBackend.open(join(dir, 'probe'), { queueDepth: 1 })).close();
  } catch (e) {
    reason = `no io_uring / O_DIRECT here: ${(e as Error).message}`;
  }
  if (reason) console.log(`${label}: skipping: ${reason}`);
  test.after.always(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  let seq = 0;
  return {
    reason,
    dir,
    vtest: reason ? test.skip : test,
    devFile(size: number, name = `dev${seq++}.img`): string {
      const path = join(dir, name);
      const fd = openSync(path, 'w');
      ftruncateSync(fd, size);
      closeSync(fd);
      return path;
    },
  };
}

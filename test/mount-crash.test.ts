/**
 * `fractos mount` when a party dies: kill -9 of the mount process during a write storm (the
 * mount point answers ENOTCONN at once, never hangs; a remount at the same point works and
 * holds every fsync'd file);
 * kill -9 of the FS service during a write storm (the mount ends by itself and unmounts; after
 * the FS restarts, a new mount holds every byte whose fsync was answered).
 * Skips with the reason where FUSE, io_uring/O_DIRECT or the FS's inode contract is missing.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { until } from './helpers/wait.js';
import { mount, mountFixture, sh } from './helpers/mount.js';
import { fuseMountAt } from '../fs-mount/mountpoint.js';

const { reason, stack, point, cleanup } = await mountFixture('mount-crash.test');
const mtest = reason ? test.serial.skip : test.serial;
test.after.always(cleanup);

/** The errno code of stat(point), bounded in time ('TIMEOUT' when it hangs). */
async function statCode(point: string, ms = 5000): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([
    stat(point).then(() => 'OK', (e: NodeJS.ErrnoException) => e.code ?? 'ERR'),
    new Promise<string>((res) => (timer = setTimeout(() => res('TIMEOUT'), ms))),
  ]);
  clearTimeout(timer);
  return r;
}

/** A bash loop writing f1, f2, ... (64 KiB of "i\n" lines each, fsync'd by dd conv=fsync), logging i after dd answered. */
function storm(log: string): string {
  return `for i in $(seq 1 100000); do yes $i | head -c 65536 | dd of=f$i bs=64k conv=fsync status=none 2>/dev/null || exit 0; echo $i >> ${log}; done`;
}

/** Wait until the storm has logged `n` fsync'd files (at most 60 s), instead of a fixed delay that a loaded machine can make empty. */
async function stormLogged(log: string, n = 20): Promise<void> {
  await until(() => {
    try {
      return readFileSync(log, 'utf8').split('\n').length > n;
    } catch {
      return false;
    }
  }, 60_000);
}

/** Check every logged file; prints how many. */
function checkLogged(log: string): string {
  return `n=0; for i in $(cat ${log}); do test "$(sha256sum < f$i)" = "$(yes $i | head -c 65536 | sha256sum)" || { echo "f$i differs"; exit 1; }; n=$((n+1)); done; echo $n; rm -f f*`;
}

mtest('kill -9 of the mount process during a write storm: ENOTCONN at once, no hang; a remount at the same point works and holds every fsync\'d file', async (t) => {
  const mp = point('k1');
  const m = await mount(stack!, mp);
  const log = `${stack!.dir}/k1.log`;
  const writes = sh(storm(log), mp, 120_000);
  await stormLogged(log);
  await m.kill9();
  await writes;
  t.is(await statCode(mp), 'ENOTCONN');
  const again = await mount(stack!, mp);
  try {
    t.is(await statCode(mp), 'OK');
    const r = await sh(checkLogged(log), mp);
    t.is(r.code, 0, r.out + r.err);
    t.true(Number(r.out.trim()) > 0, 'some files were fsync\'d before the kill');
    t.log(`${r.out.trim()} fsync'd files checked`);
  } finally {
    await again.stop();
  }
  t.is(fuseMountAt(mp), null);
});

mtest('kill -9 of the FS during a write storm: the mount ends by itself; after a restart every fsync\'d file is there', async (t) => {
  const mp = point('k2');
  const m = await mount(stack!, mp);
  const log = `${stack!.dir}/fsynced.log`;
  const writes = sh(storm(log), mp, 120_000);
  await stormLogged(log);
  await stack!.fs.kill9();
  await writes;
  const { code } = await m.ended; // exited, its output read to the end
  t.is(code, 1);
  t.regex(m.output(), /ended: fs-gone/);
  t.not(await statCode(mp), 'TIMEOUT');
  await stack!.startFs();
  const again = await mount(stack!, mp);
  try {
    const r = await sh(checkLogged(log), mp);
    t.is(r.code, 0, r.out + r.err);
    t.true(Number(r.out.trim()) > 0, 'some files were fsync\'d before the kill');
    t.log(`${r.out.trim()} fsync'd files checked`);
  } finally {
    await again.stop();
  }
});

mtest('--writeback: buffered writes, partial overwrites, appends and a write-only open go through the writeback cache; closed and fsync\'d files are in the FS at once (a second mount reads them), after unmount + remount and after kill -9 of the FS', async (t) => {
  const mp = point('wb');
  const other = point('wb-other');
  const src = `${stack!.dir}/wb-src`;
  const check = (dir: string): string => `cd ${dir}/wb && cmp a ${src}.a && cmp b ${src}.b && cmp c ${src}.c && test "$(stat -c %s a)" = "$(stat -c %s ${src}.a)"`;
  const m = await mount(stack!, mp, ['--writeback']);
  try {
    const w = await sh(`
      mkdir wb && cd wb
      head -c 3000000 /dev/urandom > ${src}.a
      cp ${src}.a a
      printf XYZ | dd of=a bs=1 seek=1000 conv=notrunc status=none
      printf XYZ | dd of=${src}.a bs=1 seek=1000 conv=notrunc status=none
      echo tail >> a && echo tail >> ${src}.a
      exec 3>b; printf hello >&3; printf ' world' >&3; exec 3>&-
      printf 'hello world' > ${src}.b
      head -c 1000000 /dev/urandom > ${src}.c
      dd if=${src}.c of=c bs=64k conv=fsync status=none
    `, mp);
    t.is(w.code, 0, w.err);
    // close(2) writes the dirty pages back (FUSE flush with the writeback cache); fsync does
    // too: another mount, with no cache of its own, reads what the FS holds.
    const o = await mount(stack!, other, ['--attr-timeout', '0']);
    try {
      const r = await sh(check(other), other);
      t.is(r.code, 0, `second mount: ${r.out}${r.err}`);
    } finally {
      await o.stop();
    }
  } finally {
    await m.stop();
  }
  const again = await mount(stack!, mp);
  try {
    const r = await sh(check(mp), mp);
    t.is(r.code, 0, `after remount: ${r.out}${r.err}`);
  } finally {
    await again.stop();
  }
  // c was fsync'd and a, b closed (their writes answered): all three survive kill -9 of the FS.
  await stack!.fs.kill9();
  await stack!.startFs();
  const third = await mount(stack!, mp);
  try {
    const r = await sh(check(mp), mp);
    t.is(r.code, 0, `after kill -9 of the FS: ${r.out}${r.err}`);
    await sh('rm -r wb', mp);
  } finally {
    await third.stop();
  }
});

/**
 * `fractos mount` when a party dies: kill -9 of the mount process (the mount point answers
 * ENOTCONN at once, never hangs; a remount at the same point works and the data is there);
 * kill -9 of the FS service during a write storm (the mount ends by itself and unmounts; after
 * the FS restarts, a new mount holds every byte whose fsync was answered).
 * Skips with the reason where FUSE, io_uring/O_DIRECT or the FS's inode contract is missing.
 */
import test from 'ava';
import { stat } from 'node:fs/promises';
import { cleanupMount, mount, mountDir, mountFixture, sh } from './helpers/mount.js';
import { fuseMountAt } from '../fs-mount/mountpoint.js';

const { reason, stack, cleanup } = await mountFixture('mount-crash.test');
const mtest = reason ? test.serial.skip : test.serial;
const points: string[] = [];
test.after.always(async () => {
  for (const p of points) cleanupMount(p);
  await cleanup();
});

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

mtest('kill -9 of the mount process: ENOTCONN at once, no hang; a remount at the same point works and keeps the data', async (t) => {
  const mp = mountDir(stack!, 'k1');
  points.push(mp);
  const m = await mount(stack!, mp);
  t.is((await sh('echo kept > kept && sync kept && cat kept', mp)).out.trim(), 'kept');
  await m.kill9();
  t.is(await statCode(mp), 'ENOTCONN');
  const again = await mount(stack!, mp);
  try {
    t.is(await statCode(mp), 'OK');
    t.is((await sh('cat kept', mp)).out.trim(), 'kept');
  } finally {
    await again.stop();
  }
  t.is(fuseMountAt(mp), null);
});

mtest('kill -9 of the FS during a write storm: the mount ends by itself; after a restart every fsync\'d file is there', async (t) => {
  const mp = mountDir(stack!, 'k2');
  points.push(mp);
  const m = await mount(stack!, mp);
  const log = `${stack!.dir}/fsynced.log`;
  // Each file: 64 KiB of "i\n" lines, fsync'd (conv=fsync); its index is logged only after dd answered.
  const storm = sh(`for i in $(seq 1 100000); do yes $i | head -c 65536 | dd of=f$i bs=64k conv=fsync status=none 2>/dev/null || exit 0; echo $i >> ${log}; done`, mp, 120_000);
  await new Promise((r) => setTimeout(r, 3000));
  await stack!.fs.kill9();
  await storm;
  const code = await new Promise<number | null>((res) => (m.child.exitCode !== null ? res(m.child.exitCode) : m.child.once('exit', (c) => res(c))));
  t.is(code, 1);
  t.regex(m.output(), /ended: fs-gone/);
  t.not(await statCode(mp), 'TIMEOUT');
  await stack!.startFs();
  const again = await mount(stack!, mp);
  try {
    const r = await sh(`n=0; for i in $(cat ${log}); do test "$(sha256sum < f$i)" = "$(yes $i | head -c 65536 | sha256sum)" || { echo "f$i differs"; exit 1; }; n=$((n+1)); done; echo $n`, mp);
    t.is(r.code, 0, r.out + r.err);
    t.true(Number(r.out.trim()) > 0, 'some files were fsync\'d before the kill');
    t.log(`${r.out.trim()} fsync'd files checked`);
  } finally {
    await again.stop();
  }
});

/**
 * `fractos mount --dax` with the native DAX read path (docs/mount.md "Native DAX reads"):
 * data read natively is the file's (random offsets and sizes, across extents, holes, past the
 * end), the same as with the path off (FRACTOS_MOUNT_NATIVE=0), a truncate under an open
 * handle never lets old blocks reappear, an unlinked open file stays readable, and a
 * Controller killed while reads are in flight ends them with an error, never a hang.
 * Skips with the reason where FUSE or the stack cannot run (test/helpers/mount.ts).
 */
import test from 'ava';
import { join } from 'node:path';
import { mount, mountFixture, sh } from './helpers/mount.js';
import { REPO_ROOT } from './helpers/spawn.js';

const { reason, stack, point, cleanup } = await mountFixture('mount-native.test');
const mtest = reason ? test.serial.skip : test.serial;
test.after.always(cleanup);

const CHECK = join(REPO_ROOT, 'test', 'helpers', 'read-check.mjs');

function counts(out: string): { dax: number; native: number; nativeWrites: number; fallbacks: number; errors: number } {
  const m = /daxReads=(\d+) .*nativeReads=(\d+) nativeWrites=(\d+) nativeFallbacks=(\d+) nativeErrors=(\d+)/.exec(out);
  if (!m) throw new Error(`no counts in: ${out}`);
  return { dax: Number(m[1]), native: Number(m[2]), nativeWrites: Number(m[3]), fallbacks: Number(m[4]), errors: Number(m[5]) };
}

mtest('native DAX reads: random offsets and sizes across extents and holes, the same bytes with the path off', async (t) => {
  const md = point('n1');
  const d = await mount(stack!, md, ['--dax']);
  try {
    const script = `
      head -c 6291456 /dev/urandom > src
      cp src ${md}/f
      truncate -s 9437184 src ${md}/f
      head -c 1048576 /dev/urandom > tail
      cat tail >> src && cat tail >> ${md}/f
      test "$(stat -c %s ${md}/f)" = 10485760
      for i in $(seq 0 37); do
        k=$(( (i * 61) % 2560 ))
        dd if=${md}/f of=a bs=4k skip=$k count=1 iflag=direct status=none
        dd if=src of=b bs=4k skip=$k count=1 status=none
        cmp a b
      done
      node ${CHECK} ${md}/f src 400 7
    `;
    const r = await sh(script, stack!.dir);
    t.is(r.code, 0, r.out + r.err);
  } finally {
    await d.stop();
  }
  const c = counts(d.output());
  t.log(c, d.output().split("\n").filter((l) => l.includes("nativeReads")).join(""));
  t.true(c.native > 0, d.output());
  t.is(c.errors, 0, d.output());
  // The same checks with the native path off: every DAX read through JS.
  const off = await mount(stack!, md, ['--dax'], { FRACTOS_MOUNT_NATIVE: '0' });
  try {
    const r = await sh(`node ${CHECK} ${md}/f src 200 11 && rm ${md}/f src tail a b`, stack!.dir);
    t.is(r.code, 0, r.out + r.err);
  } finally {
    await off.stop();
  }
  const o = counts(off.output());
  t.is(o.native, 0);
  t.true(o.dax > 0, off.output());
});

mtest('native DAX writes: whole blocks inside the file (direct and buffered), read back through the path off and a mediated mount; mtime recorded at close', async (t) => {
  const md = point('n4');
  const mm = point('n4m');
  const d = await mount(stack!, md, ['--dax']);
  const m = await mount(stack!, mm);
  try {
    const r = await sh(`
      head -c 4194304 /dev/urandom > src
      cp src ${md}/w
      t0=$(stat -c %Y.%y ${md}/w)
      sleep 1.1
      for i in $(seq 0 29); do
        k=$(( (i * 37) % 1024 ))
        head -c 4096 /dev/urandom > blk
        dd if=blk of=${md}/w bs=4k seek=$k count=1 conv=notrunc oflag=direct status=none
        dd if=blk of=src bs=4k seek=$k count=1 conv=notrunc status=none
      done
      # only native writes so far (blocks inside the file): their mtime reached the FS at each close
      test "$(stat -c %Y.%y ${mm}/w)" != "$t0"
      # a buffered write of 64 KiB at a block boundary, and a partial block (the FS's)
      head -c 65536 /dev/urandom > blk
      dd if=blk of=${md}/w bs=64k seek=7 count=1 conv=notrunc status=none
      dd if=blk of=src bs=64k seek=7 count=1 conv=notrunc status=none
      printf 'xyz' | dd of=${md}/w bs=1 seek=5000 conv=notrunc status=none
      printf 'xyz' | dd of=src bs=1 seek=5000 conv=notrunc status=none
      cmp src ${md}/w
      cmp src ${mm}/w
    `, stack!.dir);
    t.is(r.code, 0, r.out + r.err);
  } finally {
    await d.stop();
  }
  const c = counts(d.output());
  t.log(c);
  t.true(c.nativeWrites > 0, d.output());
  t.is(c.errors, 0, d.output());
  const off = await mount(stack!, md, ['--dax'], { FRACTOS_MOUNT_NATIVE: '0' });
  try {
    const r = await sh(`cmp src ${md}/w && node ${CHECK} ${md}/w src 100 13 && rm ${md}/w src blk`, stack!.dir);
    t.is(r.code, 0, r.out + r.err);
  } finally {
    await off.stop();
    await m.stop();
  }
});

mtest('native DAX reads (the FUSE thread sending its invokes itself): truncate under an open handle (old blocks never reappear), unlink of an open file, reads in flight', async (t) => {
  const md = point('n2');
  const d = await mount(stack!, md, ['--dax'], { FRACTOS_MOUNT_NATIVE: 'direct' });
  try {
    const r = await sh(`
      head -c 4194304 /dev/urandom > src
      cp src ${md}/f
      # readers in flight through the native path while the file is cut and grown again
      ( for i in $(seq 1 40); do dd if=${md}/f of=/dev/null bs=4k count=64 iflag=direct status=none 2>/dev/null || true; done ) &
      rd=$!
      exec 3<${md}/f
      dd bs=4k count=1 iflag=direct status=none <&3 > /dev/null
      truncate -s 1048576 ${md}/f
      truncate -s 4194304 ${md}/f
      wait $rd
      # through the handle opened before the truncate: the first MiB, then zeros (a hole)
      head -c 1048576 src > want && head -c 3145728 /dev/zero >> want
      cmp want /proc/self/fd/3
      node ${CHECK} /proc/self/fd/3 want 200 3
      # an unlinked open file stays readable through its fd
      cp src ${md}/g
      exec 4<${md}/g
      rm ${md}/g
      node ${CHECK} /proc/self/fd/4 src 100 5
      exec 3<&- 4<&-
      rm ${md}/f src want
    `, stack!.dir);
    t.is(r.code, 0, r.out + r.err);
  } finally {
    await d.stop();
  }
  const c = counts(d.output());
  t.log(c, d.output().split("\n").filter((l) => l.includes("nativeReads")).join(""));
  t.true(c.native > 0, d.output());
});

mtest('native DAX reads: a Controller killed while reads are in flight ends them with an error, not a hang', async (t) => {
  const md = point('n3');
  const d = await mount(stack!, md, ['--dax']);
  const r0 = await sh(`head -c 4194304 /dev/urandom > ${md}/f`, stack!.dir);
  t.is(r0.code, 0, r0.err);
  // A reader that loops until a read fails; the Controller dies under it.
  const reader = sh(`
    while dd if=${md}/f of=/dev/null bs=4k count=256 iflag=direct status=none; do :; done
    echo reader-ended
  `, stack!.dir, 60_000);
  await new Promise((r) => setTimeout(r, 500));
  await stack!.controller.kill9();
  const r = await reader;
  t.regex(r.out, /reader-ended/, `the reader hung: ${r.err}`);
  // The mount ends by itself (controller-gone) and leaves the point.
  const deadline = Date.now() + 30_000;
  while (d.child.exitCode === null && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
  t.not(d.child.exitCode, null, d.output());
  t.regex(d.output(), /controller-gone/);
});

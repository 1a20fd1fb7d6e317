/**
 * `fractos mount`: ordinary tools through a FUSE mount of the FS service (mkdir -p, cp -a +
 * diff -r, mv across dirs, rm -r, ln, ln -s, chmod, touch -d, stat, truncate, dd oflag=direct,
 * sha256sum, git, tar), POSIX errors from the shell, concurrent writers, --dax, a second mount
 * on the same point (EBUSY), and the ways a mount ends (SIGTERM, fusermount3 -u). Each test
 * removes its files: every file extent is a blockdev volume, and a device holds 126.
 * Skips with the reason where /dev/fuse, fusermount3 or the fuse addon is missing, where
 * io_uring/O_DIRECT is, or where the FS does not serve the inode contract.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from '../libfractos/index.js';
import { FsClient } from '../fs-service/index.js';
import { enroll, loadOrl } from '../facever-app/store.js';
import { datasetForTests } from '../facever-app/dataset.js';
import { mount, mountFixture, sh } from './helpers/mount.js';
import { fuseMountAt } from '../fs-mount/mountpoint.js';
import { REPO_ROOT } from './helpers/spawn.js';

const { reason, stack, point, cleanup } = await mountFixture('mount-tools.test');
const mtest = reason ? test.serial.skip : test.serial;
test.after.always(cleanup);

mtest('ordinary tools: mkdir -p, cp -a + diff -r, mv, rm -r, ln, ln -s, chmod, touch -d, stat, truncate, dd oflag=direct, sha256sum', async (t) => {
  const mp = point('m1');
  const m = await mount(stack!, mp);
  try {
    const r = await sh(`
      mkdir -p a/b/c d
      cp -a ${REPO_ROOT}/fs-service a/b/c/src
      diff -r ${REPO_ROOT}/fs-service a/b/c/src
      mv a/b/c/src/client.ts d/moved.ts
      cmp ${REPO_ROOT}/fs-service/client.ts d/moved.ts
      test ! -e a/b/c/src/client.ts
      echo data > f && ln f hard && ln -s f soft
      test "$(stat -c %h f)" = 2 && test "$(cat soft)" = data && test "$(readlink soft)" = f
      chmod 640 f && test "$(stat -c %a hard)" = 640
      touch -d '2001-02-03 04:05:06' f && test "$(stat -c %Y f)" = "$(date -d '2001-02-03 04:05:06' +%s)"
      truncate -s 100000 f && test "$(stat -c %s f)" = 100000 && test "$(tail -c 10 f | od -An -tx1 | tr -d ' \\n')" = 00000000000000000000
      truncate -s 3 f && test "$(cat f)" = dat
      head -c 3145728 /dev/urandom > /tmp/mount-tools-src.$$
      dd if=/tmp/mount-tools-src.$$ of=big bs=1M oflag=direct status=none
      test "$(sha256sum < big)" = "$(sha256sum < /tmp/mount-tools-src.$$)"
      rm /tmp/mount-tools-src.$$
      rm -r a && test ! -e a && test -d d
      stat -f -c %l .
      rm -rf ./*
    `, mp);
    t.is(r.code, 0, r.err);
    t.is(r.out.trim(), '255');
  } finally {
    await m.stop();
  }
  t.is(fuseMountAt(mp), null, 'SIGTERM unmounts');
});

mtest('git init/add/commit/fsck and tar extract + re-create byte-identical inside the mount', async (t) => {
  const mp = point('m2');
  const m = await mount(stack!, mp);
  try {
    const r = await sh(`
      git init -q repo && cd repo
      cp -a ${REPO_ROOT}/fs-service ${REPO_ROOT}/fs-mount .
      git add . && git -c user.email=t@t -c user.name=t commit -qm first
      echo more >> fs-mount/mount.ts && git -c user.email=t@t -c user.name=t commit -qam second
      git fsck --full --strict 2>&1
      test "$(git log --oneline | wc -l)" = 2
      cd ..
      tar -C ${REPO_ROOT} --sort=name -cf "$TMPDIR_A" fs-service native/fuse/fuse.cc
      mkdir x && tar -C x -xpf "$TMPDIR_A"
      tar -C x --sort=name -cf "$TMPDIR_B" fs-service native/fuse/fuse.cc
      cmp "$TMPDIR_A" "$TMPDIR_B"
      rm -rf repo x
    `.replaceAll('$TMPDIR_A', join(stack!.dir, 'a.tar')).replaceAll('$TMPDIR_B', join(stack!.dir, 'b.tar')), mp);
    t.is(r.code, 0, r.out + r.err);
  } finally {
    await m.stop();
  }
});

mtest('face verification: enrolled faces (facever-app enroll through libfractos) are files under the mount, byte-identical to the ORL photos', async (t) => {
  const dataset = datasetForTests();
  const p = await connect(stack!.addr, { name: 'enroll' });
  const mp = point('faces');
  try {
    const fs = await FsClient.connect(p);
    const meta = await enroll(p, fs, dataset, { prefix: '/mount-faces' });
    const m = await mount(stack!, mp);
    try {
      const ls = await sh('ls mount-faces | sort -V | tr "\\n" " "', mp);
      t.is(ls.code, 0, ls.err);
      t.is(ls.out.trim(), ['meta.json', ...meta.ids.map((id) => `s${id}.raw`)].join(' '));
      for (const id of [meta.ids[0]!, meta.ids.at(-1)!]) {
        t.deepEqual(readFileSync(join(mp, 'mount-faces', `s${id}.raw`)), Buffer.from(loadOrl(dataset, id, 1)), `s${id}.raw`);
      }
      t.deepEqual(JSON.parse(readFileSync(join(mp, 'mount-faces', 'meta.json'), 'utf8')), meta);
      t.is((await sh('rm -r mount-faces', mp)).code, 0);
    } finally {
      await m.stop();
    }
  } finally {
    await p.close();
  }
});

mtest('POSIX errors from the shell: EEXIST, ENOTEMPTY, ENAMETOOLONG, ENOTDIR, EISDIR, ENOENT, EACCES', async (t) => {
  const mp = point('m3');
  const m = await mount(stack!, mp);
  try {
    await sh('mkdir -p e/sub && echo x > e/file', mp);
    const cases: [string, RegExp][] = [
      ['mkdir e', /File exists/],
      ['rmdir e', /Directory not empty/],
      [`touch e/${'n'.repeat(256)}`, /File name too long/],
      ['touch e/file/x', /Not a directory/],
      ['rmdir e/file', /Not a directory/],
      ['cat e/sub', /Is a directory/],
      ['cat e/nothing', /No such file or directory/],
      // Another user in root's 0755 directory (the kernel checks first: default_permissions).
      ['setpriv --reuid=65534 --regid=65534 --clear-groups touch e/x', /Permission denied/],
    ];
    for (const [cmd, want] of cases) {
      const r = await sh(cmd, mp);
      t.not(r.code, 0, cmd);
      t.regex(r.err, want, cmd);
    }
    t.is((await sh(`touch e/${'n'.repeat(255)} && ls e | wc -l && rm -r e`, mp)).out.trim(), '3');
  } finally {
    await m.stop();
  }
});

mtest('--exclusive: names and directory attributes known to the mount answer lookups and getattrs (no Request), and stay right through create, mkdir, mv, ln, rm, rmdir and failed operations', async (t) => {
  const mp = point('m-excl');
  const m = await mount(stack!, mp, ['--exclusive']);
  try {
    const r = await sh(`
      set -e
      mkdir d && test "$(stat -c %h d)" = 2
      t0=$(stat -c %y d); sleep 0.01
      touch d/a && test "$(stat -c %y d)" != "$t0" && test -f d/a
      test ! -e d/b
      mv d/a d/b && test ! -e d/a && test -f d/b
      ln d/b d/c && test "$(stat -c %h d/b)" = 2
      mkdir d/sub && test "$(stat -c %h d)" = 3
      mv d/c d/sub/c && test -f d/sub/c && test ! -e d/c && test "$(stat -c %h d/sub/c)" = 2
      if mkdir d/b 2>/dev/null; then exit 11; fi
      if rmdir d/sub 2>/dev/null; then exit 12; fi
      if touch d/${'n'.repeat(256)} 2>/dev/null; then exit 13; fi
      rm d/b && test ! -e d/b && test "$(stat -c %h d/sub/c)" = 1
      echo x > d/b && test "$(cat d/b)" = x
      rm d/sub/c && rmdir d/sub && test "$(stat -c %h d)" = 2 && test ! -e d/sub
      test "$(ls d)" = b
      rm -r d && test ! -e d
    `, mp);
    t.is(r.code, 0, r.err);
  } finally {
    await m.stop();
  }
  const c = /dirAttrHits=(\d+)/.exec(m.output());
  const n = /negativeHits=(\d+)/.exec(m.output());
  t.true(Number(c?.[1]) > 0, `directory getattrs answered by the mount: ${m.output()}`);
  t.true(Number(n?.[1]) > 0, `negative lookups answered by the mount: ${m.output()}`);
});

mtest('create without an FS open until the first I/O: touch needs no open; a file created read-only by another user is written through its creating fd; O_EXCL and ftruncate through the fd', async (t) => {
  const mp = point('m5');
  const m = await mount(stack!, mp);
  try {
    const r = await sh(`
      mkdir -m 1777 c && cd c
      for i in $(seq 1 50); do touch t$i; done
      test "$(ls | wc -l)" = 50
      setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'umask 0222; echo hi > ro; cat ro; test "$(stat -c %a ro)" = 444; (echo again > ro) 2>&1 || true'
      set -o noclobber; (echo x > t1) 2>&1 || true; set +o noclobber
      python3 -c 'import os; fd = os.open("tr", os.O_CREAT | os.O_WRONLY, 0o600); os.ftruncate(fd, 5000); os.write(fd, b"ab"); os.close(fd)'
      test "$(stat -c %s tr)" = 5000 && test "$(head -c 2 tr)" = ab
      python3 -c 'import os; fd = os.open("tmp", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600); os.unlink("tmp"); os.write(fd, b"still here"); os.lseek(fd, 0, 0); print(os.read(fd, 100).decode()); os.close(fd)'
      test ! -e tmp
      cd .. && rm -r c
    `, mp);
    t.is(r.code, 0, r.err);
    t.regex(r.out, /^hi$/m, 'the creator wrote through its fd into a file whose mode says r--');
    t.regex(r.out, /ro: Permission denied/, 'a later open for writing is refused');
    t.regex(r.out, /t1: cannot overwrite existing file/, 'O_EXCL on an existing name');
    t.regex(r.out, /^still here$/m, 'a created file unlinked before its first write keeps working through its fd');
  } finally {
    await m.stop();
  }
  // The 50 touches opened nothing in the FS: the opens are ro's, tr's and tmp's (deferred:
  // first I/O, or the unlink) and the reads by cat and head (every create opened one before).
  const opens = Number(/opens=(\d+)/.exec(m.output())?.[1] ?? 'NaN');
  t.is(opens, 5, `${opens} FS opens for 53 creates and 2 reads`);
});

mtest('concurrent writers to one file (disjoint ranges) and to one directory', async (t) => {
  const mp = point('m4');
  const m = await mount(stack!, mp);
  try {
    const r = await sh(`
      mkdir dir
      for i in $(seq 0 7); do
        ( yes "writer $i" | head -c 262144 | dd of=one bs=64k seek=$((i * 4)) conv=notrunc status=none ) &
        ( for j in $(seq 1 8); do echo $i.$j > dir/f$i.$j; done ) &
      done
      wait
      test "$(stat -c %s one)" = $((8 * 262144))
      for i in $(seq 0 7); do
        test "$(dd if=one bs=64k skip=$((i * 4)) count=4 status=none | sha256sum)" = "$(yes "writer $i" | head -c 262144 | sha256sum)"
      done
      test "$(ls dir | wc -l)" = 64
      test "$(cat dir/f3.7)" = 3.7
      rm -rf one dir
    `, mp);
    t.is(r.code, 0, r.out + r.err);
  } finally {
    await m.stop();
  }
});

mtest('readdirplus: ls -l of 200 files takes every entry\'s attributes from the listing, not a lookup each; sizes, modes, links and times as written', async (t) => {
  const mp = point('rdp');
  const m = await mount(stack!, mp);
  try {
    const w = await sh('mkdir rdp && cd rdp && for i in $(seq 1 200); do head -c $i /dev/zero > f$i; done && chmod 600 f7 && ln f9 hard9 && ln -s f1 link && touch -d "2001-02-03 04:05:06" f5', mp);
    t.is(w.code, 0, w.err);
  } finally {
    await m.stop();
  }
  // A new mount: nothing of rdp is in the kernel's caches. Long timeouts: on a loaded machine
  // ls may take more than the default 1 s between reading the directory and its lstats.
  const m2 = await mount(stack!, mp, ['--attr-timeout', '60']);
  let out: string;
  try {
    const r = await sh('ls -ln --time-style=+%s rdp', mp);
    t.is(r.code, 0, r.err);
    out = r.out;
    await sh('rm -r rdp', mp);
  } finally {
    await m2.stop();
  }
  const rows = new Map(out.trim().split('\n').slice(1).map((l) => {
    const f = l.trim().split(/\s+/);
    return [f[6]!, { mode: f[0]!, links: Number(f[1]), size: Number(f[4]), mtime: Number(f[5]) }];
  }));
  t.is(rows.size, 202);
  for (let i = 1; i <= 200; i++) t.is(rows.get(`f${i}`)?.size, i, `f${i}`);
  t.is(rows.get('f7')?.mode, '-rw-------');
  t.is(rows.get('f9')?.links, 2);
  t.is(rows.get('hard9')?.links, 2);
  t.is(rows.get('link')?.mode.slice(0, 1), 'l');
  t.is(rows.get('f5')?.mtime, Math.floor(new Date('2001-02-03T04:05:06').getTime() / 1000));
  const lookups = Number(/lookups=(\d+)/.exec(m2.output())?.[1] ?? 'NaN');
  const plus = Number(/readdirPlus=(\d+)/.exec(m2.output())?.[1] ?? 'NaN');
  t.true(plus >= 1, `readdirplus answered (${plus})`);
  t.true(lookups < 20, `${lookups} lookups for ls -l of 202 entries (readdirplus answered the rest)`);
  t.log(`ls -l of 202 entries: ${plus} readdirplus, ${lookups} lookups`);
});

mtest('--dax: file data through the DAX Requests; the same bytes as a mediated mount sees', async (t) => {
  const mp = point('m5');
  const md = point('m5dax');
  const m = await mount(stack!, mp);
  const d = await mount(stack!, md, ['--dax']);
  try {
    const r = await sh(`
      head -c 4194304 /dev/urandom > dax-src
      cp dax-src ${md}/daxfile
      sync ${md}/daxfile
      cmp dax-src ${mp}/daxfile
      dd if=/dev/urandom of=patch bs=64k count=3 status=none
      dd if=patch of=${md}/daxfile bs=64k seek=10 conv=notrunc oflag=direct status=none
      dd if=patch of=dax-src bs=64k seek=10 conv=notrunc status=none
      cmp dax-src ${md}/daxfile
      cat ${mp}/daxfile > /dev/null
      cmp dax-src ${mp}/daxfile
      rm ${mp}/daxfile
    `, stack!.dir);
    t.is(r.code, 0, r.out + r.err);
  } finally {
    await d.stop();
    await m.stop();
  }
  // The DAX mount moved data through the blockdev's Requests; the mediated one through the FS.
  const dc = /daxReads=(\d+) daxWrites=(\d+)/.exec(d.output());
  t.truthy(dc, d.output());
  t.true(Number(dc![1]) > 0 && Number(dc![2]) > 0, d.output());
  t.regex(m.output(), /daxReads=0 daxWrites=0/);
});

mtest('a second mount on the same point is refused (EBUSY); fusermount3 -u ends the mount process', async (t) => {
  const mp = point('m6');
  const m = await mount(stack!, mp);
  const second = await mount(stack!, mp).then(() => null, (e: Error) => e);
  t.truthy(second);
  t.regex(String(second?.message), /EBUSY.*already a mount point/);
  const r = await sh(`fusermount3 -u ${mp}`, stack!.dir);
  t.is(r.code, 0, r.err);
  const { code } = await m.ended; // exited, its output read to the end
  t.is(code, 1);
  t.regex(m.output(), /ended: unmounted/);
  t.is(fuseMountAt(mp), null);
});

mtest('fractos fio --target mount: real fio through a mount of its own stack; the metadata profile reports files per second', async (t) => {
  t.timeout(400_000);
  const f = await sh(`node ${REPO_ROOT}/bin/fractos.js fio ${REPO_ROOT}/fio-profiles/randread-4k-qd1.fio --target mount --runtime 1 --size 16m`, stack!.dir, 180_000);
  t.is(f.code, 0, f.out + f.err);
  const iops = /read: IOPS=([\d.]+)(k?)/.exec(f.out);
  t.truthy(iops, f.out);
  t.true(Number(iops![1]) > 0);
  t.regex(f.out, /^cpu per I\/O: [\d.]+ us \(controller [\d.]+, blockdev [\d.]+, fs [\d.]+, mount [\d.]+, fio [\d.]+; [1-9]\d* I\/Os\)/m, f.out);
  const m = await sh(`node ${REPO_ROOT}/bin/fractos.js fio metadata --target mount --files 50`, stack!.dir, 180_000);
  t.is(m.code, 0, m.out + m.err);
  for (const phase of ['create', 'stat', 'rename', 'unlink']) t.regex(m.out, new RegExp(`^${phase}\\s+[1-9]\\d*`, 'm'), m.out);
});

/**
 * The FS's hierarchical namespace through its inode contract (fs-service/index.ts), as a
 * FUSE client uses it: directories, entries and readdir cookies, hard links, symlinks,
 * rename (over a file, across directories, NOREPLACE, EXCHANGE), unlink of an open file,
 * attributes and times, permissions by the caller's uid/gid, sparse files, statfs, fsync,
 * every POSIX error by name; DAX on a file of many extents; crash consistency of rename and
 * link (kill -9 of the FS during a storm of them).
 */
import { createHash, randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { connect } from '../libfractos/index.js';
import { adminClaim, adminRelease, IoPort, volumeCreate } from '../blockdev-adaptor/client.js';
import { FsService } from '../fs-service/service.js';
import {
  DirType, FsClient, NS_OPS, OpenFlags, OpenMode, RenameFlags, ROOT_INO, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, SetAttr, type Attr, type Dirent, type OpenFile,
} from '../fs-service/index.js';
import { deviceDir } from './helpers/devices.js';
import { until } from './helpers/wait.js';
import { fsClient, fsEnv, fsTeardown, spawnFs, type FsEnv } from './helpers/fs-env.js';
import { expectCode as code } from './helpers/errors.js';

const devices = await deviceDir('fractos-fsns', 'fs-namespace.test');
const { vtest } = devices;

const env = (opts: { fs?: boolean; maxExtentGrowth?: number } = {}): Promise<FsEnv> => fsEnv(devices, { capacity: 64 << 20, ...opts });
const client = fsClient;
const teardown = fsTeardown;

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const U1 = { uid: 1000, gid: 1000 };
const U2 = { uid: 2000, gid: 2000 };

vtest('directories: mkdir, mknod, lookup, getattr, nlink, readdir; the errors of each, by name', async (t) => {
  const e = await env();
  try {
    const { p, fs } = await client(e);
    const root = await fs.getattr(ROOT_INO);
    t.is(root.mode & S_IFMT, S_IFDIR);
    t.is(root.nlink, 2);
    const a = await fs.mkdir(ROOT_INO, 'a', 0o755);
    t.is(a.mode, S_IFDIR | 0o755);
    t.is(a.nlink, 2);
    t.is((await fs.getattr(ROOT_INO)).nlink, 3, 'a subdirectory links its parent');
    const f = await fs.mknod(a.ino, 'f', S_IFREG | 0o640);
    t.is(f.mode, S_IFREG | 0o640);
    t.is(f.nlink, 1);
    t.is(f.size, 0);
    const { parent: fParent, ...fAttr } = f;
    t.deepEqual(await fs.lookup(a.ino, 'f'), fAttr);
    t.deepEqual(fParent, await fs.getattr(a.ino), 'mknod answers the parent\'s attributes after the change');
    await fs.mknod(a.ino, 'h', S_IFREG | 0o640);
    t.deepEqual(await fs.unlink(a.ino, 'h'), await fs.getattr(a.ino), 'unlink answers the parent\'s attributes');
    const moved = await fs.rename(a.ino, 'f', ROOT_INO, 'f-moved');
    t.deepEqual(moved, { parent: await fs.getattr(a.ino), newParent: await fs.getattr(ROOT_INO) }, 'rename answers both directories\' attributes');
    await fs.rename(ROOT_INO, 'f-moved', a.ino, 'f');
    t.is((await fs.lookup(a.ino, 'f')).ino, f.ino);
    t.is((await fs.lookup(a.ino, '..')).ino, ROOT_INO);
    t.is((await fs.lookup(a.ino, '.')).ino, a.ino);
    t.is((await fs.mkdir(a.ino, 'g', 0o777, undefined, 0o022)).mode, S_IFDIR | 0o755, 'umask applies');
    // The path-based API sees the same tree (and makes parents like mkdir -p).
    await fs.create('/a/b/c');
    const b = await fs.lookup(a.ino, 'b');
    t.is(b.mode & S_IFMT, S_IFDIR);
    t.is((await fs.resolve('/a/b/c')).mode & S_IFMT, S_IFREG);
    const { cid, region } = await p.memoryCreateShared(64 << 10);
    t.deepEqual(await fs.list('/a/', cid, region.bytes), ['/a/b/c', '/a/f']);
    // readdir: '.', '..', then entries in creation order, each with its type.
    const ents = await fs.readdirAll(a.ino);
    t.deepEqual(ents.map((x) => [x.name, x.type]), [['.', DirType.DIR], ['..', DirType.DIR], ['f', DirType.REG], ['g', DirType.DIR], ['b', DirType.DIR]]);
    t.is(ents[1]!.ino, ROOT_INO);
    // Errors by name.
    await code(t, fs.mkdir(ROOT_INO, 'a', 0o755), 'EEXIST');
    await code(t, fs.mknod(a.ino, 'f', 0o644), 'EEXIST');
    await code(t, fs.mknod(a.ino, '.', 0o644), 'EEXIST');
    await code(t, fs.lookup(a.ino, 'nope'), 'ENOENT');
    await code(t, fs.lookup(f.ino, 'x'), 'ENOTDIR');
    await code(t, fs.mkdir(f.ino, 'x', 0o755), 'ENOTDIR');
    await code(t, fs.getattr(987654), 'ENOENT');
    await code(t, fs.rmdir(ROOT_INO, 'a'), 'ENOTEMPTY');
    await code(t, fs.rmdir(a.ino, 'f'), 'ENOTDIR');
    await code(t, fs.unlink(a.ino, 'g'), 'EISDIR');
    await code(t, fs.rmdir(a.ino, '.'), 'EINVAL');
    await code(t, fs.rmdir(a.ino, '..'), 'ENOTEMPTY');
    await code(t, fs.openIno(a.ino, OpenMode.READ), 'EISDIR');
    await code(t, fs.mknod(a.ino, 'fifo', 0o010644), 'ENOTSUP');
    await code(t, fs.mknod(a.ino, 'x/y', 0o644), 'EINVAL');
    await code(t, fs.mknod(a.ino, 'x\0y', 0o644), 'EINVAL');
    await code(t, fs.mknod(a.ino, '', 0o644), 'EINVAL');
    await code(t, fs.mknod(a.ino, 'n'.repeat(256), 0o644), 'ENAMETOOLONG');
    t.is((await fs.mknod(a.ino, 'n'.repeat(255), 0o644)).nlink, 1, '255 bytes is fine');
    // The FS checks the length itself (a client that skips FsClient's check).
    const raw = p.rpc(fs.roots.lookup, NS_OPS.lookup, { parent: a.ino, name: 'é'.repeat(128), uid: 0, gid: 0 }, {}, { timeoutMs: 10_000 });
    await code(t, raw, 'ENAMETOOLONG');
    await code(t, fs.create('/a/f/x'), 'ENOTDIR');
    await code(t, fs.open('/a/g'), 'EISDIR');
    // rmdir of empty directories; the parent's nlink follows.
    await fs.rmdir(a.ino, 'g');
    t.is((await fs.getattr(a.ino)).nlink, 3);
    await code(t, fs.getattr((await fs.resolve('/a/b')).ino).then(() => fs.rmdir(a.ino, 'b')), 'ENOTEMPTY');
  } finally {
    await teardown(e);
  }
});

vtest('readdir: cookie paging is stable while the directory changes', async (t) => {
  const e = await env();
  try {
    const { fs } = await client(e);
    const d = await fs.mkdir(ROOT_INO, 'd', 0o755);
    for (let i = 0; i < 60; i++) await fs.mknod(d.ino, `f${i}`, 0o644);
    const seen = new Map<string, number>();
    let cookie = 0;
    let round = 0;
    for (;;) {
      const { entries, end } = await fs.readdir(d.ino, cookie, 7);
      for (const x of entries) seen.set(x.name, (seen.get(x.name) ?? 0) + 1);
      if (end) break;
      cookie = entries[entries.length - 1]!.cookie;
      // Between pages: remove an early entry, add new ones, rename one.
      round++;
      await fs.unlink(d.ino, `f${round}`);
      await fs.mknod(d.ino, `new${round}`, 0o644);
      if (round === 3) await fs.rename(d.ino, 'f50', d.ino, 'renamed');
    }
    for (let i = 0; i < 60; i++) {
      if (i >= 1 && i <= round) continue; // removed during the listing: at most once
      if (i === 50) continue;
      t.is(seen.get(`f${i}`), 1, `f${i} listed exactly once`);
    }
    for (const [n, k] of seen) t.true(k === 1, `${n} listed ${k} times`);
    t.true(seen.has('new1') && seen.has(`new${round}`), 'entries added during the listing come after the cookie');
    // A listing that is big enough to need several replies at the FS's own limit.
    const big = await fs.mkdir(ROOT_INO, 'big', 0o755);
    for (let i = 0; i < 300; i++) await fs.mknod(big.ino, `${'x'.repeat(100)}${i}`, 0o644);
    const all = await fs.readdirAll(big.ino);
    t.is(all.length, 302);
    t.is(new Set(all.map((x) => x.name)).size, 302);
    // readdirplus: every entry with the attributes getattr answers; fewer entries per reply.
    await fs.setattr(all[5]!.ino, { valid: SetAttr.MODE | SetAttr.MTIME, mode: 0o600, mtime: [1_000_000_000, 7] });
    let cookie2 = 0;
    let pages = 0;
    const plus: Dirent[] = [];
    for (;;) {
      const { entries, end } = await fs.readdir(big.ino, cookie2, 0, { uid: 0, gid: 0 }, true);
      plus.push(...entries);
      pages++;
      if (end) break;
      cookie2 = entries[entries.length - 1]!.cookie;
    }
    t.deepEqual(plus.map((x) => x.name), all.map((x) => x.name));
    t.true(pages >= 3, `${pages} pages of 16 KiB for 302 entries with attributes`);
    for (const x of [plus[0]!, plus[1]!, plus[5]!, plus[301]!]) t.deepEqual(x.attr, await fs.getattr(x.ino), x.name);
    t.is(plus[5]!.attr!.mode & 0o7777, 0o600);
    t.is(plus[5]!.attr!.mtimeNsec, 7);
  } finally {
    await teardown(e);
  }
});

vtest('hard links, symlinks, unlink of an open file (data lives until the last close)', async (t) => {
  const e = await env();
  try {
    const { p, fs, port } = await client(e);
    const a = await fs.mkdir(ROOT_INO, 'a', 0o755);
    const b = await fs.mkdir(ROOT_INO, 'b', 0o755);
    const o = await fs.createIno(a.ino, 'f', 0o644, OpenMode.RW);
    t.is(o.attr.nlink, 1);
    const { cid, region } = await p.memoryCreateShared(1 << 20);
    const data = randomBytes(300_000);
    region.bytes.set(data);
    t.is(await port.ioAsync(o.write, true, 0, data.length, cid), data.length);
    // link across directories: one inode, nlink 2, ctime moves.
    const l = await fs.link(o.attr.ino, b.ino, 'g');
    t.is(l.ino, o.attr.ino);
    t.is(l.nlink, 2);
    t.is((await fs.lookup(b.ino, 'g')).size, data.length);
    await code(t, fs.link(a.ino, b.ino, 'dirlink'), 'EPERM');
    await code(t, fs.link(o.attr.ino, b.ino, 'g'), 'EEXIST');
    // symlink / readlink.
    const s = await fs.symlink(b.ino, 's', '../a/f');
    t.is(s.mode, S_IFLNK | 0o777);
    t.is(s.size, 6);
    t.is(await fs.readlink(s.ino), '../a/f');
    await code(t, fs.readlink(o.attr.ino), 'EINVAL');
    await code(t, fs.openIno(s.ino, OpenMode.READ), 'EINVAL');
    await code(t, fs.symlink(b.ino, 's2', ''), 'EINVAL');
    // unlink both names while open: reads and writes keep working, getattr says nlink 0.
    await fs.unlink(a.ino, 'f');
    t.is((await fs.getattr(o.attr.ino)).nlink, 1);
    await fs.unlink(b.ino, 'g');
    t.is((await fs.getattr(o.attr.ino)).nlink, 0);
    await code(t, fs.lookup(b.ino, 'g'), 'ENOENT');
    region.bytes.fill(0);
    t.is(await port.ioAsync(o.read, false, 0, data.length, cid), data.length);
    t.is(sha(region.bytes.subarray(0, data.length)), sha(data), 'the data is still there');
    t.is(await port.ioAsync(o.write, true, data.length, 4096, cid), 4096, 'writes too');
    const vols = e.bd.table.list().length;
    await fs.close(o);
    await code(t, fs.getattr(o.attr.ino), 'ENOENT');
    t.true(e.bd.table.list().length < vols, 'the last close freed its volumes');
    t.deepEqual((await fs.readdirAll(b.ino)).map((x) => x.name), ['.', '..', 's']);
  } finally {
    await teardown(e);
  }
});

vtest('rename: over a file, across directories, directories, NOREPLACE, EXCHANGE, and its errors', async (t) => {
  const e = await env();
  try {
    const { fs } = await client(e);
    const a = await fs.mkdir(ROOT_INO, 'a', 0o755);
    const b = await fs.mkdir(ROOT_INO, 'b', 0o755);
    const x = await fs.mknod(a.ino, 'x', 0o644);
    const y = await fs.mknod(b.ino, 'y', 0o644);
    await fs.truncate('/b/y', 1 << 20);
    const vols = e.bd.table.list().length;
    // Over an existing file across directories: y is gone (its volume freed), x takes its name.
    await fs.rename(a.ino, 'x', b.ino, 'y');
    t.is((await fs.lookup(b.ino, 'y')).ino, x.ino);
    await code(t, fs.lookup(a.ino, 'x'), 'ENOENT');
    await code(t, fs.getattr(y.ino), 'ENOENT');
    t.is(e.bd.table.list().length, vols - 1);
    // A directory across directories: nlinks of both parents follow; '..' too.
    const sub = await fs.mkdir(a.ino, 'sub', 0o755);
    await fs.mknod(sub.ino, 'inner', 0o644);
    await fs.rename(a.ino, 'sub', b.ino, 'sub2');
    t.is((await fs.getattr(a.ino)).nlink, 2);
    t.is((await fs.getattr(b.ino)).nlink, 3);
    t.is((await fs.lookup(sub.ino, '..')).ino, b.ino);
    t.is((await fs.resolve('/b/sub2/inner')).nlink, 1);
    // Errors.
    await code(t, fs.rename(ROOT_INO, 'b', sub.ino, 'loop'), 'EINVAL');
    await code(t, fs.rename(b.ino, 'sub2', b.ino, 'sub2/x'), 'EINVAL');
    await code(t, fs.rename(a.ino, 'nope', b.ino, 'z'), 'ENOENT');
    await code(t, fs.rename(b.ino, 'y', ROOT_INO, 'a'), 'EISDIR');
    await code(t, fs.rename(ROOT_INO, 'a', b.ino, 'y'), 'ENOTDIR');
    await code(t, fs.rename(ROOT_INO, 'a', ROOT_INO, 'b'), 'ENOTEMPTY');
    await code(t, fs.rename(b.ino, 'y', b.ino, 'sub2', RenameFlags.NOREPLACE), 'EEXIST');
    await code(t, fs.rename(b.ino, 'y', b.ino, 'z', 3), 'EINVAL');
    await code(t, fs.rename(b.ino, 'y', b.ino, 'z', 8), 'EINVAL');
    await code(t, fs.rename(b.ino, 'y', b.ino, 'n'.repeat(256)), 'ENAMETOOLONG');
    // A directory over an empty directory.
    const empty = await fs.mkdir(ROOT_INO, 'empty', 0o755);
    await fs.rename(ROOT_INO, 'a', ROOT_INO, 'empty');
    t.is((await fs.lookup(ROOT_INO, 'empty')).ino, a.ino);
    await code(t, fs.getattr(empty.ino), 'ENOENT');
    t.is((await fs.getattr(ROOT_INO)).nlink, 4, 'root: . .. and b, empty');
    // EXCHANGE: a file and a directory swap across directories.
    await fs.rename(b.ino, 'y', ROOT_INO, 'empty', RenameFlags.EXCHANGE);
    t.is((await fs.lookup(b.ino, 'y')).ino, a.ino);
    t.is((await fs.lookup(ROOT_INO, 'empty')).ino, x.ino);
    t.is((await fs.lookup(a.ino, '..')).ino, b.ino);
    t.is((await fs.getattr(b.ino)).nlink, 4);
    t.is((await fs.getattr(ROOT_INO)).nlink, 3);
    await code(t, fs.rename(b.ino, 'y', ROOT_INO, 'none', RenameFlags.EXCHANGE), 'ENOENT');
    // Rename between two links of one inode: nothing happens (POSIX).
    await fs.link(x.ino, ROOT_INO, 'x2');
    await fs.rename(ROOT_INO, 'x2', ROOT_INO, 'empty');
    t.is((await fs.getattr(x.ino)).nlink, 2);
  } finally {
    await teardown(e);
  }
});

vtest('attributes: chmod, chown, utimens (explicit, NOW, OMIT), sparse truncate, statfs, fsync', async (t) => {
  const e = await env();
  try {
    const { p, fs, port } = await client(e);
    const f = await fs.mknod(ROOT_INO, 'f', 0o644);
    let a = await fs.setattr(f.ino, { valid: SetAttr.MODE, mode: 0o4711 });
    t.is(a.mode, S_IFREG | 0o4711);
    t.true(a.ctimeSec * 1e9 + a.ctimeNsec >= f.ctimeSec * 1e9 + f.ctimeNsec);
    a = await fs.setattr(f.ino, { valid: SetAttr.UID | SetAttr.GID, uid: 1000, gid: 1000 });
    t.is(a.uid, 1000);
    t.is(a.gid, 1000);
    a = await fs.setattr(f.ino, { valid: SetAttr.ATIME | SetAttr.MTIME, atime: [1_000_000_000, 123_456_789], mtime: [1_500_000_000, 999_999_999] });
    t.deepEqual([a.atimeSec, a.atimeNsec, a.mtimeSec, a.mtimeNsec], [1_000_000_000, 123_456_789, 1_500_000_000, 999_999_999]);
    // UTIME_OMIT for atime (no bit), UTIME_NOW for mtime.
    const before = Date.now() / 1000 - 5;
    a = await fs.setattr(f.ino, { valid: SetAttr.MTIME | SetAttr.MTIME_NOW });
    t.is(a.atimeSec, 1_000_000_000);
    t.true(a.mtimeSec >= before);
    await code(t, fs.setattr(f.ino, { valid: SetAttr.ATIME, atime: [1, 1e9] }), 'EINVAL');
    // Sparse: grow to 1 GiB through setattr allocates nothing; the hole reads as zeros.
    a = await fs.setattr(f.ino, { valid: SetAttr.SIZE, size: 1 << 30 });
    t.is(a.size, 1 << 30);
    t.is(a.blocks, 0);
    const o = await fs.openIno(f.ino, OpenMode.RW);
    const { cid, region } = await p.memoryCreateShared(1 << 20);
    region.bytes.fill(7);
    t.is(await port.ioAsync(o.read, false, (1 << 29) + 5, 8192, cid), 8192);
    t.true(region.bytes.subarray(0, 8192).every((x) => x === 0), 'holes read as zeros');
    region.bytes.fill(9, 0, 4096);
    t.is(await port.ioAsync(o.write, true, 4096, 4096, cid), 4096);
    region.bytes.fill(1);
    t.is(await port.ioAsync(o.read, false, 0, 3 * 4096, cid), 3 * 4096);
    t.true(region.bytes.subarray(0, 4096).every((x) => x === 0) && region.bytes.subarray(4096, 8192).every((x) => x === 9) && region.bytes.subarray(8192, 12288).every((x) => x === 0));
    a = await fs.getattr(f.ino);
    t.true(a.blocks > 0 && a.blocks * 512 < 64 << 20, `${a.blocks} blocks allocated of a 1 GiB file`);
    await fs.fsync(f.ino);
    await fs.fsync(f.ino, true);
    await fs.close(o);
    a = await fs.setattr(f.ino, { valid: SetAttr.SIZE, size: 10 });
    t.is(a.size, 10);
    const st = await fs.statfs();
    t.is(st.bsize, 4096);
    t.is(st.namemax, 255);
    t.is(st.blocks, (64 << 20) / 4096);
    t.true(st.bfree < st.blocks);
    t.true(st.files >= 2);
    t.true(st.ffree > 1000);
    await code(t, fs.setattr(ROOT_INO, { valid: SetAttr.SIZE, size: 0 }), 'EISDIR');
    const s = await fs.symlink(ROOT_INO, 'l', 'f');
    await code(t, fs.setattr(s.ino, { valid: SetAttr.SIZE, size: 0 }), 'EINVAL');
    await code(t, fs.fsync(424242), 'ENOENT');
  } finally {
    await teardown(e);
  }
});

vtest('permissions: the caller uid/gid against mode bits (EACCES), owner-only operations (EPERM), sticky directories, root bypass', async (t) => {
  const e = await env();
  try {
    const { fs } = await client(e);
    const pub = await fs.mkdir(ROOT_INO, 'pub', 0o1777); // sticky, like /tmp
    const priv = await fs.mkdir(ROOT_INO, 'priv', 0o700);
    await code(t, fs.mknod(ROOT_INO, 'x', 0o644, U1), 'EACCES');
    await code(t, fs.lookup(priv.ino, 'x', U1), 'EACCES');
    await code(t, fs.readdir(priv.ino, 0, 0, U1), 'EACCES');
    const mine = await fs.mknod(pub.ino, 'mine', 0o600, U1);
    t.is(mine.uid, 1000);
    t.is(mine.gid, 1000);
    await code(t, fs.openIno(mine.ino, OpenMode.READ, {}, U2), 'EACCES');
    await code(t, fs.openIno(mine.ino, OpenMode.WRITE, {}, U2), 'EACCES');
    await code(t, fs.openIno(mine.ino, OpenMode.READ, { flags: OpenFlags.TRUNC }, U2), 'EACCES');
    await fs.close(await fs.openIno(mine.ino, OpenMode.RW, {}, U1));
    await fs.close(await fs.openIno(mine.ino, OpenMode.RW, {}, { uid: 0, gid: 0 })); // root bypasses
    await code(t, fs.setattr(mine.ino, { valid: SetAttr.MODE, mode: 0o666 }, U2), 'EPERM');
    await code(t, fs.setattr(mine.ino, { valid: SetAttr.UID, uid: 2000 }, U1), 'EPERM');
    await code(t, fs.setattr(mine.ino, { valid: SetAttr.GID, gid: 2000 }, U1), 'EPERM');
    await code(t, fs.setattr(mine.ino, { valid: SetAttr.MTIME, mtime: [5, 0] }, U2), 'EPERM');
    await code(t, fs.setattr(mine.ino, { valid: SetAttr.MTIME | SetAttr.MTIME_NOW }, U2), 'EACCES');
    await code(t, fs.setattr(mine.ino, { valid: SetAttr.SIZE, size: 0 }, U2), 'EACCES');
    t.is((await fs.setattr(mine.ino, { valid: SetAttr.MODE, mode: 0o640 }, U1)).mode, S_IFREG | 0o640);
    // Sticky: U2 may not remove or rename U1's file in /pub; U1 and root may.
    await code(t, fs.unlink(pub.ino, 'mine', U2), 'EPERM');
    await code(t, fs.rename(pub.ino, 'mine', pub.ino, 'stolen', 0, U2), 'EPERM');
    await fs.rename(pub.ino, 'mine', pub.ino, 'mine2', 0, U1);
    // Group bits: gid 1000 in a 0750 directory of uid 0 gid 1000 may search, not write.
    const grp = await fs.mkdir(ROOT_INO, 'grp', 0o750);
    await fs.setattr(grp.ino, { valid: SetAttr.GID, gid: 1000 });
    await fs.mknod(grp.ino, 'r', 0o640);
    t.is((await fs.lookup(grp.ino, 'r', { uid: 3000, gid: 1000 })).ino > 0, true);
    await code(t, fs.mknod(grp.ino, 'w', 0o644, { uid: 3000, gid: 1000 }), 'EACCES');
    await code(t, fs.lookup(grp.ino, 'r', U2), 'EACCES');
    // Setgid directory: new entries take its group.
    await fs.setattr(grp.ino, { valid: SetAttr.MODE, mode: 0o2777 });
    t.is((await fs.mknod(grp.ino, 'g', 0o644, U2)).gid, 1000);
    await fs.unlink(pub.ino, 'mine2');
  } finally {
    await teardown(e);
  }
});

vtest('DAX on a heavily fragmented file (40 extents: 3 dax_map pages); revocation on truncate, close and delete', async (t) => {
  const e = await env({ maxExtentGrowth: 1 << 20 });
  try {
    const { p, fs, port } = await client(e);
    await fs.create('/frag');
    await fs.create('/other');
    // One 1 MiB volume per step, interleaved with another file's so neighbours are not adjacent.
    for (let i = 1; i <= 40; i++) {
      await fs.truncate('/frag', i << 20);
      if (i % 4 === 0) await fs.truncate('/other', (i / 4) << 20);
    }
    t.is((await fs.stat('/frag')).extents, 40);
    const f: OpenFile = await fs.open('/frag', { dax: true });
    t.is(f.extents.length, 40);
    t.true(f.extents.every((x, i) => x.fileOffset === i << 20 && x.length === 1 << 20 && x.read !== 0 && x.write !== 0));
    const { cid, region } = await p.memoryCreateShared(1 << 20);
    // DAX writes to every extent, read back through the FS (mediated).
    const sums: string[] = [];
    for (const x of f.extents) {
      region.bytes.set(randomBytes(4096));
      sums.push(sha(region.bytes.subarray(0, 4096)));
      await port.ioAsync(x.write, true, 8192, 4096, cid);
    }
    const m = await fs.open('/frag', { mode: OpenMode.READ });
    for (let i = 0; i < 40; i++) {
      t.is(await port.ioAsync(m.read, false, (i << 20) + 8192, 4096, cid), 4096);
      t.is(sha(region.bytes.subarray(0, 4096)), sums[i], `extent ${i}`);
    }
    // Truncate revokes the DAX Requests of the freed extents only.
    await fs.truncate('/frag', 20 << 20);
    await code(t, port.ioAsync(f.extents[39]!.read, false, 0, 4096, cid), 'EREVOKED');
    await code(t, port.ioAsync(f.extents[20]!.write, true, 0, 4096, cid), 'EREVOKED');
    await port.ioAsync(f.extents[19]!.read, false, 0, 4096, cid);
    t.is((await fs.daxMap(f)).length, 20, 'dax_map answers the current extents');
    // Close revokes the rest (pages 2.. included).
    const g = await fs.open('/frag', { dax: true, mode: OpenMode.READ });
    t.is(g.extents.length, 20);
    t.true(g.extents.every((x) => x.write === 0));
    await fs.close(f);
    for (const i of [0, 13, 14, 19]) await code(t, port.ioAsync(f.extents[i]!.read, false, 0, 4096, cid), 'EREVOKED');
    await port.ioAsync(g.extents[15]!.read, false, 0, 4096, cid);
    // Delete revokes every open's extents.
    await fs.delete('/frag');
    await code(t, port.ioAsync(g.extents[15]!.read, false, 0, 4096, cid), 'EREVOKED');
    await code(t, port.ioAsync(g.extents[0]!.read, false, 0, 4096, cid), 'EREVOKED');
    // A sparse file opened DAX is allocated first (DAX I/O needs extents).
    const s = await fs.mknod(ROOT_INO, 'sparse', 0o644);
    await fs.setattr(s.ino, { valid: SetAttr.SIZE, size: 3 << 20 });
    const d = await fs.openIno(s.ino, OpenMode.RW, { dax: true });
    t.true(d.extents.reduce((n, x) => n + x.length, 0) >= 3 << 20);
    await fs.close(d, true);
  } finally {
    await teardown(e);
  }
});

vtest('metadata log: 2,200 operations fill the log and cross checkpoints; a restart replays image + log into the same tree', async (t) => {
  const e = await env();
  try {
    let { fs, p, port } = await client(e);
    const many = await fs.mkdir(ROOT_INO, 'many', 0o755);
    const other = await fs.mkdir(ROOT_INO, 'other', 0o700);
    for (let i = 0; i < 2200; i++) {
      await fs.mknod(many.ino, `f${i}`, 0o644);
      if (i % 100 === 0) await fs.rename(many.ino, `f${i}`, other.ino, `moved${i}`);
      if (i % 150 === 0) await fs.link((await fs.lookup(many.ino, `f${i}`).catch(() => fs.lookup(other.ino, `moved${i}`))).ino, other.ino, `link${i}`);
      if (i % 300 === 0) await fs.unlink(many.ino, `f${i - 1}`).catch(() => undefined);
    }
    await fs.rename(many.ino, 'f1', other.ino, 'moved0', RenameFlags.EXCHANGE);
    const o = await fs.createIno(other.ino, 'data', 0o600, OpenMode.RW);
    const { cid, region } = await p.memoryCreateShared(8192);
    region.bytes.set(randomBytes(8192));
    const sum = sha(region.bytes);
    await port.ioAsync(o.write, true, 100, 8192, cid);
    await fs.setattr(o.attr.ino, { valid: SetAttr.MODE | SetAttr.MTIME, mode: 0o640, mtime: [1_234_567_890, 5] });
    await fs.close(o, true);
    const w = e.fs!.metaWrites;
    t.true(w.checkpoints >= 2 && w.records > 1024, `${w.checkpoints} checkpoints, ${w.records} log records`);
    t.is(w.flushes, w.checkpoints, 'namespace operations and writes are not FUA: only checkpoints flush the device');
    const before = await checkTree(t, fs);
    const names = async (ino: number): Promise<string[]> => (await fs.readdirAll(ino)).map((x) => `${x.name}:${x.ino}:${x.cookie}`);
    const listing = [await names(many.ino), await names(other.ino)];
    // Restart the FS (in process): image + log replayed.
    for (const q of e.procs.splice(0)) await q.close();
    await e.fs!.close();
    e.fs = await FsService.start({ controller: e.addr });
    ({ fs, p, port } = await client(e));
    t.is(e.fs.metaWrites.checkpoints + e.fs.metaWrites.records, 0, 'loading writes nothing');
    const after = await checkTree(t, fs);
    t.deepEqual([...after.entries()].sort(), [...before.entries()].sort(), 'every inode and attribute as before');
    t.deepEqual([await names(many.ino), await names(other.ino)], listing, 'entries and cookies as before');
    const d = await fs.lookup(other.ino, 'data');
    t.is(d.mode, S_IFREG | 0o640);
    t.is(d.mtimeSec, 1_234_567_890);
    const r = await fs.openIno(d.ino, OpenMode.READ);
    const back = await p.memoryCreateShared(8192);
    t.is(await port.ioAsync(r.read, false, 100, 8192, back.cid), 8192);
    t.is(sha(back.region.bytes), sum);
    // And it goes on appending after the replayed records.
    await fs.mknod(many.ino, 'after', 0o644);
    t.is(e.fs.metaWrites.records, 1);
    t.is(e.fs.metaWrites.flushes, 0);
    // fsync: a FUA record (the device flush covers every write completed before it).
    await fs.fsync(d.ino);
    t.deepEqual(e.fs.metaWrites, { checkpoints: 0, records: 2, flushes: 1 });
  } finally {
    await teardown(e);
  }
});

vtest('small files share pool volumes (600 files, a handful of volumes); restart keeps them; a DAX open makes a pooled file private without losing concurrent writes', async (t) => {
  const e = await env();
  try {
    let { fs, p, port } = await client(e);
    const d = await fs.mkdir(ROOT_INO, 'small', 0o755);
    const N = 600;
    const SLOT = 24 << 10;
    const CONC = 12;
    const { cid, region } = await p.memoryCreateShared(CONC * SLOT);
    const bufs = await Promise.all(Array.from({ length: CONC }, (_, i) => p.memoryDiminish(cid, i * SLOT, SLOT)));
    const sums: string[] = [];
    const lens: number[] = [];
    let next = 0;
    await Promise.all(bufs.map(async (b, w) => {
      while (next < N) {
        const i = next++;
        const len = 1 + ((i * 7919) % (20 << 10));
        const mem = region.bytes.subarray(w * SLOT, w * SLOT + len);
        mem.set(randomBytes(len));
        sums[i] = sha(mem);
        lens[i] = len;
        const o = await fs.createIno(d.ino, `s${i}`, 0o644, OpenMode.RW);
        t.is(await port.ioAsync(o.write, true, 0, len, b), len);
        await fs.close(o, true);
      }
    }));
    const vols = e.bd.table.list().length;
    t.true(vols <= 4, `${N} small files on ${vols} volumes (metadata + pools), not one each`);
    t.true(e.fs!.pools.pools >= 1);
    // Restart: the pools' free lists are rebuilt from the extents; every file reads back.
    for (const q of e.procs.splice(0)) await q.close();
    await e.fs!.close();
    e.fs = await FsService.start({ controller: e.addr });
    ({ fs, p, port } = await client(e));
    const back = await p.memoryCreateShared(SLOT);
    for (let i = 0; i < N; i += 7) {
      const a = await fs.lookup(d.ino, `s${i}`);
      t.is(a.size, lens[i]);
      const o = await fs.openIno(a.ino, OpenMode.READ);
      t.is(await port.ioAsync(o.read, false, 0, SLOT, back.cid), lens[i]);
      t.is(sha(back.region.bytes.subarray(0, lens[i])), sums[i], `s${i}`);
      await fs.close(o, true);
    }
    // A DAX open of a pooled file while mediated writes to it run: it is made private (copied
    // under the block-range lock), the DAX extents show the same bytes, no write is lost.
    const f = await fs.createIno(d.ino, 'daxme', 0o644, OpenMode.RW);
    const big = await p.memoryCreateShared(64 << 10);
    const expect = Buffer.from(randomBytes(64 << 10));
    big.region.bytes.set(expect);
    t.is(await port.ioAsync(f.write, true, 0, 64 << 10, big.cid), 64 << 10);
    const pieces = await Promise.all(Array.from({ length: 8 }, (_, k) => p.memoryDiminish(big.cid, k * 8192, 8192)));
    const storm = Promise.all(pieces.map(async (b, k) => {
      for (let r = 0; r < 4; r++) {
        const data = randomBytes(8192);
        big.region.bytes.set(data, k * 8192);
        data.copy(expect, k * 8192);
        t.is(await port.ioAsync(f.write, true, k * 8192, 8192, b), 8192);
      }
    }));
    const dx = await fs.openIno(f.attr.ino, OpenMode.READ, { dax: true });
    await storm;
    t.true(dx.extents.length >= 1 && dx.extents[0]!.fileOffset === 0);
    const got = await p.memoryCreateShared(64 << 10);
    await port.ioAsync(dx.extents[0]!.read, false, 0, 64 << 10, got.cid);
    t.true(Buffer.from(got.region.bytes).equals(expect), 'DAX reads what every answered write wrote');
    // Grown past the pool size by mediated writes: private volumes from then on (it has a DAX open).
    t.is(await port.ioAsync(f.write, true, 1 << 20, 4096, pieces[0]!), 4096);
    await fs.close(dx, true);
    await fs.close(f, true);
    // Deleting every small file gives the pools their space back.
    for (let i = 0; i < N; i++) await fs.unlink(d.ino, `s${i}`);
    const pl = e.fs.pools;
    t.is(pl.free, pl.pools * (16 << 20), 'every pool range is free again');
  } finally {
    await teardown(e);
  }
});

vtest('an unlinked file still open when the FS is killed (kill -9) is gone after restart, its volume reclaimed; its linked neighbour intact', async (t) => {
  const e = await env({ fs: false });
  let fsp = await spawnFs(e);
  try {
    const p = await connect(e.addr, { name: 'orphan' });
    let fs = await FsClient.connect(p);
    const port = new IoPort(p);
    const base = e.bd.table.list().length;
    const { cid, region } = await p.memoryCreateShared(1 << 20);
    region.bytes.set(randomBytes(1 << 20));
    const keep = await fs.createIno(ROOT_INO, 'keep', 0o644, OpenMode.RW);
    await port.ioAsync(keep.write, true, 0, 1 << 20, cid);
    const sum = sha(region.bytes);
    const gone = await fs.createIno(ROOT_INO, 'gone', 0o644, OpenMode.RW);
    await port.ioAsync(gone.write, true, 0, 1 << 20, cid);
    await fs.unlink(ROOT_INO, 'gone');
    t.is(await port.ioAsync(gone.read, false, 0, 4096, cid), 4096, 'readable while open');
    t.is(e.bd.table.list().length, base + 2, 'both volumes exist while the unlinked file is open');
    await fsp.kill9();
    fsp = await spawnFs(e);
    fs = await FsClient.connect(p);
    t.is(e.bd.table.list().length, base + 1, 'the unlinked file\'s volume was reclaimed at start-up');
    await code(t, fs.lookup(ROOT_INO, 'gone'), 'ENOENT');
    await code(t, fs.getattr(gone.attr.ino), 'ENOENT');
    const k = await fs.openIno(keep.attr.ino, OpenMode.READ);
    region.bytes.fill(0);
    t.is(await port.ioAsync(k.read, false, 0, 1 << 20, cid), 1 << 20);
    t.is(sha(region.bytes), sum);
    await p.close();
  } finally {
    await fsp.stop();
    await teardown(e);
  }
});

vtest('a version-1 metadata image (flat paths, older FS) loads as directories and files, and is written as version 2', async (t) => {
  const e = await env({ fs: false });
  try {
    // What an older FS left: volume 1 of 8 MiB with a version-1 image in slot 0, and a file's volume.
    const p = await connect(e.addr, { name: 'old-fs' });
    e.procs.push(p);
    const admin = await adminClaim(p, 'blockdev', 10_000);
    const meta = await volumeCreate(p, admin.create, 8 << 20);
    t.is(meta.volume, 1);
    const vol = await volumeCreate(p, admin.create, 1 << 20);
    const port = new IoPort(p);
    const { cid, region } = await p.memoryCreateShared(1 << 20);
    region.bytes.set(randomBytes(1 << 20));
    const sum = sha(region.bytes.subarray(0, 5000));
    await port.ioAsync(vol.write, true, 0, 1 << 20, cid);
    const json = Buffer.from(JSON.stringify({ nextIno: 3, files: [{ id: 1, path: '/old/dir/a', size: 5000, extents: [[vol.volume, 0, 1 << 20]] }, { id: 2, path: '/b', size: 0, extents: [] }] }));
    const b = Buffer.from(region.bytes.buffer, region.bytes.byteOffset, region.bytes.length);
    b.fill(0, 0, 4096);
    b.write('FRFSMETA', 0, 'latin1');
    b.writeUInt32LE(1, 8);
    b.writeUInt32LE(json.length, 12);
    b.writeUInt32LE(1, 16);
    b.writeUInt32LE(crc32(json), 24);
    json.copy(b, 64);
    await port.ioAsync(meta.write, true, 0, 4096, cid);
    await adminRelease(p, admin);
    e.fs = await FsService.start({ controller: e.addr });
    const { fs, port: cport } = await client(e);
    const a = await fs.resolve('/old/dir/a');
    t.is(a.size, 5000);
    t.is(a.mode, S_IFREG | 0o644);
    t.not(a.ino, ROOT_INO, 'the old id 1 (now the root\'s) is renumbered');
    t.is((await fs.resolve('/old')).mode, S_IFDIR | 0o755);
    t.is((await fs.resolve('/b')).size, 0);
    const o = await fs.openIno(a.ino, OpenMode.READ);
    const back = await fs.proc.memoryCreateShared(8192);
    t.is(await cport.ioAsync(o.read, false, 0, 8192, back.cid), 5000);
    t.is(sha(back.region.bytes.subarray(0, 5000)), sum);
    await fs.close(o, true);
    // The next change writes a version-2 checkpoint; a restart loads it.
    await fs.mkdir(ROOT_INO, 'new', 0o755);
    t.is(e.fs.metaWrites.checkpoints, 1);
    for (const q of e.procs.splice(1)) await q.close();
    await e.fs.close();
    e.fs = await FsService.start({ controller: e.addr });
    const c2 = await client(e);
    t.is((await c2.fs.resolve('/old/dir/a')).size, 5000);
    t.is((await c2.fs.resolve('/new')).mode, S_IFDIR | 0o755);
  } finally {
    await teardown(e);
  }
});

/** Every entry under `dir` resolves; nlinks match the entries naming each inode (files) and 2 + subdirectories (directories). */
async function checkTree(t: { is: (a: unknown, b: unknown, m?: string) => void }, fs: FsClient): Promise<Map<number, Attr>> {
  const names = new Map<number, number>();
  const attrs = new Map<number, Attr>();
  const walk = async (ino: number, path: string): Promise<void> => {
    const ents = await fs.readdirAll(ino);
    let subdirs = 0;
    for (const x of ents.slice(2)) {
      const a = await fs.lookup(ino, x.name);
      t.is(a.ino, x.ino, `${path}/${x.name}`);
      attrs.set(a.ino, a);
      if ((a.mode & S_IFMT) === S_IFDIR) {
        subdirs++;
        t.is((await fs.lookup(a.ino, '..')).ino, ino, `'..' of ${path}/${x.name}`);
        await walk(a.ino, `${path}/${x.name}`);
      } else names.set(a.ino, (names.get(a.ino) ?? 0) + 1);
    }
    t.is((await fs.getattr(ino)).nlink, 2 + subdirs, `nlink of directory ${path || '/'}`);
  };
  await walk(ROOT_INO, '');
  for (const [ino, n] of names) t.is(attrs.get(ino)!.nlink, n, `nlink of inode ${ino}`);
  return attrs;
}

vtest('crash consistency of rename and link: kill -9 of the FS during a storm of them, restart, the tree is consistent and every answered step is there', async (t) => {
  const e = await env({ fs: false });
  let fsp = await spawnFs(e);
  try {
    const p = await connect(e.addr, { name: 'storm' });
    let fs = await FsClient.connect(p);
    const port = new IoPort(p);
    const W = 6;
    const { cid, region } = await p.memoryCreateShared(W * 4096);
    const bufs = await Promise.all(Array.from({ length: W }, (_, i) => p.memoryDiminish(cid, i * 4096, 4096)));
    const work = await fs.mkdir(ROOT_INO, 'work', 0o755);
    const done = await fs.mkdir(ROOT_INO, 'done', 0o755);
    const links = await fs.mkdir(ROOT_INO, 'links', 0o755);
    // Per worker and step k: create work/w-k with 4 KiB (written, fsync'd), link it as
    // links/w-k, rename it to done/w-k (across directories), rename done/w-k over done/latest-w.
    interface Step { w: number; k: number; sum: string; stage: number }
    const steps: Step[] = [];
    let stop = false;
    const storm = Promise.all(Array.from({ length: W }, async (_, w) => {
      for (let k = 0; !stop; k++) {
        const st: Step = { w, k, sum: '', stage: 0 };
        steps.push(st);
        try {
          const name = `${w}-${k}`;
          const o = await fs.createIno(work.ino, name, 0o644, OpenMode.RW, { flags: OpenFlags.EXCL });
          region.bytes.set(randomBytes(4096), w * 4096);
          const sum = sha(region.bytes.subarray(w * 4096, (w + 1) * 4096));
          await port.ioAsync(o.write, true, 0, 4096, bufs[w]!);
          await fs.fsync(o.attr.ino);
          await fs.close(o, true);
          st.sum = sum;
          st.stage = 1;
          await fs.link(o.attr.ino, links.ino, name);
          st.stage = 2;
          await fs.rename(work.ino, name, done.ino, name);
          st.stage = 3;
          await fs.link(o.attr.ino, done.ino, `tmp-${w}`);
          await fs.rename(done.ino, `tmp-${w}`, done.ino, `latest-${w}`);
          st.stage = 4;
        } catch {
          return; // the FS died
        }
      }
    }));
    // Kill once enough has been answered (a fixed delay finds nothing done on a loaded machine).
    await until(() => steps.filter((x) => x.stage === 4).length >= 20, 30_000);
    await new Promise((r) => setTimeout(r, 50));
    await fsp.kill9();
    stop = true;
    await Promise.race([storm, new Promise((r) => setTimeout(r, 300))]);
    fsp = await spawnFs(e);
    fs = await FsClient.connect(p);
    const attrs = await checkTree(t, fs);
    t.true(attrs.size > 0);
    const mem = region.bytes.subarray(0, 4096);
    let checked = 0;
    const latest = new Map<number, Step>();
    for (const st of steps) {
      const name = `${st.w}-${st.k}`;
      if (st.stage >= 1) {
        // The data, fsync'd, is there under whichever name the last step that may have run
        // gave it (a step in flight at the kill may or may not have landed).
        const inDone = await fs.lookup(done.ino, name).catch(() => null);
        const inWork = await fs.lookup(work.ino, name).catch(() => null);
        t.true((inDone === null) !== (inWork === null), `${name}: in exactly one of work/ and done/`);
        const a = (inDone ?? inWork)!;
        if (st.stage >= 3) t.truthy(inDone, `${name}: the answered rename is there`);
        const o = await fs.openIno(a.ino, OpenMode.READ);
        t.is(await port.ioAsync(o.read, false, 0, 4096, bufs[0]!), 4096);
        t.is(sha(mem), st.sum, `${name}: fsync'd data`);
        await fs.close(o, true);
        checked++;
        if (st.stage >= 2) t.is((await fs.lookup(links.ino, name)).ino, a.ino, `${name}: the answered link is there`);
      }
      if (st.stage >= 4) latest.set(st.w, st);
    }
    for (const [w, st] of latest) {
      const l = await fs.lookup(done.ino, `latest-${w}`);
      // latest-w is the last answered step's file or a later one (a step in flight may have landed).
      const k = steps.filter((s) => s.w === w && s.k >= st.k).map((s) => `${s.w}-${s.k}`);
      const inos = await Promise.all(k.map((n) => fs.lookup(done.ino, n).then((a) => a.ino, () => -1)));
      t.true(inos.includes(l.ino), `latest-${w} is step ${st.k} or later`);
    }
    t.true(checked > 5, `${checked} files checked`);
    t.log(`${steps.filter((s) => s.stage === 4).length} full steps answered before kill -9; ${checked} files checked, ${attrs.size} inodes in the tree`);
    await p.close();
  } finally {
    await fsp.stop();
    await teardown(e);
  }
});

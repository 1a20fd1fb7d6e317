/**
 * The FS service: mediated I/O integrity and the block cache, control operations and their
 * errors, DAX opens, revocation on close/delete, the DAX use-after-free case, persistence
 * across restarts and crash consistency (kill -9 of the FS process during a write storm).
 */
import { createHash, randomBytes } from 'node:crypto';
import { connect, FractosError } from '../libfractos/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, adminRelease, IoPort, volumeCreate } from '../blockdev-adaptor/client.js';
import { FsService } from '../fs-service/service.js';
import { FsClient, type OpenFile } from '../fs-service/client.js';
import { OpenMode } from '../fs-service/schema.js';
import { deviceDir } from './helpers/devices.js';
import { until } from './helpers/wait.js';
import { fsClient, fsEnv, fsTeardown, spawnFs, type FsEnv } from './helpers/fs-env.js';
import type { UringBackend } from '../blockdev-adaptor/uring-backend.js';
import { expectCode as code } from './helpers/errors.js';

const devices = await deviceDir('fractos-fst', 'fs.test');
const { vtest } = devices;

type Env = FsEnv;
const env = (opts: { fs?: boolean; size?: number; cacheBlocks?: number } = {}): Promise<Env> => fsEnv(devices, opts);
const client = fsClient;
const teardown = fsTeardown;


function sha(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

vtest('mediated I/O: concurrent writes sharing a block (disjoint bytes) both land: no lost update', async (t) => {
  const e = await env();
  try {
    const { p, fs, port } = await client(e);
    const f = await fs.open('/shared-blocks', { create: true });
    const N = 16;
    const LEN = 3000; // neighbours always share one 4 KiB block; their bytes never overlap
    const { cid, region } = await p.memoryCreateShared(N * 4096);
    const bufs = await Promise.all(Array.from({ length: N }, (_, i) => p.memoryDiminish(cid, i * 4096, LEN)));
    for (let round = 0; round < 6; round++) {
      const expect = Buffer.alloc(N * LEN);
      await Promise.all(bufs.map(async (b, i) => {
        const data = randomBytes(LEN);
        region.bytes.set(data, i * 4096);
        data.copy(expect, i * LEN);
        t.is(await port.ioAsync(f.write, true, i * LEN, LEN, b), LEN);
      }));
      const got = Buffer.alloc(N * LEN);
      for (let i = 0; i < N; i++) {
        t.is(await port.ioAsync(f.read, false, i * LEN, LEN, bufs[0]!), LEN);
        got.set(region.bytes.subarray(0, LEN), i * LEN);
      }
      t.true(got.equals(expect), `round ${round}: every write's bytes are there`);
    }
  } finally {
    await teardown(e);
  }
});

vtest('mediated I/O: concurrent unaligned and aligned writes, reads through the cache', async (t) => {
  const e = await env();
  try {
    const { p, fs, port } = await client(e);
    const f = await fs.open('/a', { create: true });
    const SLOTS = 16;
    const SZ = 64 << 10;
    const { cid, region } = await p.memoryCreateShared(SLOTS * SZ);
    const bufs = await Promise.all(Array.from({ length: SLOTS }, (_, i) => p.memoryDiminish(cid, i * SZ, SZ)));
    // Disjoint ranges per slot, odd offsets and lengths: exercises read-modify-write and growth.
    const expect = Buffer.alloc(SLOTS * 3 * SZ);
    await Promise.all(bufs.map(async (b, i) => {
      for (let k = 0; k < 3; k++) {
        const off = (i * 3 + k) * SZ + (k === 1 ? 777 : 0);
        const len = k === 2 ? SZ : SZ - 1500;
        const data = randomBytes(len);
        region.bytes.set(data, i * SZ);
        t.is(await port.ioAsync(f.write, true, off, len, b), len);
        data.copy(expect, off);
      }
    }));
    const st = await fs.stat('/a');
    t.is(st.size, expect.length);
    t.true(st.allocated >= st.size);
    // Read back in 64 KiB pieces at an odd phase (twice: the second time from the cache).
    for (let pass = 0; pass < 2; pass++) {
      const got = Buffer.alloc(expect.length);
      await Promise.all(bufs.map(async (b, i) => {
        for (let off = i * 4096 + 123; off < expect.length; off += SLOTS * 4096) {
          const n = await port.ioAsync(f.read, false, off, 4096, b);
          got.set(region.bytes.subarray(i * SZ, i * SZ + n), off);
        }
      }));
      let ok = true;
      for (let off = 123; off < expect.length; off += 4096) {
        const n = Math.min(4096, expect.length - off);
        if (!got.subarray(off, off + n).equals(expect.subarray(off, off + n))) ok = false;
      }
      t.true(ok, `pass ${pass}`);
    }
    t.true(e.fs!.counts.hits > 0);
    // Read at EOF answers fewer bytes.
    t.is(await port.ioAsync(f.read, false, expect.length - 10, 4096, bufs[0]!), 10);
    t.is(await port.ioAsync(f.read, false, expect.length + 4096, 4096, bufs[0]!), 0);
    await fs.close(f);
  } finally {
    await teardown(e);
  }
});

vtest('control operations and their errors', async (t) => {
  const e = await env({ size: 48 << 20 });
  try {
    const { p, fs, port } = await client(e);
    await fs.create('/x/one');
    await fs.create('/x/two');
    await fs.create('/y');
    await code(t, fs.create('/y'), 'EEXIST');
    await code(t, fs.create('relative'), 'EINVAL');
    await code(t, fs.open('/nope'), 'ENOENT');
    await code(t, fs.stat('/nope'), 'ENOENT');
    await code(t, fs.delete('/nope'), 'ENOENT');
    await code(t, fs.open('/y', { mode: 7 }), 'EINVAL');
    const { cid, region } = await p.memoryCreateShared(64 << 10);
    t.deepEqual(await fs.list('/x/', cid, region.bytes), ['/x/one', '/x/two']);
    // Read-only opens hand out no write Request (mediated or DAX).
    await fs.truncate('/y', 3 << 20);
    const ro = await fs.open('/y', { mode: OpenMode.READ });
    t.is(ro.write, 0);
    t.not(ro.read, 0);
    const rod = await fs.open('/y', { mode: OpenMode.READ, dax: true });
    t.true(rod.extents.length >= 1);
    t.true(rod.extents.every((x) => x.write === 0 && x.read !== 0));
    // A mediated Request of a read-only open can not be turned into a write: the FS checks the mode.
    const wo = await fs.open('/y', { mode: OpenMode.WRITE });
    t.is(wo.read, 0);
    await code(t, port.ioAsync(ro.read, false, 0, 4096, cid).then(() => { throw new FractosError('EPERM', 'ok'); }), 'EPERM');
    // A full device: ENOSPC, and nothing changes.
    await code(t, fs.truncate('/y', 1 << 30), 'ENOSPC');
    t.is((await fs.stat('/y')).size, 3 << 20);
    // Truncate down frees extents; stat follows.
    await fs.truncate('/y', 4096);
    t.is((await fs.stat('/y')).size, 4096);
    await fs.delete('/x/one');
    t.deepEqual(await fs.list('/', cid, region.bytes), ['/x/two', '/y']);
  } finally {
    await teardown(e);
  }
});

vtest('DAX: extent Requests reach the device; close and delete revoke them; use-after-free fails with EREVOKED', async (t) => {
  const e = await env();
  try {
    const { p, fs, port } = await client(e);
    await fs.create('/d');
    await fs.truncate('/d', 2 << 20);
    const f: OpenFile = await fs.open('/d', { dax: true });
    t.true(f.dax);
    t.is(f.extents.length, 1);
    const x = f.extents[0]!;
    const { cid, region } = await p.memoryCreateShared(1 << 20);
    const data = randomBytes(1 << 20);
    region.bytes.set(data);
    await port.ioAsync(x.write, true, 1 << 20, 1 << 20, cid);
    await fs.close(f);
    // Revoked by close: DAX and mediated alike.
    await code(t, port.ioAsync(x.read, false, 0, 4096, cid), 'EREVOKED');
    await code(t, port.ioAsync(f.read, false, 0, 4096, cid), 'EREVOKED');
    // The data is in the file (mediated read after the DAX write).
    const g = await fs.open('/d', { mode: OpenMode.READ });
    region.bytes.fill(0);
    t.is(await port.ioAsync(g.read, false, 1 << 20, 1 << 20, cid), 1 << 20);
    t.is(sha(region.bytes), sha(data));
    // Use after free: a DAX Request of a deleted file, after its extent went to another file.
    const h = await fs.open('/d', { dax: true });
    const stale = h.extents[0]!;
    await fs.delete('/d');
    await fs.create('/e');
    await fs.truncate('/e', 2 << 20);
    const ee = await fs.open('/e', { dax: true });
    region.bytes.fill(0x5a);
    await port.ioAsync(ee.extents[0]!.write, true, 0, 4096, cid);
    await code(t, port.ioAsync(stale.write, true, 0, 4096, cid), 'EREVOKED');
    await code(t, port.ioAsync(stale.read, false, 0, 4096, cid), 'EREVOKED');
    await code(t, port.ioAsync(g.read, false, 0, 4096, cid), 'EREVOKED');
    region.bytes.fill(0);
    await port.ioAsync(ee.extents[0]!.read, false, 0, 4096, cid);
    t.true(region.bytes.subarray(0, 4096).every((b) => b === 0x5a));
  } finally {
    await teardown(e);
  }
});

vtest('crash consistency: kill -9 of the FS during a write storm, restart, every completed operation is there', async (t) => {
  const e = await env({ fs: false });
  let fsp = await spawnFs(e);
  try {
    const p = await connect(e.addr, { name: 'storm' });
    let fs = await FsClient.connect(p);
    const port = new IoPort(p);
    const SLOTS = 16;
    const BS = 8192;
    const { cid, region } = await p.memoryCreateShared(SLOTS * BS);
    const bufs = await Promise.all(Array.from({ length: SLOTS }, (_, i) => p.memoryDiminish(cid, i * BS, BS)));
    const created = new Set<string>();
    const deleted = new Set<string>();
    const done: { path: string; off: number; sum: string }[] = [];
    // Writes issued and not (yet) completed: at the kill they may or may not have landed.
    const inflight = new Set<{ path: string; off: number }>();
    // A delete in flight at the kill may or may not have landed: its file is not checked.
    let deleting: string | null = null;
    const files: OpenFile[] = [];
    for (let i = 0; i < 4; i++) {
      files.push(await fs.open(`/storm/${i}`, { create: true }));
      created.add(`/storm/${i}`);
    }
    let stop = false;
    const storm = Promise.all(bufs.map(async (b, s) => {
      let k = 0;
      while (!stop) {
        k++;
        try {
          if (s === 0 && k % 4 === 0) {
            const path = `/storm/c${k}`;
            await fs.create(path);
            created.add(path);
            if (k % 8 === 0) {
              deleting = path;
              await fs.delete(path);
              deleting = null;
              deleted.add(path);
            }
            continue;
          }
          const fi = s % files.length;
          const off = (Math.floor(k * SLOTS + s) * BS) % (6 << 20);
          const mem = region.bytes.subarray(s * BS, (s + 1) * BS);
          mem.set(randomBytes(BS));
          const sum = sha(mem);
          const w = { path: `/storm/${fi}`, off: off + (s % 3) * 100 };
          inflight.add(w);
          await port.ioAsync(files[fi]!.write, true, w.off, BS, b);
          inflight.delete(w);
          done.push({ ...w, sum });
        } catch {
          return; // the FS died
        }
      }
    }));
    // Kill once enough has completed (a fixed delay finds nothing done on a loaded machine).
    await until(() => done.length >= 100, 20_000);
    await new Promise((r) => setTimeout(r, 100));
    await fsp.kill9();
    stop = true;
    // Ops in flight at the kill never complete (their continuations died with the FS).
    await Promise.race([storm, new Promise((r) => setTimeout(r, 300))]);
    t.true(done.length > 20, `${done.length} writes completed before the kill`);
    fsp = await spawnFs(e);
    fs = await FsClient.connect(p);
    // Later writes to the same place supersede earlier ones: keep the last completed per (path, off).
    const last = new Map<string, { path: string; off: number; sum: string }>();
    for (const d of done) last.set(`${d.path}:${d.off}`, d);
    const overlaps = (a: { path: string; off: number }, b: { path: string; off: number }): boolean => a.path === b.path && Math.abs(a.off - b.off) < BS && a.off !== b.off;
    const opened = new Map<string, OpenFile>();
    let checked = 0;
    const mem = region.bytes.subarray(0, BS);
    const uncertain = [...inflight];
    for (const d of last.values()) {
      const newer = done.slice(done.lastIndexOf(d) + 1).some((x) => overlaps(x, d));
      if (newer) continue; // partially overwritten by a later completed write
      // A write in flight at the kill may have reached the device over this one: either
      // outcome is correct, so ranges it touches are not checked.
      if (uncertain.some((x) => x.path === d.path && Math.abs(x.off - d.off) < BS)) continue;
      let f = opened.get(d.path);
      if (!f) opened.set(d.path, (f = await fs.open(d.path, { mode: OpenMode.READ })));
      t.is(await port.ioAsync(f.read, false, d.off, BS, bufs[0]!), BS);
      t.is(sha(mem), d.sum, `${d.path} @ ${d.off}`);
      checked++;
    }
    t.true(checked > 0);
    for (const c of created) {
      if (c === deleting) continue;
      if (deleted.has(c)) await code(t, fs.stat(c), 'ENOENT');
      else t.true((await fs.stat(c)).size >= 0);
    }
    for (const d of done) t.true((await fs.stat(d.path)).size >= d.off + BS);
    t.log(`${done.length} writes, ${created.size} creates, ${deleted.size} deletes completed before kill -9; ${checked} ranges verified`);
    await p.close();
  } finally {
    await fsp.stop();
    await teardown(e);
  }
});

vtest('files persist across a clean restart of the FS and of the blockdev', async (t) => {
  const e = await env({ fs: false });
  const dev = e.bd.backend as UringBackend;
  let fsp = await spawnFs(e);
  try {
    let p = await connect(e.addr, { name: 'c1' });
    let fs = await FsClient.connect(p);
    let port = new IoPort(p);
    const { cid, region } = await p.memoryCreateShared(1 << 20);
    const data = randomBytes(1 << 20);
    region.bytes.set(data);
    const f = await fs.open('/keep', { create: true });
    await port.ioAsync(f.write, true, 5000, 1 << 20, cid);
    await fsp.stop();
    await p.close();
    // Restart the blockdev too (same device), then the FS.
    await e.bd.close();
    e.bd = await BlockdevService.start({ device: dev.path, controller: e.addr, format: true });
    t.false(e.bd.formatted);
    fsp = await spawnFs(e);
    t.regex(fsp.line, /files=1/);
    p = await connect(e.addr, { name: 'c2' });
    fs = await FsClient.connect(p);
    port = new IoPort(p);
    t.is((await fs.stat('/keep')).size, 5000 + (1 << 20));
    const g = await fs.open('/keep', { mode: OpenMode.READ });
    const m = await p.memoryCreateShared(1 << 20);
    t.is(await port.ioAsync(g.read, false, 5000, 1 << 20, m.cid), 1 << 20);
    t.is(sha(m.region.bytes), sha(data));
    await p.close();
  } finally {
    await fsp.stop();
    await teardown(e);
  }
});

vtest('a client that goes away without close: the FS closes its opens and revokes their DAX Requests', async (t) => {
  const e = await env();
  try {
    const fsSvc = e.fs!;
    const { p, fs, port } = await client(e);
    await fs.create('/dax');
    await fs.truncate('/dax', 2 << 20);
    const m = await fs.open('/med', { create: true });
    const d = await fs.open('/dax', { dax: true });
    const ro = await fs.open('/dax', { mode: OpenMode.READ });
    t.is(fsSvc.openHandles, 3);
    const { cid } = await p.memoryCreateShared(4096);
    await port.ioAsync(d.extents[0]!.write, true, 0, 4096, cid);
    // Watch the FS's own DAX revtree children: revoked when the FS closes the open.
    const daxCids = fsSvc.handleCaps(d.handle)!.dax;
    t.is(daxCids.length, 2);
    const events: string[] = [];
    for (const c of daxCids) await fsSvc.proc.monitorReceive(c, (ev) => events.push(ev));
    // Dropping some of an open's caps is not enough: the read-only open still has its read Request.
    await p.capDrop(ro.close);
    await new Promise((r) => setTimeout(r, 100));
    t.is(fsSvc.openHandles, 3);
    // Dropping all of them closes it.
    await p.capDrop(ro.read);
    t.true(await until(() => fsSvc.openHandles === 2), `${fsSvc.openHandles} opens left after the drop`);
    // The client closes its channel without closing its opens.
    await p.close();
    e.procs.splice(e.procs.indexOf(p), 1);
    t.true(await until(() => fsSvc.openHandles === 0), `${fsSvc.openHandles} opens left after the client went away`);
    t.is(fsSvc.counts.orphanedCloses, 3);
    t.true(await until(() => events.length === 2));
    t.deepEqual(events, ['revoked', 'revoked']);
    t.is(fsSvc.handleCaps(m.handle), null);
    // The files are intact and usable by the next client.
    const c2 = await client(e);
    const g = await c2.fs.open('/dax', { dax: true });
    const buf = await c2.p.memoryCreateShared(4096);
    await c2.port.ioAsync(g.extents[0]!.read, false, 0, 4096, buf.cid);
    t.is((await c2.fs.stat('/med')).size, 0);
    await c2.fs.close(g);
    t.is(fsSvc.openHandles, 0);
  } finally {
    await teardown(e);
  }
});

vtest('volumes leaked by a crash are reclaimed at start-up; files are intact', async (t) => {
  const e = await env();
  try {
    const { p, fs, port } = await client(e);
    const { cid, region } = await p.memoryCreateShared(1 << 20);
    const data = randomBytes(1 << 20);
    region.bytes.set(data);
    const f = await fs.open('/kept', { create: true });
    await port.ioAsync(f.write, true, 3000, 1 << 20, cid);
    await fs.create('/empty');
    const before = e.bd.table.list().map((v) => v.id);
    await e.fs!.close();
    // The crash window: a volume created for a new extent that no metadata names.
    // (The volume administration is free once the FS is gone: a stand-in for the crashed FS.)
    const admin = await adminClaim(p, 'blockdev', 5000);
    const orphan = await volumeCreate(p, admin.create, 1 << 20);
    const orphan2 = await volumeCreate(p, admin.create, 2 << 20);
    t.deepEqual(e.bd.table.list().map((v) => v.id), [...before, orphan.volume, orphan2.volume]);
    await adminRelease(p, admin);
    e.fs = await FsService.start({ controller: e.addr });
    t.is(e.fs.counts.reclaimedVolumes, 2);
    t.deepEqual(e.bd.table.list().map((v) => v.id), before);
    // Releasing the claim (and deleting) revoked the orphan's Requests.
    await code(t, port.ioAsync(orphan.read, false, 0, 4096, cid), 'EREVOKED');
    const fs2 = await FsClient.connect(p);
    t.is((await fs2.stat('/kept')).size, 3000 + (1 << 20));
    t.is((await fs2.stat('/empty')).size, 0);
    const g = await fs2.open('/kept', { mode: OpenMode.READ });
    region.bytes.fill(0);
    t.is(await port.ioAsync(g.read, false, 3000, 1 << 20, cid), 1 << 20);
    t.is(sha(region.bytes), sha(data));
    // Nothing to reclaim on a clean restart.
    await e.fs.close();
    e.fs = await FsService.start({ controller: e.addr });
    t.is(e.fs.counts.reclaimedVolumes, 0);
    t.deepEqual(e.bd.table.list().map((v) => v.id), before);
  } finally {
    await teardown(e);
  }
});

vtest('a shrinking truncate zeroes the cut-off tail: growing again exposes zeros, not the old bytes', async (t) => {
  const e = await env();
  try {
    const { p, fs, port } = await client(e);
    const MB = 1 << 20;
    const { cid, region } = await p.memoryCreateShared(MB);
    const f = await fs.open('/t', { create: true });
    // A pattern over three extents ([0,1M), [1M,2M), [2M,4M)), unaligned end.
    const pattern = Buffer.alloc(3 * MB + 123);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i % 251) + 1;
    for (let off = 0; off < pattern.length; off += MB) {
      const n = Math.min(MB, pattern.length - off);
      region.bytes.set(pattern.subarray(off, off + n));
      await port.ioAsync(f.write, true, off, n, cid);
    }
    t.is((await fs.stat('/t')).extents, 3);
    // Shrink to an unaligned size inside the second extent (the third goes), then grow back.
    const cut = MB + MB / 2 + 77;
    await fs.truncate('/t', cut);
    t.is((await fs.stat('/t')).extents, 2);
    await fs.truncate('/t', pattern.length);
    const got = Buffer.alloc(pattern.length);
    for (let off = 0; off < pattern.length; off += MB) {
      const n = Math.min(MB, pattern.length - off);
      t.is(await port.ioAsync(f.read, false, off, n, cid), n);
      got.set(region.bytes.subarray(0, n), off);
    }
    t.true(got.subarray(0, cut).equals(pattern.subarray(0, cut)), 'the kept bytes are intact');
    const stale = got.subarray(cut).findIndex((b) => b !== 0);
    t.is(stale, -1, `old byte at file offset ${cut + stale}`);
    // On the device too (not only through the FS's cache): the second extent's tail, raw.
    const d = await fs.open('/t', { dax: true, mode: OpenMode.READ });
    await port.ioAsync(d.extents[1]!.read, false, 0, MB, cid);
    const vol = Buffer.from(region.bytes);
    t.true(vol.subarray(0, cut - MB).equals(pattern.subarray(MB, cut)));
    t.true(vol.subarray(cut - MB).every((b) => b === 0));
    await fs.close(d);
    await fs.close(f);
  } finally {
    await teardown(e);
  }
});

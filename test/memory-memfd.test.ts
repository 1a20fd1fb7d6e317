/**
 * Shared Memory by file descriptor (issue #8 item 3, docs/core.md "Shared regions"): regions
 * are sealed memfds passed to the Controller with their first MEMORY_CREATE (SCM_RIGHTS), no
 * name anywhere; MEMORY_MAP hands a region's fd to a holder of a cap to it on this host, read-only
 * for a read-only cap, and only for a cap covering the whole region unless its owner shares it
 * whole; regions over 4 GiB work; every fd the Controller took is closed when the Memory on it
 * and the channel are gone (serial tests: they count this process's fds, the Controller's
 * included); forged fds (a plain file, a pipe, unsealed memfds, read-only fds, a
 * wrong size) are refused and closed (also in the C++ unit tests, controller/src/test/core_test.cc).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { closeSync, constants as fsc, ftruncateSync, openSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, Perm, type Process } from '../libfractos/index.js';
import { RegionMaps } from '../libfractos/region-maps.js';
import { Backing, MemCreateFlag, Op, writeU64 } from '../libfractos/protocol.js';
import { createRegionFd, fdSeals, mapFd, REGION_SEALS, Seal } from '../native/shm/index.js';
import { codeOf } from './helpers/errors.js';
import { removeTempDir, tempDir } from './helpers/spawn.js';
import { until } from './helpers/wait.js';

interface Env {
  c: Controller;
  addr: string;
  tcp: string;
  procs: Process[];
  proc(name: string, opts?: { tcp?: boolean; memoryDescriptors?: boolean }): Promise<Process>;
  close(): Promise<void>;
}

async function env(): Promise<Env> {
  const dir = tempDir('fractos-memfd-');
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr, 'tcp://127.0.0.1:0'], stateDir: join(dir, 'state') });
  const procs: Process[] = [];
  return {
    c,
    addr,
    tcp: c.addresses[1]!,
    procs,
    proc: async (name, opts = {}) => {
      const p = await connect(opts.tcp ? c.addresses[1]! : addr, { name, memoryDescriptors: opts.memoryDescriptors });
      procs.push(p);
      return p;
    },
    close: async () => {
      for (const p of procs) await p.close().catch(() => {});
      await c.close();
      removeTempDir(dir);
    },
  };
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

function fdList(): string {
  return readdirSync('/proc/self/fd').map((fd) => { try { return `${fd}:${readlinkSync(`/proc/self/fd/${fd}`)}`; } catch { return fd; } }).join(' ');
}

function shmNames(): string[] {
  try {
    return readdirSync('/dev/shm').filter((n) => n.startsWith(`fractos-${process.pid}-`));
  } catch {
    return [];
  }
}

test('allocShared: a sealed memfd, mapped, no name in /dev/shm; the Controller copies through it', async (t) => {
  const e = await env();
  try {
    const a = await e.proc('a');
    const x = await a.memoryCreateShared(8192);
    const y = await a.memoryCreateShared(8192);
    t.is(fdSeals(x.region.fd), REGION_SEALS, 'shrink, grow and seal sealed');
    t.deepEqual(shmNames(), [], 'nothing of ours in /dev/shm (shm_open names carried the pid)');
    t.true(x.region.key > 0 && y.region.key > 0 && x.region.key !== y.region.key);
    x.region.bytes.fill(0x42);
    await a.memoryCopy(x.cid, y.cid);
    t.true(y.region.bytes.every((b) => b === 0x42));
    // More Memory on the same region names its id (no fd): same key.
    const part = await a.memoryCreate(x.region, Perm.READ, 4096, 4096);
    const st = await a.memoryStat(part);
    t.is(st.regionKey, x.region.key);
    t.is(st.regionOffset, 4096);
    t.false(st.mappable, 'a part of a region not shared whole');
    t.true((await a.memoryStat(x.cid)).mappable, 'the whole region');
  } finally {
    await e.close();
  }
});

test('memory_map: whole RW cap -> read-write fd of the same bytes; read-only cap -> read-only fd (no writable mapping); part -> EPERM unless shared whole', async (t) => {
  const e = await env();
  try {
    const owner = await e.proc('owner');
    const dev = await e.proc('adaptor');
    const { cid, region } = await owner.memoryCreateShared(16384);
    region.bytes.fill(9);
    await owner.kvPut('mem', cid);
    const rw = await dev.kvGet('mem');
    const m = await dev.memoryMap(rw);
    t.is(m.perms, Perm.RW);
    t.is(m.regionKey, region.key);
    t.is(m.regionSize, 16384);
    const mapped = new Uint8Array(mapFd(m.fd, m.regionSize, true).buffer);
    mapped[5] = 77;
    t.is(region.bytes[5], 77, 'the adaptor writes into the owner\'s region');
    t.is(mapped[6], 9);

    const ro = await dev.memoryDiminish(rw, 0, 16384, Perm.WRITE);
    const r = await dev.memoryMap(ro);
    t.is(r.perms, Perm.READ);
    t.is(await codeOf(Promise.resolve().then(() => mapFd(r.fd, r.regionSize, true))), 'EACCES', 'no writable mapping of a read-only fd');
    const rmap = new Uint8Array(mapFd(r.fd, r.regionSize, false).buffer);
    t.is(rmap[5], 77);

    const part = await dev.memoryDiminish(rw, 4096, 4096);
    t.is(await codeOf(dev.memoryMap(part)), 'EPERM', 'a part of a region not shared whole');
    const wo = await dev.memoryDiminish(rw, 0, 16384, Perm.READ);
    t.is(await codeOf(dev.memoryMap(wo)), 'EPERM', 'a write-only cap');
    const served = await owner.memoryCreateServed(4096, Perm.RW, { read: (_o, n) => new Uint8Array(n), write: () => {} });
    t.is(await codeOf(owner.memoryMap(served)), 'EPERM', 'served Memory');

    const slots = owner.allocShared(4 * 4096, { shareWhole: true });
    slots.view(3 * 4096, 4096).fill(5);
    const slot3 = await owner.memoryCreate(slots, Perm.RW, 3 * 4096, 4096);
    await owner.kvPut('slot3', slot3);
    const s3 = await dev.kvGet('slot3');
    t.true((await dev.memoryStat(s3)).mappable);
    const sm = await dev.memoryMap(s3);
    t.is(sm.regionOffset, 3 * 4096);
    t.is(sm.size, 4096);
    t.is(new Uint8Array(mapFd(sm.fd, sm.regionSize, false).buffer)[3 * 4096], 5);
    for (const x of [m, r, sm]) (await import('node:fs')).closeSync(x.fd);

    // Over tcp no fd travels.
    const far = await e.proc('tcp', { tcp: true });
    await owner.kvPut('mem2', cid);
    t.is(await codeOf(far.memoryMap(await far.kvGet('mem2'))), 'EPERM');
    t.false((await far.memoryStat(await far.kvGet('mem2'))).mappable);
  } finally {
    await e.close();
  }
});

test('RegionMaps: one memory_map per region, views by descriptor, read-only mapping upgraded by a writable cap', async (t) => {
  const e = await env();
  try {
    const owner = await e.proc('owner');
    const dev = await e.proc('adaptor', { memoryDescriptors: true });
    const maps = new RegionMaps(dev);
    const slots = owner.allocShared(8 * 4096, { shareWhole: true });
    const cids = [];
    for (let i = 0; i < 8; i++) cids.push(await owner.memoryCreate(slots, i % 2 ? Perm.READ : Perm.RW, i * 4096, 4096));
    for (let i = 0; i < 8; i++) slots.view(i * 4096, 4096).fill(i);
    for (let i = 0; i < 8; i++) await owner.kvPut(`s${i}`, cids[i]!);
    // Read-only first (slot 1): a read-only mapping, then a write view needs slot 0's RW cap.
    const s1 = await dev.kvGet('s1');
    const d1 = await dev.memoryStat(s1);
    const v1 = await maps.view(s1, d1, 4096, false);
    t.is(v1?.[0], 1);
    t.is(await maps.view(s1, d1, 4096, true), null, 'no write through a read-only cap');
    const s0 = await dev.kvGet('s0');
    const d0 = await dev.memoryStat(s0);
    t.is(maps.cached(d0, 4096, true), null, 'cached read-only: a write view needs a writable map');
    const v0 = await maps.view(s0, d0, 4096, true);
    v0!.fill(0xee);
    t.true(slots.view(0, 4096).every((b) => b === 0xee));
    t.is(maps.mapped, 2);
    // Every other slot: from the cache, no call.
    for (let i = 2; i < 8; i++) {
      const c = await dev.kvGet(`s${i}`);
      const d = await dev.memoryStat(c);
      t.is(maps.cached(d, 4096, false)?.[0], i);
    }
    t.is(maps.mapped, 2);
    t.is(maps.size, 1);
    // Bounded in bytes: a region larger than the bound is never kept.
    const small = new RegionMaps(dev, { maxBytes: 4096 });
    t.is(await small.view(s0, d0, 4096, false) !== null, true, 'the view is given');
    t.is(small.size, 0, 'but not cached');
  } finally {
    await e.close();
  }
});

test('a region over 4 GiB (sparse): Memory at 4 GiB + 4 KiB, copies both ways, a few pages touched', async (t) => {
  const e = await env();
  try {
    const a = await e.proc('big');
    const BIG = 5 * 2 ** 30;
    const region = a.allocShared(BIG);
    t.is(region.size, BIG);
    t.is(await codeOf(Promise.resolve().then(() => region.bytes)), 'ERANGE', 'no single Uint8Array over 4 GiB');
    const far = await a.memoryCreate(region, Perm.RW, 2 ** 32 + 4096, 4096);
    t.is((await a.memoryStat(far)).regionOffset, 2 ** 32 + 4096);
    const near = await a.memoryCreateShared(4096);
    near.region.bytes.fill(0x61);
    await a.memoryCopy(near.cid, far);
    t.true(region.view(2 ** 32 + 4096, 4096).every((b) => b === 0x61));
    region.view(2 ** 32 + 4096, 4096).fill(0x62);
    await a.memoryCopy(far, near.cid);
    t.true(near.region.bytes.every((b) => b === 0x62));
    const whole = await a.memoryCreate(region, Perm.RW);
    t.is((await a.memoryStat(whole)).size, BIG);
    // An adaptor maps it (memory_map, RegionMaps) and sees the same bytes past 4 GiB.
    const dev = await e.proc('adaptor');
    await a.kvPut('big', whole);
    const dw = await dev.kvGet('big');
    const dd = await dev.memoryStat(await dev.memoryDiminish(dw, 2 ** 32 + 4096, 4096));
    t.false(dd.mappable, 'a part, not shared whole');
    const maps = new RegionMaps(dev);
    t.is((await maps.view(dw, await dev.memoryStat(dw), 4096, false))?.[0], 0, 'the whole region maps');
    const far2 = maps.cached({ ...dd, mappable: true }, 4096, true);
    t.true(far2?.every((b) => b === 0x62), 'its bytes at 4 GiB + 4 KiB through the cached mapping');
    const { statSync } = await import('node:fs');
    t.true(statSync(`/proc/self/fd/${region.fd}`).blocks * 512 < 1 << 20, 'sparse: only touched pages');
  } finally {
    await e.close();
  }
});

test('the Controller forgets a region once its Memory is gone; memoryCreate passes the fd again (new key)', async (t) => {
  const e = await env();
  try {
    const a = await e.proc('a');
    const region = a.allocShared(8192);
    const first = await a.memoryCreate(region);
    const key = region.key;
    await a.capRevoke(first);
    await a.capDrop(first);
    const again = await a.memoryCreate(region, Perm.RW, 0, 4096);
    t.not(region.key, key, 'registered anew');
    t.is((await a.memoryStat(again)).regionKey, region.key);
    a.freeShared(region);
    t.is(await codeOf(a.memoryCreate(region)), 'EBADF');
  } finally {
    await e.close();
  }
});

test.serial('no fd leak: every region fd the Controller took is closed once the channel and its Memory are gone', async (t) => {
  const e = await env();
  try {
    const base = await e.proc('base'); // the Controller's own fds settle with a first channel
    await base.nullOp();
    const before = openFds();
    const a = await e.proc('leaky');
    for (let i = 0; i < 20; i++) {
      const { cid, region } = await a.memoryCreateShared(4096);
      await a.memoryCreate(region, Perm.READ, 0, 4096);
      if (i % 2) await a.memoryMap(cid).then((m) => import('node:fs').then((fs) => fs.closeSync(m.fd)));
    }
    t.true(openFds() >= before + 20);
    await a.close();
    e.procs.splice(e.procs.indexOf(a), 1);
    t.true(await until(() => openFds() === before, 5000), `${openFds()} fds open, ${before} before`);
  } finally {
    await e.close();
  }
});

/** MEMORY_CREATE of shared Memory, as libfractos sends it, with `fds` attached by the test. */
function forgedCreate(p: Process, id: number, fds: number[], size: number, regionSize = size, flags = MemCreateFlag.FD): Promise<string> {
  return codeOf(
    p.callWithFds(Op.MEMORY_CREATE, 32, (f) => {
      f.writeUInt8(Backing.SHARED, 16);
      f.writeUInt8(Perm.RW, 17);
      f.writeUInt8(flags, 18);
      f.writeUInt8(0, 19);
      f.writeUInt32LE(id, 20);
      writeU64(f, 0, 24);
      writeU64(f, size, 32);
      writeU64(f, regionSize, 40);
    }, fds),
  );
}

test.serial('registration refuses forged fds, each closed by the Controller: a plain file, a pipe, an unsealed memfd, one without F_SEAL_SHRINK, a read-only fd, a wrong size', async (t) => {
  const e = await env();
  const dir = tempDir('fractos-memfd-forged-');
  try {
    const p = await e.proc('forger');
    await p.nullOp();
    const before = openFds();
    const file = openSync(join(dir, 'plain'), 'w+');
    ftruncateSync(file, 4096);
    t.is(spawnSync('mkfifo', [join(dir, 'fifo')]).status, 0);
    const fifo = openSync(join(dir, 'fifo'), fsc.O_RDWR | fsc.O_NONBLOCK);
    const unsealed = createRegionFd(4096, 0);
    const growOnly = createRegionFd(4096, Seal.GROW | Seal.SEAL);
    const sealed = createRegionFd(4096);
    const readOnly = openSync(`/proc/self/fd/${sealed}`, 'r');
    t.is(await forgedCreate(p, 1, [file], 4096), 'EBADF', 'a plain file');
    t.is(await forgedCreate(p, 2, [fifo], 4096), 'EBADF', 'a pipe');
    t.is(await forgedCreate(p, 3, [unsealed], 4096), 'EINVAL', 'an unsealed memfd');
    t.is(ftruncateSync(unsealed, 0), undefined, 'which its owner could have truncated');
    t.is(await forgedCreate(p, 4, [growOnly], 4096), 'EINVAL', 'sealed, but not against shrinking');
    t.is(await forgedCreate(p, 5, [readOnly], 4096), 'EBADF', 'a read-only fd');
    t.is(await forgedCreate(p, 6, [sealed], 4096, 8192), 'EINVAL', 'a size that is not the memfd\'s');
    t.is(await forgedCreate(p, 7, [sealed], 4096), 'OK', 'the same memfd, told right');
    t.is(await forgedCreate(p, 7, [sealed], 4096), 'EEXIST', 'registered already');
    // An fd on a frame that takes none (NULL) is closed by the Controller's host.
    t.is(await codeOf(p.callWithFds(Op.NULL, 0, null, [sealed])), 'OK');
    for (const fd of [file, fifo, unsealed, growOnly, readOnly, sealed]) closeSync(fd);
    t.true(await until(() => openFds() === before + 1, 2000), `${openFds()} fds, ${before} + the registered region before: ${fdList()}`);
    // Saying an fd is attached and sending none: EPROTO, the channel closes (only it).
    const liar = await e.proc('liar');
    t.is(await forgedCreate(liar, 1, [], 4096), 'EPROTO');
    t.true(await until(() => liar.closed));
    await p.nullOp();
  } finally {
    await e.close();
    removeTempDir(dir);
  }
});

test('bounded: at most 1024 shared regions registered per Process (ENOSPC), another Process unaffected; freed ones make room', async (t) => {
  const e = await env();
  try {
    const hog = await e.proc('hog');
    const regions = [];
    for (let i = 0; i < 1024; i++) {
      const r = hog.allocShared(4096);
      regions.push({ r, cid: await hog.memoryCreate(r) });
    }
    const extra = hog.allocShared(4096);
    t.is(await codeOf(hog.memoryCreate(extra)), 'ENOSPC');
    const other = await e.proc('other');
    t.is(await codeOf(other.memoryCreateShared(4096)), 'OK');
    // Memory gone (revoked and dropped): its region is forgotten, a new one registers.
    await hog.capRevoke(regions[0]!.cid);
    await hog.capDrop(regions[0]!.cid);
    hog.freeShared(regions[0]!.r);
    t.is(await codeOf(hog.memoryCreate(extra)), 'OK');
    for (const { r } of regions) hog.freeShared(r);
  } finally {
    await e.close();
  }
});

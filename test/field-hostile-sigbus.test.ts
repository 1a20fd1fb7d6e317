/**
 * A hostile Process truncates its own shared region (ftruncate of its /dev/shm object)
 * after registering Memory on it (issue #8, "Must not exist": a truncated region killing
 * the Controller with SIGBUS). The Controller runs as its own OS process here, so that a
 * SIGBUS kills it and not the test: every copy from or to the truncated region answers
 * EFAULT naming the region, on this Controller and across a peer link, and the Controller,
 * its other Processes and its peer link keep working. The block-device adaptor, which maps
 * client regions for io_uring, gets -EFAULT from the kernel there (no signal) and answers EIO.
 */
import test from 'ava';
import { ftruncateSync, openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { connect, FractosError, type Process, type SharedRegion } from '../libfractos/index.js';
import { Perm } from '../libfractos/protocol.js';
import { clusterSpecs, spawnFractos, startController, tempDir, type Spawned } from './helpers/spawn.js';
import { Controller } from '../controller/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, IoPort, volumeCreate } from '../blockdev-adaptor/client.js';
import { deviceDir } from './helpers/devices.js';

const SIZE = 64 * 1024;

/** Truncate a region the way a hostile owner can: open its /dev/shm object by name, ftruncate. */
function truncateRegion(region: SharedRegion, size: number): void {
  // shm_open('/NAME') is the file /dev/shm/NAME (glibc).
  const fd = openSync(`/dev/shm${region.name}`, 'r+');
  try {
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}

/** The code and message of the FractosError `p` rejects with ('no error' when it resolves). */
async function failure(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (err) {
    if (err instanceof FractosError) return { code: err.code, message: err.message };
    return { code: `not a FractosError: ${String(err)}`, message: '' };
  }
  return { code: 'no error', message: '' };
}

function alive(c: Spawned): boolean {
  return c.child.exitCode === null && c.child.signalCode === null;
}

/** The victim's own copies work: a fresh pair of shared Memory, one copy, bytes checked. */
async function victimStillCopies(victim: Process, fill: number): Promise<boolean> {
  const a = await victim.memoryCreateShared(4096);
  const b = await victim.memoryCreateShared(4096);
  a.region.bytes.fill(fill);
  await victim.memoryCopy(a.cid, b.cid);
  return b.region.bytes.every((x) => x === fill);
}

test('a region truncated by its owner: memory_copy from and to it is EFAULT naming it; the Controller lives, a re-registration is ERANGE', async (t) => {
  const dir = tempDir('fractos-sigbus-');
  const sock = `unix:${join(dir, 'c.sock')}`;
  const c = await spawnFractos(['controller', '--id', '1', '--state-dir', join(dir, 'state'), '--listen', sock], /^controller \d+ epoch \d+ listening/);
  const hostile = await connect(sock, { name: 'hostile' });
  const victim = await connect(sock, { name: 'victim' });
  try {
    const h = await hostile.memoryCreateShared(SIZE);
    h.region.bytes.fill(0x5a);
    await hostile.kvPut('sigbus-hostile-mem', h.cid);
    const hcid = await victim.kvGet('sigbus-hostile-mem');
    const v = await victim.memoryCreateShared(SIZE);
    await victim.memoryCopy(hcid, v.cid);
    t.true(v.region.bytes.every((x) => x === 0x5a), 'copies work before the truncation');

    truncateRegion(h.region, 0); // from here on, only the Controller touches h.region's pages
    const from = await failure(victim.memoryCopy(hcid, v.cid));
    t.is(from.code, 'EFAULT', from.message);
    t.true(from.message.includes(h.region.name), from.message);
    t.true(alive(c), `the Controller survived a copy from the truncated region:\n${c.output()}`);
    const to = await failure(victim.memoryCopy(v.cid, hcid));
    t.is(to.code, 'EFAULT', to.message);
    t.true(alive(c), `the Controller survived a copy to the truncated region:\n${c.output()}`);
    // a view into it (diminished) and a retry fail the same way
    const part = await victim.memoryDiminish(hcid, 4096, 4096);
    t.is((await failure(victim.memoryCopy(part, v.cid))).code, 'EFAULT');

    // The rest of the Controller works, for both Processes.
    await victim.nullOp();
    t.true(await victimStillCopies(victim, 0x33));
    await hostile.nullOp();
    // The mapping was forgotten: registering the region again maps it anew and checks its size.
    t.is((await failure(hostile.memoryCreate(h.region, Perm.RW, 0, SIZE))).code, 'ERANGE');
    // Grown back, it is usable again (the bytes are the owner's business: zeros now).
    truncateRegion(h.region, SIZE);
    await victim.memoryCopy(hcid, v.cid);
    t.true(v.region.bytes.every((x) => x === 0), 'the regrown region reads as zeros');
    t.true(alive(c));
  } finally {
    await hostile.close().catch(() => {});
    await victim.close().catch(() => {});
    await c.stop();
  }
});

test('across a peer link: a truncated source or destination is EFAULT, both Controllers and the link live', async (t) => {
  const specs = await clusterSpecs(2);
  const c1 = await startController(specs[0]!, specs);
  const c2 = await startController(specs[1]!, specs);
  const hostile = await connect(specs[0]!.unix, { name: 'hostile' });
  const victim = await connect(specs[1]!.unix, { name: 'victim' });
  try {
    const h = await hostile.memoryCreateShared(SIZE);
    h.region.bytes.fill(0x5a);
    await hostile.kvPut('sigbus-remote-mem', h.cid);
    const hcid = await victim.kvWait('sigbus-remote-mem');
    const v = await victim.memoryCreateShared(SIZE);
    await victim.memoryCopy(hcid, v.cid);
    t.true(v.region.bytes.every((x) => x === 0x5a), 'a remote copy works before the truncation');

    truncateRegion(h.region, 4096); // the first page stays: the copy faults part-way
    const from = await failure(victim.memoryCopy(hcid, v.cid)); // runs at c1, streams to c2
    t.is(from.code, 'EFAULT', from.message);
    t.true(alive(c1), `c1 survived a remote copy from the truncated region:\n${c1.output()}`);
    const to = await failure(victim.memoryCopy(v.cid, hcid)); // runs at c2, P_MEM_WRITE to c1
    t.is(to.code, 'EFAULT', to.message);
    t.true(alive(c1), `c1 survived a remote copy to the truncated region:\n${c1.output()}`);
    t.true(alive(c2));

    // The peer link still carries copies: a healthy region of the hostile's, both ways.
    const ok = await hostile.memoryCreateShared(SIZE);
    ok.region.bytes.fill(0x11);
    await hostile.kvPut('sigbus-remote-ok', ok.cid);
    const okcid = await victim.kvWait('sigbus-remote-ok');
    await victim.memoryCopy(okcid, v.cid);
    t.true(v.region.bytes.every((x) => x === 0x11));
    v.region.bytes.fill(0x22);
    await victim.memoryCopy(v.cid, okcid);
    t.true(ok.region.bytes.every((x) => x === 0x22));
    t.true(await victimStillCopies(victim, 0x44));
  } finally {
    await hostile.close().catch(() => {});
    await victim.close().catch(() => {});
    await c1.stop();
    await c2.stop();
  }
});

const devices = await deviceDir('fractos-fhs', 'field-hostile-sigbus.test');

devices.vtest('the blockdev\'s direct I/O into a truncated client region fails with EIO (io_uring answers -EFAULT, no SIGBUS); the blockdev keeps serving', async (t) => {
  const dir = tempDir('fractos-fhs-');
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'state') });
  let svc: BlockdevService | undefined;
  let p: Process | undefined;
  try {
    svc = await BlockdevService.start({ device: devices.devFile(16 << 20), controller: addr, format: true, queueDepth: 8 });
    p = await connect(addr, { name: 'client' });
    const v = await volumeCreate(p, (await adminClaim(p, 'blockdev', 5000)).create, 1 << 20);
    const port = new IoPort(p);
    const { cid, region } = await p.memoryCreateShared(SIZE);
    region.bytes.fill(0x5a);
    const direct = svc.counts.direct;
    t.is(await port.ioAsync(v.write, true, 0, SIZE, cid), SIZE, 'a first write maps the region in the blockdev');
    t.is(svc.counts.direct, direct + 1, 'straight from the client region (io_uring)');

    truncateRegion(region, 0);
    // A kernel -EFAULT is EIO by the errno table (EFAULT is a failed served owner), with the res.
    for (const write of [true, false]) {
      const e = await failure(port.ioAsync(write ? v.write : v.read, write, 0, SIZE, cid));
      t.is(e.code, 'EIO', e.message);
      t.regex(e.message, /res -14\b/);
    }
    t.is(svc.counts.direct, direct + 3, 'both went to the device from the stale mapping');

    // The blockdev serves on, and its volume holds the first write's bytes.
    const fresh = await p.memoryCreateShared(SIZE);
    t.is(await port.ioAsync(v.read, false, 0, SIZE, fresh.cid), SIZE);
    t.true(fresh.region.bytes.every((x) => x === 0x5a));
  } finally {
    await p?.close();
    await svc?.close();
    await c.close();
  }
});

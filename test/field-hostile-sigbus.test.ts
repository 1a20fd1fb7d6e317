/**
 * A hostile Process tries to truncate its own shared region after registering Memory on it
 * (issue #8, "Must not exist": a truncated region killing the Controller with SIGBUS). Regions
 * are memfds sealed against shrinking (F_SEAL_SHRINK, checked by the Controller before it maps
 * one; an unsealed one is refused: test/memory-memfd.test.ts), so the ftruncate fails with
 * EPERM, for the owner too, and copies from and to the region keep working, on this Controller
 * and across a peer link. The Controllers run as their own OS processes, so that a SIGBUS
 * would kill them and not the test. The SIGBUS guard stays as a second line (a hugetlb memfd
 * whose pool runs dry faults too): a guarded copy from a truncated unsealed mapping answers
 * a fault code instead of killing the process.
 */
import test from 'ava';
import { closeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { connect, Perm, type Process, type SharedRegion } from '../libfractos/index.js';
import { clusterSpecs, spawnFractos, startController, tempDir, type Spawned } from './helpers/spawn.js';
import { Controller } from '../controller/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, IoPort, volumeCreate } from '../blockdev-adaptor/client.js';
import { deviceDir } from './helpers/devices.js';
import { CopyFault, copyGuarded, createRegionFd, fdSeals, mapFd, REGION_SEALS } from '../native/shm/index.js';

const SIZE = 64 * 1024;

/** Try to truncate a region the way a hostile owner can (its own fd): the error code, or 'OK'. */
function truncateRegion(region: SharedRegion, size: number): string {
  try {
    ftruncateSync(region.fd, size);
    return 'OK';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  }
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

test('a sealed region cannot be truncated by its owner (EPERM, shrink and grow); copies from and to it keep working, the Controller lives', async (t) => {
  const dir = tempDir('fractos-sigbus-');
  const sock = `unix:${join(dir, 'c.sock')}`;
  const c = await spawnFractos(['controller', '--id', '1', '--state-dir', join(dir, 'state'), '--listen', sock], /^controller \d+ epoch \d+ listening/);
  const hostile = await connect(sock, { name: 'hostile' });
  const victim = await connect(sock, { name: 'victim' });
  try {
    const h = await hostile.memoryCreateShared(SIZE);
    t.is(fdSeals(h.region.fd), REGION_SEALS);
    h.region.bytes.fill(0x5a);
    await hostile.kvPut('sigbus-hostile-mem', h.cid);
    const hcid = await victim.kvGet('sigbus-hostile-mem');
    const v = await victim.memoryCreateShared(SIZE);
    await victim.memoryCopy(hcid, v.cid);
    t.true(v.region.bytes.every((x) => x === 0x5a), 'copies work before the attempt');

    t.is(truncateRegion(h.region, 0), 'EPERM');
    t.is(truncateRegion(h.region, 4096), 'EPERM');
    t.is(truncateRegion(h.region, 2 * SIZE), 'EPERM', 'no growing either');
    v.region.bytes.fill(0);
    await victim.memoryCopy(hcid, v.cid);
    t.true(v.region.bytes.every((x) => x === 0x5a), 'a copy from the region after the attempt');
    v.region.bytes.fill(0x33);
    await victim.memoryCopy(v.cid, hcid);
    t.true(h.region.bytes.every((x) => x === 0x33), 'a copy to the region after the attempt');
    t.true(alive(c), c.output());
    t.true(await victimStillCopies(victim, 0x44));
    await hostile.nullOp();
  } finally {
    await hostile.close().catch(() => {});
    await victim.close().catch(() => {});
    await c.stop();
  }
});

test('across a peer link: after a refused truncation, copies from and to the region stream both ways, both Controllers live', async (t) => {
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
    t.is(truncateRegion(h.region, 4096), 'EPERM');
    await victim.memoryCopy(hcid, v.cid); // runs at c1, streams to c2
    t.true(v.region.bytes.every((x) => x === 0x5a));
    v.region.bytes.fill(0x22);
    await victim.memoryCopy(v.cid, hcid); // runs at c2, P_MEM_WRITE to c1
    t.true(h.region.bytes.every((x) => x === 0x22));
    t.true(alive(c1) && alive(c2));
    t.true(await victimStillCopies(victim, 0x44));
  } finally {
    await hostile.close().catch(() => {});
    await victim.close().catch(() => {});
    await c1.stop();
    await c2.stop();
  }
});

test('the SIGBUS guard (second line): a guarded copy from or to a mapping whose unsealed file shrank answers the operand, the process lives', (t) => {
  const fd = createRegionFd(2 * 4096, 0); // no seals: only the test can do this to itself
  try {
    const mapped = new Uint8Array(mapFd(fd, 2 * 4096, true).buffer);
    mapped.fill(7);
    const mine = new Uint8Array(2 * 4096);
    t.is(copyGuarded(mine, mapped), CopyFault.NONE);
    ftruncateSync(fd, 4096); // the second page is gone: access there is SIGBUS
    t.is(copyGuarded(mine, mapped), CopyFault.SRC);
    t.is(copyGuarded(mapped, mine), CopyFault.DST);
    t.is(copyGuarded(mine.subarray(0, 4096), mapped.subarray(0, 4096)), CopyFault.NONE, 'the first page is still there');
  } finally {
    closeSync(fd);
  }
});

const devices = await deviceDir('fractos-fhs', 'field-hostile-sigbus.test');

devices.vtest('the blockdev maps a client region for direct I/O; the client\'s truncation attempt is refused and the mapping keeps working', async (t) => {
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

    t.is(truncateRegion(region, 0), 'EPERM');
    region.bytes.fill(0);
    t.is(await port.ioAsync(v.read, false, 0, SIZE, cid), SIZE);
    t.true(region.bytes.every((x) => x === 0x5a), 'read back into the same region through the cached mapping');
    t.is(svc.counts.direct, direct + 2);
    t.is(svc.regionMaps.mapped, 1, 'one memory_map for both');

    // A part of a region its owner did not share whole: no fd for the blockdev (it would
    // expose the rest), so the bounce path (memory_copy); shared whole: direct.
    const bounced = svc.counts.bounce;
    const two = await p.memoryCreateShared(2 * SIZE);
    const half = await p.memoryDiminish(two.cid, SIZE, SIZE);
    t.is(await port.ioAsync(v.read, false, 0, SIZE, half), SIZE);
    t.is(svc.counts.bounce, bounced + 1);
    t.true(two.region.view(SIZE, SIZE).every((x) => x === 0x5a));
    t.is(svc.regionMaps.refused, 0, 'not even asked: the descriptor said it is not mappable');
    const slots = await p.memoryCreateShared(2 * SIZE, Perm.RW, { shareWhole: true });
    t.is(await port.ioAsync(v.read, false, 0, SIZE, await p.memoryDiminish(slots.cid, SIZE, SIZE)), SIZE);
    t.is(svc.counts.direct, direct + 3);
    t.true(slots.region.view(SIZE, SIZE).every((x) => x === 0x5a));
  } finally {
    await p?.close();
    await svc?.close();
    await c.close();
  }
});

/**
 * Issue #7 item 12 (service side): a client whose served Memory never answers a memory_copy
 * cannot starve the FS's staging slots or the blockdev's bounce slots: each grant (open
 * handle, volume) holds a bounded share (FairSlots), so another client's I/O completes while
 * the stalled copies wait; when a copy fails (any code), its slot is released and the
 * client's onError carries that code.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, Perm, type Process } from '../libfractos/index.js';
import { BlockdevService, BOUNCE_PER_VOLUME } from '../blockdev-adaptor/service.js';
import { adminClaim, IoPort, volumeCreate } from '../blockdev-adaptor/client.js';
import { FairSlots } from '../blockdev-adaptor/fair-slots.js';
import { FsService, STAGE_PER_HANDLE } from '../fs-service/service.js';
import { FsClient } from '../fs-service/client.js';
import { deviceDir } from './helpers/devices.js';
import { tempDir } from './helpers/spawn.js';
import { codeOf, expectCode as code } from './helpers/errors.js';
import { fsVictimAndEvil, stalledMemory, waitFor, within } from './helpers/stall.js';
import test from 'ava';

const devices = await deviceDir('fractos-ffair', 'field-storage-fair.test');
const { vtest } = devices;

/** A served Memory of `size` bytes whose reads and writes never complete, published under `name` for another Process. */
async function stalledBuffer(p: Process, size: number, name: string): Promise<number> {
  const cid = await stalledMemory(p, size);
  await p.kvPut(name, cid);
  return cid;
}

async function controller(): Promise<{ c: Controller; addr: string }> {
  const d = tempDir();
  const addr = `unix:${join(d, 'c.sock')}`;
  return { c: await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') }), addr };
}

test('FairSlots: a key holds at most perKey; waiters are served round-robin across keys', (t) => {
  const s = new FairSlots<string>(4, 2);
  const got: string[] = [];
  const held: [string, number][] = [];
  const take = (k: string): void => s.acquire(k, (slot) => { got.push(k); held.push([k, slot]); });
  for (let i = 0; i < 6; i++) take('a');
  t.is(s.heldBy('a'), 2);
  t.is(s.free, 2);
  take('b');
  take('b');
  take('b');
  take('c');
  t.deepEqual(got, ['a', 'a', 'b', 'b']);
  t.is(s.waiting, 6);
  // Freed slots go round-robin (queue order a, b, c) to keys below their cap: a is at its
  // cap, so b, then c, then a once it released one.
  const rel = (k: string): void => {
    const i = held.findIndex(([x]) => x === k);
    s.release(k, held.splice(i, 1)[0]![1]);
  };
  rel('b');
  rel('a');
  rel('b');
  t.deepEqual(got.slice(4), ['b', 'c', 'a']);
  t.throws(() => new FairSlots(4, 5), { instanceOf: RangeError });
  // A key's queue is bounded: EAGAIN beyond maxQueued, other keys unaffected.
  const q = new FairSlots<string>(1, 1, 2);
  q.acquire('x', () => {});
  q.acquire('x', () => {});
  q.acquire('x', () => {});
  t.throws(() => q.acquire('x', () => {}), { message: /^EAGAIN/ });
  t.notThrows(() => q.acquire('y', () => {}));
});

vtest('FS: 20 mediated writes from a served buffer that never answers leave slots for another client\'s read', async (t) => {
  const { c, addr } = await controller();
  const bd = await BlockdevService.start({ device: devices.devFile(64 << 20), controller: addr, format: true, queueDepth: 16 });
  const fs = await FsService.start({ controller: addr });
  const procs: Process[] = [];
  try {
    const { victim, evil, vport, data, vbuf, vf } = await fsVictimAndEvil(addr);
    procs.push(victim, evil);

    // The hostile client: 20 writes of 64 KiB from a served buffer whose reads never answer.
    const efs = await FsClient.connect(evil);
    const eport = new IoPort(evil);
    const stalled = await stalledBuffer(evil, 64 << 10, 'evil.stalled');
    const ef = await efs.open('/hostile', { create: true });
    const hostile = Array.from({ length: 20 }, (_, i) => eport.ioAsync(ef.write, true, i * (64 << 10), 64 << 10, stalled).catch((e: unknown) => e));
    await waitFor(() => fs.stageSlots.heldBy(ef.handle) === STAGE_PER_HANDLE && fs.stageSlots.waiting === 20 - STAGE_PER_HANDLE, 10_000, 'the hostile writes to hold their share');

    // Another client's read of another file completes meanwhile (and so does a write).
    vbuf.region.bytes.fill(0);
    t.is(await within(vport.ioAsync(vf.read, false, 0, 64 << 10, vbuf.cid), 10_000, 'the victim\'s read'), 64 << 10);
    t.true(Buffer.from(vbuf.region.bytes).equals(data));
    t.is(await within(vport.ioAsync(vf.write, true, 4096, 4096, vbuf.cid), 10_000, 'the victim\'s write'), 4096);
    t.is(fs.stageSlots.heldBy(ef.handle), STAGE_PER_HANDLE);

    // A served buffer that fails: the slot comes back and onError carries the code (not EIO).
    const failing = await victim.memoryCreateServed(4096, Perm.RW, { read: () => { throw new Error('device gone'); }, write: () => { throw new Error('device gone'); } });
    const free = fs.stageSlots.free;
    const failCode = await codeOf(within(vport.ioAsync(vf.write, true, 0, 4096, failing), 10_000, 'the failing write'));
    t.is(failCode, 'EFAULT');
    t.is(fs.stageSlots.free, free);

    // The hostile client goes away: its stalled copies fail and every slot comes back.
    await evil.close();
    await waitFor(() => fs.stageSlots.free === 16 && fs.stageSlots.waiting === 0, 10_000, 'the hostile slots to be released');
    t.is(hostile.length, 20);
  } finally {
    for (const p of procs) await p.close().catch(() => {});
    await fs.close();
    await bd.close();
    await c.close();
  }
});

vtest('blockdev: 12 bounce-path writes stalled on a served buffer leave bounce slots for another volume; failures carry their code', async (t) => {
  const { c, addr } = await controller();
  const bd = await BlockdevService.start({ device: devices.devFile(64 << 20), controller: addr, format: true, queueDepth: 16 });
  const procs: Process[] = [];
  try {
    const p = await connect(addr, { name: 'owner' });
    const evil = await connect(addr, { name: 'evil' });
    procs.push(p, evil);
    const admin = await adminClaim(p, 'blockdev', 5000);
    const a = await volumeCreate(p, admin.create, 32 << 20);
    const b = await volumeCreate(p, admin.create, 4 << 20);
    const port = new IoPort(p);
    await stalledBuffer(evil, 1 << 20, 'evil.stalled');
    const stalled = await p.kvGet('evil.stalled');
    const writes = Array.from({ length: 12 }, (_, i) => codeOf(port.ioAsync(a.write, true, i * (1 << 20), 1 << 20, stalled)));
    await waitFor(() => bd.bounceSlots.heldBy(a.volume) === BOUNCE_PER_VOLUME && bd.bounceSlots.waiting === 12 - BOUNCE_PER_VOLUME, 10_000, 'the stalled writes to hold their share');

    // Another volume's bounce-path I/O (an unaligned view: not mappable for O_DIRECT) completes.
    const { cid, region } = await p.memoryCreateShared((1 << 20) + 8192);
    const odd = await p.memoryDiminish(cid, 100, 1 << 20);
    const data = randomBytes(1 << 20);
    region.bytes.set(data, 100);
    const bounced = bd.counts.bounce;
    t.is(await within(port.ioAsync(b.write, true, 0, 1 << 20, odd), 10_000, 'the other volume\'s write'), 1 << 20);
    region.bytes.fill(0);
    t.is(await within(port.ioAsync(b.read, false, 0, 1 << 20, odd), 10_000, 'the other volume\'s read'), 1 << 20);
    t.true(Buffer.from(region.bytes.subarray(100, 100 + (1 << 20))).equals(data));
    t.is(bd.counts.bounce, bounced + 2);

    // The buffer's owner goes away: every stalled copy fails, its code reaches onError, the slots come back.
    await evil.close();
    const codes = await within(Promise.all(writes), 10_000, 'the stalled writes\' errors');
    // The copies in flight fail with EFAULT (owner gone), the queued ones find the buffer revoked.
    t.true(codes.filter((x) => x === 'EFAULT').length >= BOUNCE_PER_VOLUME, codes.join(','));
    t.true(codes.every((x) => x === 'EFAULT' || x === 'EREVOKED'), codes.join(','));
    t.is(bd.bounceSlots.free, 8);
    await code(t, port.ioAsync(a.write, true, 0, 4096, stalled), 'EREVOKED');
    t.is(bd.bounceSlots.free, 8);
  } finally {
    for (const p of procs) await p.close().catch(() => {});
    await bd.close();
    await c.close();
  }
});

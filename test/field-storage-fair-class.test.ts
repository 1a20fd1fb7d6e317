/**
 * Review of issue #7, gap 2: staging and bounce fairness was per grant, not per client, so
 * one client with several grants (4 opens of one file, 4 DAX volumes) and stalled served
 * buffers held every slot and another client's I/O waited the full served timeout. Copies
 * are now classed by the client buffer (`mayStall`: served or remote Memory may stall,
 * shared Memory on this host does not) and may-stall copies hold at most half the pool, so
 * a copy with shared Memory completes while the stall is still held.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, type Process } from '../libfractos/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, IoPort, volumeCreate } from '../blockdev-adaptor/client.js';
import { FairSlots, mayStall } from '../blockdev-adaptor/fair-slots.js';
import { FsService } from '../fs-service/service.js';
import { FsClient } from '../fs-service/client.js';
import { deviceDir } from './helpers/devices.js';
import { tempDir } from './helpers/spawn.js';
import { fsVictimAndEvil, stalledMemory, waitFor, within } from './helpers/stall.js';
import test from 'ava';

const devices = await deviceDir('fractos-ffcls', 'field-storage-fair-class.test');
const { vtest } = devices;

/** A Controller whose served timeout (60 s) outlasts every wait of these tests: a stall stays held until its owner goes. */
async function controller(): Promise<{ c: Controller; addr: string }> {
  const d = tempDir();
  const addr = `unix:${join(d, 'c.sock')}`;
  return { c: await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state'), servedTimeoutMs: 60_000 }), addr };
}

/** Tracks how many of `ps` have settled. */
function settledCount(ps: Promise<unknown>[]): () => number {
  let n = 0;
  for (const p of ps) p.then(() => n++, () => n++);
  return () => n;
}

test('FairSlots: may-stall copies hold at most maxStalling slots; prompt copies keep the rest, per-key caps per class', (t) => {
  const s = new FairSlots<string>(8, 2, 1024, 4);
  const got: string[] = [];
  const held: [string, number][] = [];
  const take = (k: string, stall: boolean): void => s.acquire(k, (slot) => { got.push(`${k}${stall ? '!' : ''}`); held.push([k, slot]); }, stall);
  // Four keys of one stalling client, three may-stall copies each: 4 slots, not 8.
  for (const k of ['a', 'b', 'c', 'd']) for (let i = 0; i < 3; i++) take(k, true);
  t.is(s.stalling, 4);
  t.is(s.free, 4);
  t.is(s.waiting, 8);
  t.deepEqual(got, ['a!', 'a!', 'b!', 'b!']);
  // Prompt copies of any key (even a stalling one) still find slots, up to perKey per key.
  take('v', false);
  take('v', false);
  take('v', false);
  take('a', false);
  t.deepEqual(got.slice(4), ['v', 'v', 'a']);
  t.is(s.heldBy('v', false), 2);
  t.is(s.heldBy('a'), 3);
  t.is(s.heldBy('a', true), 2);
  // A prompt slot released goes to the prompt waiter, not to a may-stall one (class full).
  const rel = (k: string): void => {
    const i = held.findIndex(([x]) => x === k);
    s.release(k, held.splice(i, 1)[0]![1]);
  };
  rel('v');
  t.deepEqual(got.slice(7), ['v']);
  t.is(s.stalling, 4);
  // A may-stall slot released goes to the next may-stall waiter in round-robin order: a's
  // third (queued first), then, a having none left and b being at its cap, c.
  rel('a');
  t.is(s.stalling, 4);
  t.is(got[8], 'a!');
  rel('a');
  t.is(got[9], 'c!');
  t.is(s.stalling, 4);
  t.throws(() => new FairSlots(4, 2, 1, 5), { instanceOf: RangeError });
  t.throws(() => new FairSlots(4, 2, 1, 0), { instanceOf: RangeError });
  // The class of a copy: served or remote may stall; local shared does not.
  t.false(mayStall({ local: true, backing: 'shared' }));
  t.true(mayStall({ local: true, backing: 'served' }));
  t.true(mayStall({ local: false, backing: 'shared' }));
  t.true(mayStall({ local: false, backing: 'served' }));
});

vtest('FS: 4 opens x 5 stalled served-buffer writes of one client; another client\'s read completes while they still stall', async (t) => {
  const { c, addr } = await controller();
  const bd = await BlockdevService.start({ device: devices.devFile(64 << 20), controller: addr, format: true, queueDepth: 16 });
  const fs = await FsService.start({ controller: addr });
  const procs: Process[] = [];
  try {
    const { victim, evil, vport, data, vbuf, vf } = await fsVictimAndEvil(addr);
    procs.push(victim, evil);

    // The hostile client: one file opened 4 times, 5 writes of 64 KiB per open from a served buffer that never answers.
    const efs = await FsClient.connect(evil);
    const eport = new IoPort(evil);
    const stalled = await stalledMemory(evil, 64 << 10);
    const opens: Awaited<ReturnType<FsClient['open']>>[] = [];
    for (let i = 0; i < 4; i++) opens.push(await efs.open('/hostile', { create: true }));
    const hostile = opens.flatMap((f, h) => Array.from({ length: 5 }, (_, i) => eport.ioAsync(f.write, true, (h * 5 + i) * (64 << 10), 64 << 10, stalled)));
    const settled = settledCount(hostile);
    const slots = fs.stageSlots;
    const hostileHeld = (): number => opens.reduce((n, f) => n + slots.heldBy(f.handle), 0);
    await waitFor(() => hostileHeld() + slots.waiting === 20 && slots.waiting > 0, 10_000, 'the hostile writes to take their slots');

    // The victim's read (shared Memory) completes while every hostile write still stalls.
    vbuf.region.bytes.fill(0);
    t.is(await within(vport.ioAsync(vf.read, false, 0, 64 << 10, vbuf.cid), 20_000, 'the victim\'s read'), 64 << 10);
    t.is(settled(), 0);
    t.true(Buffer.from(vbuf.region.bytes).equals(data));
    t.is(await within(vport.ioAsync(vf.write, true, 4096, 4096, vbuf.cid), 20_000, 'the victim\'s write'), 4096);
    t.is(settled(), 0);
    t.is(hostileHeld(), slots.maxStalling);
    t.true(slots.maxStalling <= slots.size / 2);

    // The hostile client goes away: its stalled copies fail and every slot comes back.
    await evil.close();
    await waitFor(() => slots.free === slots.size && slots.waiting === 0, 10_000, 'the hostile slots to be released');
  } finally {
    for (const p of procs) await p.close().catch(() => {});
    await fs.close();
    await bd.close();
    await c.close();
  }
});

vtest('blockdev: stalled bounce writes on 4 volumes of one client; another volume\'s bounce I/O with shared Memory completes while they still stall', async (t) => {
  const { c, addr } = await controller();
  const bd = await BlockdevService.start({ device: devices.devFile(64 << 20), controller: addr, format: true, queueDepth: 16 });
  const procs: Process[] = [];
  try {
    const p = await connect(addr, { name: 'owner' });
    procs.push(p);
    const admin = await adminClaim(p, 'blockdev', 5000);
    // What the FS hands a client for 4 DAX opens: 4 volumes.
    const vols: Awaited<ReturnType<typeof volumeCreate>>[] = [];
    for (let i = 0; i < 4; i++) vols.push(await volumeCreate(p, admin.create, 8 << 20));
    const b = await volumeCreate(p, admin.create, 4 << 20);
    const port = new IoPort(p);
    const stalled = await stalledMemory(p, 1 << 20);
    const writes = vols.flatMap((v) => Array.from({ length: 3 }, (_, i) => port.ioAsync(v.write, true, i * (1 << 20), 1 << 20, stalled)));
    const settled = settledCount(writes);
    const slots = bd.bounceSlots;
    const stalledHeld = (): number => vols.reduce((n, v) => n + slots.heldBy(v.volume), 0);
    await waitFor(() => stalledHeld() + slots.waiting === 12 && slots.waiting > 0, 10_000, 'the stalled writes to take their slots');

    // Another volume's bounce-path I/O (an unaligned view of shared Memory: not mappable for O_DIRECT) completes.
    const { cid, region } = await p.memoryCreateShared((1 << 20) + 8192);
    const odd = await p.memoryDiminish(cid, 100, 1 << 20);
    const data = randomBytes(1 << 20);
    region.bytes.set(data, 100);
    const bounced = bd.counts.bounce;
    t.is(await within(port.ioAsync(b.write, true, 0, 1 << 20, odd), 20_000, 'the other volume\'s write'), 1 << 20);
    t.is(settled(), 0);
    region.bytes.fill(0);
    t.is(await within(port.ioAsync(b.read, false, 0, 1 << 20, odd), 20_000, 'the other volume\'s read'), 1 << 20);
    t.is(settled(), 0);
    t.true(Buffer.from(region.bytes.subarray(100, 100 + (1 << 20))).equals(data));
    t.is(bd.counts.bounce, bounced + 2);
    t.is(stalledHeld(), slots.maxStalling);
  } finally {
    for (const p of procs) await p.close().catch(() => {});
    await bd.close();
    await c.close();
  }
});

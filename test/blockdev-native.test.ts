/**
 * The blockdev's native I/O loop (native/uring/src/ioloop.cc, docs/blockdev-backend.md "The
 * native I/O loop"): once a client's region is mapped, plain reads and writes are served
 * without JS (its counters prove it); every hostile or unusual request still gets the JS
 * path's typed error, and the loop never touches bytes outside the buffer it was given, nor
 * outside the volume; I/O errors of native ops reach onError with the JS path's code; a client
 * that leaves with I/O in flight affects nobody; the frame hook refuses what is not a hook;
 * with completion polling on (FRACTOS_IOLOOP_SPIN_US) the same bytes come back.
 */
import { randomBytes } from 'node:crypto';
import { truncateSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, FractosError, Perm, type Process } from '../libfractos/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, IoPort, volumeCreate } from '../blockdev-adaptor/client.js';
import { WriteFlags } from '../blockdev-adaptor/schema.js';
import { deviceDir } from './helpers/devices.js';
import { tempDir } from './helpers/spawn.js';
import { expectCode as code } from './helpers/errors.js';

const devices = await deviceDir('fractos-bdn', 'blockdev-native.test');
const { vtest } = devices;

interface Env {
  c: Controller;
  addr: string;
  svc: BlockdevService;
  procs: Process[];
}

async function env(device: string, ioloopSpinUs?: number): Promise<Env> {
  const d = tempDir();
  const addr = `unix:${join(d, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') });
  // the loop reads FRACTOS_IOLOOP_SPIN_US when it is made (at start)
  const was = process.env.FRACTOS_IOLOOP_SPIN_US;
  if (ioloopSpinUs !== undefined) process.env.FRACTOS_IOLOOP_SPIN_US = String(ioloopSpinUs);
  let svc: BlockdevService;
  try {
    svc = await BlockdevService.start({ device, controller: addr, format: true, queueDepth: 32, native: true });
  } finally {
    if (ioloopSpinUs !== undefined) {
      if (was === undefined) delete process.env.FRACTOS_IOLOOP_SPIN_US;
      else process.env.FRACTOS_IOLOOP_SPIN_US = was;
    }
  }
  return { c, addr, svc, procs: [] };
}

async function teardown(e: Env): Promise<void> {
  for (const p of e.procs) await p.close();
  await e.svc.close();
  await e.c.close();
}

async function client(e: Env, name = 'client'): Promise<Process> {
  const p = await connect(e.addr, { name });
  e.procs.push(p);
  return p;
}

vtest('native loop: hostile buffers get the JS path\'s errors; nothing outside the buffer or the volume is touched', async (t) => {
  const e = await env(devices.devFile(16 << 20));
  try {
    const p = await client(e);
    const v = await volumeCreate(p, (await adminClaim(p, 'blockdev', 5000)).create, 1 << 20);
    const port = new IoPort(p);
    const { cid, region } = await p.memoryCreateShared(64 << 10, Perm.RW, { shareWhole: true });
    const buf = await p.memoryDiminish(cid, 8192, 8192); // [8 KiB, 16 KiB) of the region
    const data = randomBytes(8192);
    region.bytes.set(data, 8192);
    // First use maps the region (JS), the next ones are native.
    t.is(await port.ioAsync(v.write, true, 0, 8192, buf), 8192);
    t.is(await port.ioAsync(v.write, true, 8192, 8192, buf), 8192);
    const n0 = e.svc.nativeStats!;
    t.true(n0.attached);
    t.is(n0.writes, 1, 'the second write was native');
    region.bytes.fill(0xaa);
    t.is(await port.ioAsync(v.read, false, 8192, 8192, buf), 8192);
    t.true(Buffer.from(region.bytes.subarray(8192, 16384)).equals(data));
    t.is(e.svc.nativeStats!.reads, 1);
    // Guard bytes around the buffer: nothing below or beyond is written by what follows.
    region.bytes.fill(0x5c, 0, 8192);
    region.bytes.fill(0x5c, 16384);
    const before = e.svc.nativeStats!;
    const small = await p.memoryDiminish(cid, 8192, 4096);
    const ro = await p.memoryDiminish(cid, 8192, 8192, Perm.WRITE);
    const wo = await p.memoryDiminish(cid, 8192, 8192, Perm.READ);
    const tail = await p.memoryDiminish(cid, (64 << 10) - 4096, 4096);
    await code(t, port.ioAsync(v.read, false, 0, 8192, small), 'ERANGE'); // buffer smaller than the length
    await code(t, port.ioAsync(v.read, false, 0, 8192, tail), 'ERANGE'); // the last page of the region, 8 KiB asked
    await code(t, port.ioAsync(v.read, false, 0, 4096, ro), 'EPERM'); // read into read-only Memory
    await code(t, port.ioAsync(v.write, true, 0, 4096, wo), 'EPERM'); // write from write-only Memory
    await code(t, port.ioAsync(v.read, false, (1 << 20) - 4096, 8192, buf), 'ERANGE'); // straddles the volume's end
    await code(t, port.ioAsync(v.read, false, 1 << 20, 4096, buf), 'ERANGE'); // past it
    await code(t, port.ioAsync(v.read, false, 2 ** 53, 4096, buf), 'ERANGE'); // offset beyond 2^53
    await code(t, port.ioAsync(v.read, false, 100, 4096, buf), 'EINVAL'); // misaligned for the device
    await code(t, port.ioAsync(v.read, false, 0, 0, buf), 'EINVAL');
    await code(t, port.ioAsync(v.read, false, 0, (2 << 20) + 4096, buf), 'EINVAL'); // > MAX_IO_BYTES
    const after = e.svc.nativeStats!;
    t.is(after.reads, before.reads, 'no hostile read went native');
    t.is(after.writes, before.writes);
    t.is(after.fallbacks.check - before.fallbacks.check, 10, 'each was passed to JS by a failed check');
    t.true(region.bytes.subarray(0, 8192).every((x) => x === 0x5c));
    t.true(region.bytes.subarray(16384).every((x) => x === 0x5c));
    // Revoked Memory: the Controller refuses the invocation (the client's cap is gone), and
    // the mapping the loop holds is never used for it.
    const gone = await p.memoryDiminish(cid, 8192, 8192);
    await p.capRevoke(gone);
    await code(t, port.ioAsync(v.read, false, 0, 8192, gone), 'EREVOKED');
    t.is(e.svc.nativeStats!.reads, after.reads);
    // Still served natively afterwards.
    t.is(await port.ioAsync(v.read, false, 8192, 8192, buf), 8192);
    t.is(e.svc.nativeStats!.reads, after.reads + 1);
    // FUA writes go to JS (write, then a flush before onSuccess).
    t.is(await port.ioAsync(v.write, true, 0, 4096, buf, WriteFlags.FUA), 4096);
    t.is(e.svc.nativeStats!.fallbacks.fua, 1);
    t.is(e.svc.nativeStats!.ioErrors, 0);
    t.is(e.svc.nativeStats!.invokeErrors, 0);
  } finally {
    await teardown(e);
  }
});

vtest('native loop: a device error reaches onError with the JS path\'s code, native or not', async (t) => {
  // A regular file whose tail is cut after the volume was made: reads there come back short
  // (0 bytes at the end of the file): EIO on both paths.
  const device = devices.devFile(16 << 20);
  const e = await env(device);
  try {
    const p = await client(e);
    const v = await volumeCreate(p, (await adminClaim(p, 'blockdev', 5000)).create, 8 << 20);
    const port = new IoPort(p);
    const { cid } = await p.memoryCreateShared(64 << 10, Perm.RW, { shareWhole: true });
    t.is(await port.ioAsync(v.read, false, 0, 4096, cid), 4096); // maps the region
    truncateSync(device, 4096 * 64); // the volume's extent now lies past the end of the file
    const errs = e.svc.counts.errors;
    const err1 = await t.throwsAsync(port.ioAsync(v.read, false, 4 << 20, 4096, cid));
    t.is((err1 as FractosError).code, 'EIO');
    t.regex((err1 as FractosError).message, /read of volume \d+ at 4194304: res 0/);
    t.true(e.svc.nativeStats!.ioErrors >= 1, 'the failed read was native');
    t.is(e.svc.counts.errors, errs + 1);
  } finally {
    await teardown(e);
  }
});

vtest('native loop: a client that leaves with I/O in flight affects nobody; the hook refuses non-hooks', async (t) => {
  const e = await env(devices.devFile(16 << 20));
  try {
    const a = await client(e, 'a');
    const { create } = await adminClaim(a, 'blockdev', 5000);
    const v = await volumeCreate(a, create, 4 << 20);
    const port = new IoPort(a);
    const { cid } = await a.memoryCreateShared(256 << 10, Perm.RW, { shareWhole: true });
    const bufs = await Promise.all(Array.from({ length: 32 }, (_, i) => a.memoryDiminish(cid, i * 8192, 8192)));
    await port.ioAsync(v.read, false, 0, 8192, bufs[0]!);
    // The answers of these never arrive (the channel closes first): not awaited.
    for (const [i, b] of bufs.entries()) port.ioAsync(v.read, false, i * 8192, 8192, b).catch(() => 0);
    await new Promise((r) => setImmediate(r));
    await a.close(); // with reads in flight
    const b = await client(e, 'b');
    const { cid: m, region } = await b.memoryCreateShared(64 << 10, Perm.RW, { shareWhole: true });
    // b holds no volume Request: it gets one from a's volume through a fresh claim holder.
    const w = await volumeCreate(b, (await adminClaim(b, 'blockdev', 5000)).create, 1 << 20);
    const pb = new IoPort(b);
    region.bytes.fill(7, 0, 4096);
    t.is(await pb.ioAsync(w.write, true, 0, 4096, m), 4096);
    region.bytes.fill(0, 0, 4096);
    t.is(await pb.ioAsync(w.read, false, 0, 4096, m), 4096);
    t.true(region.bytes.subarray(0, 4096).every((x) => x === 7));
    t.true(e.svc.nativeStats!.attached);
    t.is(e.svc.nativeStats!.inFlight, 0);
    // The frame hook only takes an External made by a native loop.
    t.throws(() => b.setFrameHook({}), { code: 'EINVAL' });
  } finally {
    await teardown(e);
  }
});

vtest('native loop with completion polling (FRACTOS_IOLOOP_SPIN_US=200): writes and reads at QD1 and QD8 return the same bytes; the polls are counted', async (t) => {
  const e = await env(devices.devFile(16 << 20), 200);
  try {
    const p = await client(e);
    const v = await volumeCreate(p, (await adminClaim(p, 'blockdev', 5000)).create, 1 << 20);
    const port = new IoPort(p);
    const { cid, region } = await p.memoryCreateShared(64 << 10, Perm.RW, { shareWhole: true });
    const bufs = await Promise.all([...Array(8).keys()].map((i) => p.memoryDiminish(cid, i * 4096, 4096)));
    const data = randomBytes(32768);
    region.bytes.set(data, 0);
    t.is(await port.ioAsync(v.write, true, 0, 4096, bufs[0]!), 4096); // maps the region (JS)
    for (let i = 0; i < 8; i++) t.is(await port.ioAsync(v.write, true, i * 4096, 4096, bufs[i]!), 4096);
    region.bytes.fill(0);
    t.deepEqual(await Promise.all(bufs.map((b, i) => port.ioAsync(v.read, false, i * 4096, 4096, b))), Array(8).fill(4096));
    t.true(Buffer.from(region.bytes.subarray(0, 32768)).equals(data));
    const st = e.svc.nativeStats!;
    t.true(st.reads >= 8 && st.writes >= 8, `${st.reads} reads, ${st.writes} writes native`);
    t.true(st.spins > 0, `the loop polled its completion queue: ${JSON.stringify(st)}`);
    t.true(st.spinHits <= st.spins);
  } finally {
    await teardown(e);
  }
});

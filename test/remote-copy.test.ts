/**
 * memory_copy across two Controllers (OS processes, TCP peer link; issue #8 item 7): the
 * sending Controller writes each P_MEM_WRITE chunk to the socket straight from the source
 * mapping and the receiving one reads its payload from the socket straight into the
 * destination mapping (docs/core.md "Copies across Controllers"). Sizes 0, 1, 4095, 4 MiB
 * and 16 MiB at unaligned offsets arrive intact both ways and nothing outside the
 * destination range changes; many copies at once (more than the peer link's backlog bound,
 * so chunks wait for it to drain) all complete; an owner cannot truncate a region under the
 * stream (sealed memfds) and the stream stays whole; a peer killed in the
 * middle of copies fails them with a typed error and the surviving Controller keeps working.
 */
import test from 'ava';
import { ftruncateSync } from 'node:fs';
import { connect, FractosError, Perm, type Process, type SharedRegion } from '../libfractos/index.js';
import { clusterSpecs, startController, type ControllerSpec, type Spawned } from './helpers/spawn.js';

const MiB = 1 << 20;

interface Pair {
  specs: ControllerSpec[];
  c1: Spawned;
  c2: Spawned;
  a: Process; // on controller 1
  b: Process; // on controller 2
  stop(): Promise<void>;
}

async function pair(): Promise<Pair> {
  const specs = await clusterSpecs(2);
  const c1 = await startController(specs[0]!, specs);
  const c2 = await startController(specs[1]!, specs);
  const a = await connect(specs[0]!.unix, { name: 'remote-copy-a' });
  const b = await connect(specs[1]!.unix, { name: 'remote-copy-b' });
  return {
    specs, c1, c2, a, b,
    stop: async () => {
      await a.close().catch(() => {});
      await b.close().catch(() => {});
      await c1.stop();
      await c2.stop();
    },
  };
}

/** A pattern that differs at every offset modulo 251 (a shifted or misplaced chunk shows). */
function fillPattern(bytes: Uint8Array, seed: number): void {
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + seed) % 251;
}

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

const CASES: [size: number, srcOff: number, dstOff: number][] = [
  [0, 0, 0],
  [1, 0, 0],
  [1, 4095, 4097],
  [4095, 1, 3],
  [64 * 1024 + 1, 4095, 1],
  [4 * MiB, 0, 0],
  [4 * MiB + 5, 7, 4093],
  [16 * MiB, 0, 0],
  [16 * MiB - 3, 3, 1],
];
const REGION = 16 * MiB + 8192;

test('sizes 0, 1, 4095, 4 MiB, 16 MiB at unaligned offsets arrive intact both ways; nothing outside the destination range changes', async (t) => {
  t.timeout(120_000);
  const p = await pair();
  try {
    const local = await p.a.memoryCreateShared(REGION, Perm.RW);
    const far = await p.b.memoryCreateShared(REGION, Perm.RW);
    await p.b.kvPut('remote-copy-far', far.cid);
    const farCid = await p.a.kvWait('remote-copy-far');
    for (const [size, srcOff, dstOff] of CASES) {
      for (const dir of ['push', 'pull'] as const) {
        // push: a's region -> b's (runs at c1, P_MEM_WRITE into c2); pull: b's -> a's (P_COPY to c2, P_MEM_WRITE into c1)
        const [from, to] = dir === 'push' ? [local, far] : [far, local];
        const [fromCid, toCid] = dir === 'push' ? [local.cid, farCid] : [farCid, local.cid];
        fillPattern(from.region.bytes, size % 97);
        to.region.bytes.fill(0xee);
        const s = await p.a.memoryDiminish(fromCid, srcOff, size);
        const d = await p.a.memoryDiminish(toCid, dstOff, size);
        await p.a.memoryCopy(s, d);
        const got = to.region.bytes.subarray(dstOff, dstOff + size);
        const want = from.region.bytes.subarray(srcOff, srcOff + size);
        t.true(Buffer.from(got).equals(Buffer.from(want)), `${dir} ${size} B from +${srcOff} to +${dstOff}: bytes differ`);
        const before = to.region.bytes.subarray(0, dstOff);
        const after = to.region.bytes.subarray(dstOff + size);
        t.true(before.every((x) => x === 0xee) && after.every((x) => x === 0xee), `${dir} ${size} B: bytes outside the destination changed`);
        await p.a.capDrop(s, d);
      }
    }
  } finally {
    await p.stop();
  }
});

test('many copies to one peer at once (beyond its link backlog bound) all complete intact', async (t) => {
  t.timeout(120_000);
  const p = await pair();
  try {
    const N = 6;
    const size = 8 * MiB;
    const src = await p.a.memoryCreateShared(size, Perm.RW);
    fillPattern(src.region.bytes, 5);
    const dsts: { cid: number; region: SharedRegion }[] = [];
    for (let i = 0; i < N; i++) {
      const d = await p.b.memoryCreateShared(size, Perm.RW);
      await p.b.kvPut(`remote-copy-many-${i}`, d.cid);
      dsts.push({ cid: await p.a.kvWait(`remote-copy-many-${i}`), region: d.region });
    }
    for (let round = 0; round < 3; round++) {
      for (const d of dsts) d.region.bytes.fill(0);
      await Promise.all(dsts.map((d) => p.a.memoryCopy(src.cid, d.cid)));
      for (const [i, d] of dsts.entries()) t.true(Buffer.from(d.region.bytes).equals(Buffer.from(src.region.bytes)), `round ${round} copy ${i}`);
    }
  } finally {
    await p.stop();
  }
});

test('an owner cannot truncate a region under a 4 MiB stream (sealed memfd): ftruncate is EPERM for the destination and the source, copies stay whole, both Controllers live', async (t) => {
  // Regions are memfds sealed against shrinking and growing (docs/core.md "Shared regions"),
  // so the EFAULT paths of the zero-copy send and receive (a truncated mapping) can no longer
  // be reached from a Process; the C++ unit test (testPeerCopies) drives them directly.
  t.timeout(120_000);
  const p = await pair();
  try {
    const src = await p.a.memoryCreateShared(4 * MiB, Perm.RW);
    fillPattern(src.region.bytes, 9);
    const victim = await p.b.memoryCreateShared(4 * MiB, Perm.RW);
    await p.b.kvPut('remote-copy-victim', victim.cid);
    const victimCid = await p.a.kvWait('remote-copy-victim');
    await p.a.memoryCopy(src.cid, victimCid);
    t.true(Buffer.from(victim.region.bytes).equals(Buffer.from(src.region.bytes)), 'copies work before the attempt');
    t.throws(() => ftruncateSync(victim.region.fd, MiB + 100), { code: 'EPERM' });
    t.throws(() => ftruncateSync(src.region.fd, 2 * MiB + 4096 + 1), { code: 'EPERM' });
    t.throws(() => ftruncateSync(src.region.fd, 8 * MiB), { code: 'EPERM' });
    fillPattern(src.region.bytes, 13);
    await p.a.memoryCopy(src.cid, victimCid);
    t.true(Buffer.from(victim.region.bytes).equals(Buffer.from(src.region.bytes)), 'the stream is whole after the refused truncations');
    await p.a.memoryCopy(victimCid, src.cid);
    t.true(alive(p.c1) && alive(p.c2), `a Controller died:\n${p.c1.output()}\n${p.c2.output()}`);
  } finally {
    await p.stop();
  }
});

test('a peer killed in the middle of copies: they fail with a typed error, the surviving Controller keeps working', async (t) => {
  t.timeout(120_000);
  const p = await pair();
  try {
    const src = await p.a.memoryCreateShared(16 * MiB, Perm.RW);
    const far = await p.b.memoryCreateShared(16 * MiB, Perm.RW);
    await p.b.kvPut('remote-copy-dying', far.cid);
    const farCid = await p.a.kvWait('remote-copy-dying');
    await p.a.memoryCopy(src.cid, farCid);
    // Copies back to back until one fails, both ways: pushes stream from controller 1 into
    // the dying peer, pulls stream from the dying peer into controller 1 (whose receive of a
    // chunk's payload into the mapping is cut off mid-frame). The peer dies while they run.
    const copies = { push: 0, pull: 0 };
    const loop = (dir: 'push' | 'pull'): Promise<{ code: string; message: string }> =>
      (async () => {
        for (;;) {
          const r = await failure(dir === 'push' ? p.a.memoryCopy(src.cid, farCid) : p.a.memoryCopy(farCid, src.cid));
          if (r.code !== 'no error') return r;
          copies[dir]++;
        }
      })();
    const loops = [loop('push'), loop('pull')];
    while (copies.push < 2 || copies.pull < 2) await new Promise((r) => setTimeout(r, 1));
    await p.c2.kill9();
    for (const r of await Promise.all(loops)) t.true(['EDISCONNECTED', 'EREVOKED'].includes(r.code), `${r.code}: ${r.message}`);
    t.true(alive(p.c1), p.c1.output());
    await p.a.nullOp();
    const x = await p.a.memoryCreateShared(MiB);
    const y = await p.a.memoryCreateShared(MiB);
    x.region.bytes.fill(0x42);
    await p.a.memoryCopy(x.cid, y.cid);
    t.true(y.region.bytes.every((v) => v === 0x42));
  } finally {
    await p.stop();
  }
});

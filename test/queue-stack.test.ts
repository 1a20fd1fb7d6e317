/**
 * Processes on shared-memory queue pairs (docs/queues.md "The Controller's side", "The
 * Process's side"; HELLO feature QUEUE): on by default on unix, off with `queue: false`;
 * frames larger than a ring entry in both directions; a Process that writes garbage into its
 * rings loses its channel and nobody else notices; a Process killed -9 in the middle of queue
 * traffic; the Controller OS process killed -9 (EDISCONNECTED); a Process that never drains
 * ring 1 (the Controller's backlog stays bounded, it stops reading that Process, others are
 * served, nothing is lost once it reads); quiet invocations (REQUEST_INVOKE_QUIET); the host's
 * spinner budget page against a Process that fills it with garbage or asks for an endless
 * spin (docs/queues.md "Spinner budget"). Skipped with the reason when the queue addon is not
 * built.
 */
import test from 'ava';
import { readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, Perm, type Process } from '../libfractos/index.js';
import { FractosError } from '../libfractos/errors.js';
import { Feature, Op, allocFrame } from '../libfractos/protocol.js';
import { UnixLink } from '../libfractos/unix-link.js';
import { closeFd, loadQueue, mapQueuePairRaw, mapSpinBudgetRaw } from '../native/queue/index.js';
import { clusterSpecs, spawnNode, startController, tempDir } from './helpers/spawn.js';
import { until } from './helpers/wait.js';

let why = '';
try {
  loadQueue();
} catch (e) {
  why = (e as Error).message;
}
const qtest = why ? test.skip : test;
if (why) test('queue-stack: queue addon unavailable', (t) => t.pass(why));

async function start(limits = {}): Promise<{ c: Controller; addr: string; close: () => Promise<void> }> {
  const dir = tempDir();
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'state'), limits });
  return { c, addr, close: () => c.close() };
}

function linkOf(c: Controller, name: string): { closed?: boolean; backlogBytes: number; readPauses: number } | undefined {
  return c.stats().filter((l) => l.kind === 'process' && l.name === name).pop();
}

/** A raw Process on a queue pair: HELLO with QUEUE by hand, the pair mapped whole (a hostile view). */
async function rawQueued(addr: string, name: string): Promise<{ link: UnixLink; pair: DataView; ringBytes: number; ring: () => void; closed: Promise<void>; budget?: DataView }> {
  const link = await UnixLink.connect(addr.slice(5), 1 << 24, 2000);
  const nameB = Buffer.from(name);
  const hello = allocFrame(Op.HELLO, 1, 8 + nameB.length);
  hello.writeUInt32LE(process.pid, 16);
  hello.writeUInt32LE(Feature.QUEUE, 20);
  nameB.copy(hello, 24);
  const got = new Promise<{ r: Buffer; fds: number[] }>((res) => {
    link.onFrame = (f, fds) => {
      const mine = fds ? fds.slice() : [];
      if (fds) fds.fill(-1);
      res({ r: Buffer.from(f), fds: mine });
    };
  });
  const closed = new Promise<void>((res) => (link.onClose = () => res()));
  link.send(hello);
  const { r, fds } = await got;
  // [pair, our doorbell, the Controller's doorbell, the spinner budget page (when the host has one)]
  if (fds.length < 3 || fds.length > 4 || (r.readUInt32LE(44) & Feature.QUEUE) === 0) throw new Error(`no queue pair: ${fds.length} fds`);
  let budget: DataView | undefined;
  if (fds[3] !== undefined) {
    budget = new DataView(mapSpinBudgetRaw(fds[3]));
    closeFd(fds[3]);
  }
  const ringBytes = r.readUInt32LE(48);
  const pair = new DataView(mapQueuePairRaw(fds[0]!));
  const ctlBell = fds[2]!;
  closeFd(fds[0]!);
  closeFd(fds[1]!);
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);
  return { link, pair, ringBytes, ring: () => void writeSync(ctlBell, one), closed: closed.finally(() => closeFd(ctlBell)), budget };
}

qtest('unix Processes use a queue pair by default; queue: false keeps the socket; both work', async (t) => {
  const { c, addr, close } = await start();
  const procs: Process[] = [];
  try {
    const q = await connect(addr, { name: 'q' });
    const s = await connect(addr, { name: 's', queue: false });
    procs.push(q, s);
    for (const p of [q, s]) {
      await p.nullOp();
      const { cid } = await p.memoryCreateShared(4096);
      await p.kvPut(`m-${p.name}`, cid);
    }
    // calls from one mode to the other's objects
    const m = await q.kvGet('m-s');
    const { cid: local, region } = await q.memoryCreateShared(4096);
    region.bytes.fill(9);
    await q.memoryCopy(local, m);
    t.is(q.transport, 'queue');
    t.is(s.transport, 'socket');
    t.not(linkOf(c, 'q')?.closed, true);
    t.not(linkOf(c, 's')?.closed, true);
  } finally {
    for (const p of procs) await p.close();
    await close();
  }
});

qtest('frames larger than a ring entry cross both rings whole, in order (16 KiB rings: 4088-byte entries)', async (t) => {
  const { addr, close } = await start({ queueRingBytes: 16384 });
  const procs: Process[] = [];
  try {
    const owner = await connect(addr, { name: 'owner' });
    const client = await connect(addr, { name: 'client' });
    procs.push(owner, client);
    const SIZE = 600 * 1024; // MEM_READ replies and MEM_WRITE frames of up to 256 KiB each
    const backing = Buffer.alloc(SIZE);
    for (let i = 0; i < SIZE; i++) backing[i] = (i * 7 + 3) & 0xff;
    const served = await owner.memoryCreateServed(SIZE, Perm.RW, {
      read: (o, n) => backing.subarray(o, o + n),
      write: (o, d) => void backing.set(d, o),
    });
    await owner.kvPut('served', served);
    const dst = await client.kvGet('served');
    const { cid: shared, region } = await client.memoryCreateShared(SIZE);
    await client.memoryCopy(dst, shared); // owner -> Controller: frames over ring 0
    t.true(Buffer.from(region.bytes).equals(backing), 'served -> shared');
    for (let i = 0; i < SIZE; i++) region.bytes[i] = (i * 13 + 1) & 0xff;
    await client.memoryCopy(shared, dst); // Controller -> owner: frames over ring 1
    t.true(Buffer.from(region.bytes).equals(backing), 'shared -> served');
    // many calls in one tick: one publish, replies in order
    await Promise.all(Array.from({ length: 2000 }, () => client.nullOp()));
  } finally {
    for (const p of procs) await p.close();
    await close();
  }
});

qtest('a Process that writes garbage into its rings loses its channel; another Process is not affected', async (t) => {
  const { c, addr, close } = await start();
  const good = await connect(addr, { name: 'good' });
  try {
    const cases: [string, (v: DataView, rb: number) => void][] = [
      ['tail not 8-aligned', (v) => v.setBigUint64(128, 5n, true)],
      ['tail more than a ring ahead', (v, rb) => v.setBigUint64(128, BigInt(rb * 2), true)],
      ['huge entry length', (v) => {
        v.setUint32(4096, 0x40000000, true);
        v.setUint32(4100, 1, true);
        v.setBigUint64(128, 16n, true);
      }],
      ['torn entry (kind 0)', (v) => v.setBigUint64(128, 24n, true)],
      ['entry past what was published', (v) => {
        v.setUint32(4096, 64, true);
        v.setUint32(4100, 1, true);
        v.setBigUint64(128, 16n, true);
      }],
      ['WRAP at offset 0', (v) => {
        v.setUint32(4096, 0, true);
        v.setUint32(4100, 2, true);
        v.setBigUint64(128, 8n, true);
      }],
      ['a frame split wrongly (length 8 in a valid entry)', (v) => {
        v.setUint32(4096, 16, true);
        v.setUint32(4100, 1, true);
        v.setUint32(4104, 8, true); // frame length 8 < 16
        v.setUint16(4108, Op.NULL, true);
        v.setBigUint64(128, 24n, true);
      }],
    ];
    for (const [what, spoil] of cases) {
      const h = await rawQueued(addr, `hostile-${what}`);
      spoil(h.pair, h.ringBytes);
      h.ring();
      const gone = await Promise.race([h.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 5000))]);
      t.true(gone, `${what}: the channel is closed`);
      await good.nullOp();
      h.link.close();
    }
    t.is(c.stats().filter((l) => l.kind === 'process' && !l.closed).length, 1);
    await good.nullOp();
  } finally {
    await good.close();
    await close();
  }
});

qtest('a Process killed -9 in the middle of queue traffic: its channel closes, the Controller and others keep working', async (t) => {
  const { c, addr, close } = await start();
  const good = await connect(addr, { name: 'good' });
  try {
    const lib = join(process.cwd(), 'dist', 'libfractos', 'index.js');
    const code = `const { connect } = await import(${JSON.stringify(lib)});
      const p = await connect(${JSON.stringify(addr)}, { name: 'victim' });
      const { cid } = await p.memoryCreateShared(65536);
      console.log('ready');
      for (;;) await Promise.all([p.nullOp(), p.memoryStat(cid), p.memoryCopy(cid, cid).catch(() => {})]);`;
    const child = await spawnNode(['--input-type=module', '-e', code], /^ready/);
    await new Promise((r) => setTimeout(r, 300));
    await child.kill9();
    t.true(await until(() => linkOf(c, 'victim')?.closed === true, 5000), 'the victim channel closed');
    await good.nullOp();
    const again = await connect(addr, { name: 'after' });
    await again.nullOp();
    await again.close();
  } finally {
    await good.close();
    await close();
  }
});

qtest('kill -9 of the Controller OS process: Processes on queues see EDISCONNECTED', async (t) => {
  const dir = tempDir();
  const [spec] = await clusterSpecs(1, dir);
  const ctl = await startController(spec!, [spec!]);
  const p = await connect(spec!.unix, { name: 'orphan' });
  await p.nullOp();
  const closed = new Promise<void>((r) => p.once('close', () => r()));
  const calls = (async () => {
    for (;;) await p.nullOp();
  })();
  await new Promise((r) => setTimeout(r, 100));
  await ctl.kill9();
  const err = await t.throwsAsync(calls);
  t.true(err instanceof FractosError);
  t.is((err as FractosError).code, 'EDISCONNECTED');
  await closed;
  await p.close();
});

qtest('a Process that never drains its ring: the Controller stays bounded and stops reading it; others are served; nothing is lost', async (t) => {
  const HIGH = 256 * 1024;
  const { c, addr, close } = await start({ maxOutboundBytes: HIGH, queueRingBytes: 65536 });
  const good = await connect(addr, { name: 'good' });
  const flooder = await connect(addr, { name: 'flooder' });
  try {
    flooder.pause(); // reads neither its socket nor ring 1 from here on
    const N = 40_000;
    let done = 0;
    const all = Promise.all(Array.from({ length: N }, () => flooder.nullOp().then(() => done++)));
    t.true(await until(() => (linkOf(c, 'flooder')?.readPauses ?? 0) > 0, 10_000), 'the Controller stopped reading the flooder');
    const st = linkOf(c, 'flooder')!;
    t.log(`flooder backlog ${st.backlogBytes} bytes, ${st.readPauses} pauses, ${done} of ${N} answered`);
    t.true(st.backlogBytes <= HIGH + 64 * 1024, `backlog ${st.backlogBytes}`);
    t.is(done, 0);
    await good.nullOp(); // others are served
    flooder.resume();
    await all;
    t.is(done, N);
    await flooder.nullOp();
  } finally {
    await good.close();
    await flooder.close();
    await close();
  }
});

qtest('quiet invocations: the promise resolves, the continuation arrives, failures are typed errors; with or without handlers', async (t) => {
  const { addr, close } = await start();
  const procs: Process[] = [];
  try {
    const provider = await connect(addr, { name: 'provider' });
    const client = await connect(addr, { name: 'client' });
    const bare = await connect(addr, { name: 'bare' }); // no request handlers: woken by quiet replies too
    procs.push(provider, client, bare);
    const ECHO = 7;
    const CONT = 8;
    provider.onRequest(ECHO, (inv) => {
      const cont = inv.caps[0]!;
      void provider.requestInvoke(cont, {}, { quiet: true }).catch(() => {});
    });
    const echo = await provider.requestCreate(ECHO);
    await provider.kvPut('echo', echo);
    let got = 0;
    let wake: (() => void) | null = null;
    client.onRequest(CONT, () => {
      got++;
      wake?.();
    });
    const cont = await client.requestCreate(CONT);
    const e = await client.kvGet('echo');
    const N = 500;
    for (let i = 0; i < N; i++) {
      const arrived = new Promise<void>((r) => (wake = r));
      await Promise.all([client.requestInvoke(e, { caps: [{ slot: 0, cap: cont }] }, { quiet: true }), arrived]);
    }
    t.is(got, N);
    const e2 = await bare.kvGet('echo');
    await bare.requestInvoke(e2, {}, { quiet: true }); // resolves although bare has no handlers
    const err = await t.throwsAsync(client.requestInvoke(0xfffff, {}, { quiet: true }));
    t.is((err as FractosError).code, 'EBADCAP');
  } finally {
    for (const p of procs) await p.close();
    await close();
  }
});

/** CPU seconds (user + system) of an OS process so far (/proc/PID/stat, 100 Hz ticks). */
function cpuS(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100;
}

/** Start a Controller with the spin after poll-mode activity on (FRACTOS_POLL_SPIN_US, read at start). */
async function withPollSpin<T>(startIt: () => Promise<T>): Promise<T> {
  const was = process.env.FRACTOS_POLL_SPIN_US;
  process.env.FRACTOS_POLL_SPIN_US = '100';
  try {
    return await startIt();
  } finally {
    if (was === undefined) delete process.env.FRACTOS_POLL_SPIN_US;
    else process.env.FRACTOS_POLL_SPIN_US = was;
  }
}

qtest('spinner budget: a Process that fills the page with garbage does not stop a poll-mode Process; the Controller clears it when it spins', async (t) => {
  const { addr, close } = await withPollSpin(() => start());
  const hostile = await rawQueued(addr, 'scribbler');
  const procs: Process[] = [];
  try {
    const b = hostile.budget;
    if (!b) return t.pass('no spinner budget page on this host (one CPU: FRACTOS_SPIN_SLOTS 0)');
    t.is(b.getUint32(0, true), 0x31425346); // "FSB1"
    const slots = b.getUint32(8, true);
    t.true(slots >= 1 && slots <= 32);
    // every slot: a tag that is nobody's, a deadline 10 s ahead (beyond the 1 ms a hold may last)
    const garbage = (): void => {
      const d = Number((process.hrtime.bigint() / 1000n + 10_000_000n) & 0xffffffffn);
      for (let i = 0; i < slots; i++) b.setBigUint64(64 + 64 * i, (0x7fffffffn << 32n) | BigInt(d), true);
    };
    garbage();
    const p = await connect(addr, { name: 'poller', poll: true });
    procs.push(p);
    for (let i = 0; i < 200; i++) await p.nullOp();
    for (let i = 0; i < slots; i++) t.not(Number(b.getBigUint64(64 + 64 * i, true) >> 32n), 0x7fffffff, `slot ${i} still garbage`);
    // and while the garbage is written again and again, calls still complete
    const timer = setInterval(garbage, 1);
    try {
      for (let i = 0; i < 200; i++) await p.nullOp();
    } finally {
      clearInterval(timer);
    }
    t.pass();
  } finally {
    for (const p of procs) await p.close();
    hostile.link.close();
    await close();
  }
});

qtest('spinner budget: a Process that writes an endless poll spin into its pair cannot keep the Controller spinning', async (t) => {
  const dir = tempDir();
  const [spec] = await clusterSpecs(1, dir);
  const ctl = await withPollSpin(() => startController(spec!, [spec!]));
  const hostile = await rawQueued(spec!.unix, 'spinner');
  try {
    // poll_us (ring 1's consumer line + 12): 2^32 - 1 µs; then one NULL on ring 0, by hand
    hostile.pair.setUint32(512 + 12, 0xffffffff, true);
    const base = 4096;
    hostile.pair.setUint32(base, 16, true); // entry: len 16, kind DATA
    hostile.pair.setUint32(base + 4, 1, true);
    const f = allocFrame(Op.NULL, 7, 0);
    for (let i = 0; i < 16; i++) hostile.pair.setUint8(base + 8 + i, f[i]!);
    hostile.pair.setBigUint64(128, 24n, true); // tail
    hostile.ring();
    // the answer arrives on ring 1 (its tail moves): the Controller read it and spun at most FRACTOS_POLL_SPIN_US
    const r1 = 384;
    await until(() => hostile.pair.getBigUint64(r1, true) > 0n, 5000);
    const pid = ctl.child.pid!;
    const c0 = cpuS(pid);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 1000));
    const pct = ((cpuS(pid) - c0) / ((performance.now() - t0) / 1000)) * 100;
    t.log(`Controller CPU over the second after the hostile's activity: ${pct.toFixed(1)} %`);
    t.true(pct < 50, `the Controller kept spinning: ${pct.toFixed(1)} % of a core`);
  } finally {
    hostile.link.close();
    await ctl.stop();
  }
});

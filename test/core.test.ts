/**
 * Core semantics on one Controller (in-process): Memory, Requests, derivation,
 * revocation trees, monitors, bootstrap names, RPC, limits and bad input.
 */
import test from 'ava';
import net from 'node:net';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, defineReply, defineRequest, FractosError, Perm, type Process } from '../libfractos/index.js';
import { allocFrame, Op } from '../libfractos/protocol.js';
import { tempDir } from './helpers/spawn.js';
import { until } from './helpers/wait.js';
import { expectCode as code } from './helpers/errors.js';

interface Env {
  c: Controller;
  addr: string;
  procs: Process[];
  proc(name: string): Promise<Process>;
}

async function env(limits = {}): Promise<Env> {
  const dir = tempDir();
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'state'), limits });
  const e: Env = {
    c,
    addr,
    procs: [],
    proc: async (name) => {
      const p = await connect(addr, { name });
      e.procs.push(p);
      return p;
    },
  };
  return e;
}

async function teardown(e: Env): Promise<void> {
  for (const p of e.procs) await p.close();
  await e.c.close();
}

const Echo = defineRequest('test.echo', { x: 'u32', tag: { str: 16 } }, ['buf', 'onSuccess', 'onError'] as const);
const EchoReply = defineReply('test.echo.reply', { y: 'u32', tag: { str: 16 }, size: 'u64' }, [] as const);

/** Serve Echo on `p`: replies y = 2x and the size of `buf` (if any). */
function serveEcho(p: Process): void {
  p.serve(Echo, async ({ imms, caps }) => {
    let size = 0;
    if (caps.buf) size = (await p.memoryStat(caps.buf)).size;
    if (imms.x === 666) return p.replyError(caps.onError, 'EINVAL', 'the number of the beast');
    await p.invoke(caps.onSuccess, EchoReply, { y: imms.x * 2, tag: imms.tag, size });
  });
}

/**
 * Processes `a` (client) and `b` (provider serving Echo, preset with `preset`), and the
 * Echo Request: `echo` in b's space, `ea` in a's (handed over by a bootstrap name).
 */
async function echoPair(e: Env, preset: { tag?: string } = {}): Promise<{ a: Process; b: Process; echo: number; ea: number }> {
  const [a, b] = [await e.proc('a'), await e.proc('b')];
  serveEcho(b);
  const echo = await b.createRequest(Echo, preset);
  await b.kvPut('echo', echo);
  return { a, b, echo, ea: await a.kvGet('echo') };
}


test('invoke delivers immediates and delegated caps; sync RPC returns the continuation', async (t) => {
  const e = await env();
  const { a, ea } = await echoPair(e, { tag: 'svc' });
  const { cid: buf } = await a.memoryCreateShared(12288);
  const inv = await a.rpc(ea, Echo, { x: 21 }, { buf });
  t.deepEqual(EchoReply.decode(inv).imms, { y: 42, tag: 'svc', size: 12288 });
  await code(t, a.rpc(ea, Echo, { x: 666 }), 'EINVAL');
  await teardown(e);
});

test('requestInvokeCb: done(null) once delivered, typed errors through done (never synchronously); a delivery is one Invocation whose caps, ranges, imms and retain work as before', async (t) => {
  const e = await env();
  const [a, b] = [await e.proc('a'), await e.proc('b')];
  const seen: { ranges: unknown; imms: Buffer; view: Buffer; caps: readonly number[]; kept: number }[] = [];
  b.onRequest(0x5eed, (inv) => {
    seen.push({ ranges: inv.ranges, imms: Buffer.from(inv.imms), view: Buffer.from(inv.view(2, 4)), caps: [...inv.caps], kept: inv.caps[1]! });
    inv.retain(inv.caps[1]!);
  });
  const req = await b.requestCreate(0x5eed, { imms: [{ offset: 0, bytes: Buffer.from([1, 2]) }] });
  await b.kvPut('cb', req);
  const ra = await a.kvGet('cb');
  const { cid: mem } = await a.memoryCreateShared(4096);
  const invoke = (cid: number, args?: Parameters<Process['requestInvokeCb']>[1]): Promise<FractosError | null> =>
    new Promise((resolve) => {
      let sync = true;
      a.requestInvokeCb(cid, args, true, (err) => {
        t.false(sync, 'done is never called synchronously');
        resolve(err);
      });
      sync = false;
    });
  t.is(await invoke(ra, { imms: [{ offset: 4, bytes: Buffer.from([3, 4]) }], caps: [{ slot: 1, cap: mem }] }), null);
  while (seen.length < 1) await new Promise((r) => setTimeout(r, 5));
  t.deepEqual(seen[0]!.ranges, [{ offset: 0, length: 2 }, { offset: 4, length: 2 }]);
  t.deepEqual([...seen[0]!.imms], [1, 2, 0, 0, 3, 4]);
  t.deepEqual([...seen[0]!.view], [0, 0, 3, 4]);
  t.is(seen[0]!.caps.length, 2);
  t.is(seen[0]!.caps[0], 0);
  // The retained cap outlives the handler: b can still use it.
  t.is((await b.memoryStat(seen[0]!.kept)).size, 4096);
  t.is((await invoke(0xdead))?.code, 'EBADCAP');
  t.is((await invoke(-1))?.code, 'EBADCAP');
  await b.capRevoke(req);
  t.is((await invoke(ra))?.code, 'EREVOKED');
  await a.close();
  t.is((await invoke(ra))?.code, 'EDISCONNECTED');
  await teardown(e);
});

test('derived Requests can add arguments but never overwrite them (EARGSET)', async (t) => {
  const e = await env();
  const { a, ea } = await echoPair(e, { tag: 'fixed' });
  await code(t, a.requestDerive(ea, Echo.args({ tag: 'evil' })), 'EARGSET');
  await code(t, a.requestInvoke(ea, Echo.args({ tag: 'evil' })), 'EARGSET');
  // partial overlap of a set range is EARGSET too
  await code(t, a.requestInvoke(ea, { imms: [{ offset: 5, bytes: Buffer.from([1, 2]) }] }), 'EARGSET');
  const d = await a.requestDerive(ea, Echo.args({ x: 5 }));
  await code(t, a.requestDerive(d, Echo.args({ x: 6 })), 'EARGSET');
  const inv = await a.rpc(d, Echo);
  t.deepEqual(EchoReply.decode(inv).imms.y, 10);
  // cap slots: once set, fixed
  const { cid: m } = await a.memoryCreateShared(4096);
  const d2 = await a.requestDerive(ea, Echo.args({}, { buf: m }));
  await code(t, a.requestDerive(d2, Echo.args({}, { buf: m })), 'EARGSET');
  await teardown(e);
});

test('forged cids, cids of another Process and wrong object types are typed errors', async (t) => {
  const e = await env();
  const [a, b] = [await e.proc('a'), await e.proc('b')];
  const { cid: mb } = await b.memoryCreateShared(4096);
  const { cid: ma } = await a.memoryCreateShared(4096);
  await code(t, a.requestInvoke(12345), 'EBADCAP');
  await code(t, a.memoryCopy(ma, mb + 100), 'EBADCAP');
  // b's cid numbers mean nothing in a's space: a has no cid beyond its own
  const reqB = await b.requestCreate(7);
  t.true(reqB > 1);
  await code(t, a.requestInvoke(reqB), 'EBADCAP');
  await code(t, a.requestInvoke(ma), 'ETYPE');
  await code(t, a.memoryDiminish(await a.requestCreate(1), 0, 1), 'ETYPE');
  // the Controller and the other Process are unaffected
  await a.nullOp();
  await b.nullOp();
  t.pass();
  await teardown(e);
});

test('memory_copy: bytes, perms, bounds, diminish cannot widen', async (t) => {
  const e = await env();
  const [a, b] = [await e.proc('a'), await e.proc('b')];
  const src = await a.memoryCreateShared(1 << 20);
  const dst = await b.memoryCreateShared(1 << 20);
  for (let i = 0; i < src.region.bytes.length; i++) src.region.bytes[i] = (i * 7) & 0xff;
  await b.kvPut('dst', dst.cid);
  const dstA = await a.kvGet('dst');
  await a.memoryCopy(src.cid, dstA);
  t.true(Buffer.from(dst.region.bytes).equals(Buffer.from(src.region.bytes)));
  // a read-only view cannot be written, and diminish cannot give the right back
  const ro = await b.memoryDiminish(dst.cid, 0, 4096, Perm.WRITE);
  const rw = await b.memoryDiminish(ro, 0, 4096, 0);
  t.is((await b.memoryStat(rw)).perms, Perm.READ);
  await b.kvPut('ro', rw);
  const roA = await a.kvGet('ro');
  const small = await a.memoryDiminish(src.cid, 0, 4096);
  await code(t, a.memoryCopy(small, roA), 'EPERM');
  // a write-only view cannot be read
  const wo = await a.memoryDiminish(src.cid, 0, 4096, Perm.READ);
  await code(t, a.memoryCopy(wo, dstA), 'EPERM');
  // ranges: a view beyond the object, a copy larger than the destination
  await code(t, a.memoryDiminish(src.cid, 4096, 1 << 20), 'ERANGE');
  await code(t, a.memoryCopy(src.cid, await a.memoryDiminish(src.cid, 0, 100)), 'ERANGE');
  // views copy the right window
  const win = await a.memoryDiminish(src.cid, 1000, 10);
  const dwin = await a.memoryDiminish(dstA, 0, 10);
  dst.region.bytes.fill(0);
  await a.memoryCopy(win, dwin);
  t.deepEqual([...dst.region.bytes.subarray(0, 10)], [...src.region.bytes.subarray(1000, 1010)]);
  await teardown(e);
});

test('served Memory: the Controller asks the owner; callers cannot tell the backings apart', async (t) => {
  const e = await env();
  const [a, dev] = [await e.proc('a'), await e.proc('device')];
  const store = Buffer.alloc(3 << 20);
  const served = await dev.memoryCreateServed(store.length, Perm.RW, {
    read: (off, len) => store.subarray(off, off + len),
    write: async (off, data) => {
      await new Promise((r) => setImmediate(r));
      store.set(data, off);
    },
  });
  await dev.kvPut('devmem', served);
  const dm = await a.kvGet('devmem');
  const src = await a.memoryCreateShared(3 << 20);
  for (let i = 0; i < src.region.bytes.length; i++) src.region.bytes[i] = (i * 13 + 1) & 0xff;
  await a.memoryCopy(src.cid, dm);
  t.true(store.equals(Buffer.from(src.region.bytes)));
  const back = await a.memoryCreateShared(3 << 20);
  await a.memoryCopy(dm, back.cid);
  t.true(Buffer.from(back.region.bytes).equals(store));
  t.is((await a.memoryStat(dm)).backing, 'served');
  // the owner's failure revokes its Memory: later copies are EREVOKED
  const gone = new Promise((r) => a.monitorReceive(dm, r));
  await dev.close();
  await gone;
  await code(t, a.memoryCopy(src.cid, dm), 'EREVOKED');
  await teardown(e);
});

test('revocation trees: revoking a child leaves the parent; revoking the parent kills all children', async (t) => {
  const e = await env();
  const [a, b] = [await e.proc('a'), await e.proc('b')];
  serveEcho(b);
  const echo = await b.createRequest(Echo);
  const c1 = await b.capCreateRevtree(echo);
  const c2 = await b.capCreateRevtree(echo);
  const c11 = await b.capCreateRevtree(c1);
  for (const [n, c] of [['c1', c1], ['c2', c2], ['c11', c11]] as const) await b.kvPut(n, c);
  const [a1, a2, a11] = [await a.kvGet('c1'), await a.kvGet('c2'), await a.kvGet('c11')];
  const fired: string[] = [];
  await a.monitorReceive(a1, (ev) => fired.push(`c1:${ev}`));
  await a.monitorReceive(a11, (ev) => fired.push(`c11:${ev}`));
  await b.capRevoke(c1);
  await code(t, a.rpc(a1, Echo, { x: 1 }), 'EREVOKED');
  await code(t, a.rpc(a11, Echo, { x: 1 }), 'EREVOKED');
  t.is(EchoReply.decode(await a.rpc(a2, Echo, { x: 1 })).imms.y, 2);
  await a.nullOp();
  t.deepEqual(fired.sort(), ['c11:revoked', 'c1:revoked']);
  // any holder may revoke what its cap names: a's kv_get of c2 names a's own child of c2,
  // so a cuts off only itself; b's c2 and its parent are intact
  await a.capRevoke(a2);
  await code(t, a.requestInvoke(a2), 'EREVOKED');
  t.is(EchoReply.decode(await b.rpc(c2, Echo, { x: 3 })).imms.y, 6);
  t.is(EchoReply.decode(await b.rpc(echo, Echo, { x: 2 })).imms.y, 4);
  // derived Requests die with their parent
  const d = await a.requestDerive(await (async () => {
    await b.kvPut('echo', echo);
    return a.kvGet('echo');
  })(), Echo.args({ x: 3 }));
  await b.capRevoke(echo);
  await code(t, a.requestInvoke(d), 'EREVOKED');
  await teardown(e);
});

test('a closed channel revokes every object of its Process and fires monitors', async (t) => {
  const e = await env();
  const [a, b] = [await e.proc('a'), await e.proc('b')];
  serveEcho(b);
  const echo = await b.createRequest(Echo);
  const mem = (await b.memoryCreateShared(4096)).cid;
  await b.kvPut('echo', echo);
  await b.kvPut('mem', mem);
  const ea = await a.kvGet('echo');
  const ma = await a.kvGet('mem');
  const events: string[] = [];
  const gone = new Promise<void>((r) => a.monitorReceive(ea, (ev) => {
    events.push(ev);
    r();
  }));
  await a.monitorReceive(ma, (ev) => events.push(`mem:${ev}`));
  await b.close();
  await gone;
  await a.nullOp();
  t.deepEqual(events.sort(), ['mem:owner-failed', 'owner-failed']);
  await code(t, a.requestInvoke(ea), 'EREVOKED');
  const local = (await a.memoryCreateShared(4096)).cid;
  await code(t, a.memoryCopy(local, ma), 'EREVOKED');
  await teardown(e);
});

test('monitor_delegate fires when every delegated copy is gone', async (t) => {
  const e = await env();
  const [svc, c1, c2] = [await e.proc('svc'), await e.proc('c1'), await e.proc('c2')];
  const req = await svc.requestCreate(99);
  let fired = 0;
  await svc.monitorDelegate(req, () => fired++);
  await svc.kvPut('r', req);
  const x1 = await c1.kvGet('r');
  const x2 = await c2.kvGet('r');
  await svc.kvPut('r', await svc.requestCreate(100)); // unpin the name
  await c1.capDrop(x1);
  await svc.nullOp();
  t.is(fired, 0, 'c2 still holds it');
  await c2.close();
  t.true(await until(() => fired > 0, 10_000), 'the monitor fires once c2 is gone');
  t.is(fired, 1);
  void x2;
  await teardown(e);
});

test('epochs: each start increments the persisted epoch', async (t) => {
  const dir = tempDir();
  const st = join(dir, 'state');
  const c1 = await Controller.start({ id: 3, listen: [`unix:${join(dir, 'a.sock')}`], stateDir: st });
  await c1.close();
  const c2 = await Controller.start({ id: 3, listen: [`unix:${join(dir, 'a.sock')}`], stateDir: st });
  t.is(c2.epoch, c1.epoch + 1);
  await c2.close();
});

test('a malformed or oversized frame closes only the offending channel (EPROTO)', async (t) => {
  const e = await env({ maxFrameBytes: 1 << 16 });
  const { a, ea } = await echoPair(e);
  const path = e.addr.slice(5);
  for (const bad of [
    // garbage length
    Buffer.from([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    // oversized frame header
    (() => {
      const f = allocFrame(Op.NULL, 1, 0);
      f.writeUInt32LE((1 << 16) + 1, 0);
      return f;
    })(),
  ]) {
    const s = net.createConnection(path);
    await new Promise((r) => s.once('connect', r));
    const hello = allocFrame(Op.HELLO, 1, 8);
    hello.writeUInt32LE(process.pid, 16);
    hello.writeUInt32LE(0, 20);
    s.write(hello);
    s.write(bad);
    s.resume();
    await new Promise((r) => s.once('close', r));
    t.pass('evil channel closed');
  }
  // a truncated body of a known op after a valid HELLO: closed with EPROTO
  const s = net.createConnection(path);
  await new Promise((r) => s.once('connect', r));
  const hello = allocFrame(Op.HELLO, 1, 8);
  hello.writeUInt32LE(process.pid, 16);
  hello.writeUInt32LE(0, 20);
  s.write(Buffer.concat([hello, allocFrame(Op.MEMORY_COPY, 77, 2)]));
  let answer = Buffer.alloc(0);
  s.on('data', (d: Buffer) => (answer = Buffer.concat([answer, d])));
  await new Promise((r) => s.once('close', r));
  // the HELLO reply, then an EPROTO reply to seq 77
  t.is(answer.readUInt16LE(answer.readUInt32LE(0) + 12), 6);
  // everyone else is unaffected
  t.is(EchoReply.decode(await a.rpc(ea, Echo, { x: 4 })).imms.y, 8);
  await teardown(e);
});

test('limits: cap space size (ENOSPC), slots and immediate area (ERANGE)', async (t) => {
  const e = await env({ maxCaps: 64, maxImmBytes: 1024, maxCapSlots: 8 });
  const a = await e.proc('a');
  const r = await a.requestCreate(1);
  await code(t, a.requestCreate(1, { imms: [{ offset: 1020, bytes: Buffer.alloc(8) }] }), 'ERANGE');
  await code(t, a.requestDerive(r, { caps: [{ slot: 8, cap: r }] }), 'ERANGE');
  const cids: number[] = [];
  let err: FractosError | null = null;
  for (let i = 0; i < 100; i++) {
    try {
      cids.push(await a.capCreateRevtree(r));
    } catch (x) {
      err = x as FractosError;
      break;
    }
  }
  t.is(err?.code, 'ENOSPC');
  await a.capDrop(...cids);
  await a.capCreateRevtree(r);
  await teardown(e);
});

test('back-pressure: a provider that stops reading holds its invokers; nothing is lost', async (t) => {
  const e = await env({ maxOutstandingDeliveries: 8, maxQueuedDeliveries: 64 });
  const [a, b] = [await e.proc('a'), await e.proc('b')];
  let got = 0;
  b.onRequest(5, () => {
    got++;
  });
  const r = await b.requestCreate(5);
  await b.kvPut('r', r);
  const ra = await a.kvGet('r');
  b.pause();
  let delivered = 0;
  let refused = 0;
  const invokes = Array.from({ length: 200 }, () => a.requestInvoke(ra).then(() => delivered++, (err: FractosError) => {
    if (err.code === 'EAGAIN') refused++;
    return err.code;
  }));
  // While b is paused, the Controller holds at most 64 queued for it (unanswered) beyond the 8
  // delivered, and refuses the rest: awaited (a loaded machine takes its time to get there).
  t.true(await until(() => delivered + refused + 64 >= 200, 20_000), `${delivered} delivered, ${refused} refused while paused`);
  t.true(delivered <= 8 + 64, `delivered ${delivered} while paused`);
  const results = await (async () => {
    b.resume();
    return Promise.all(invokes);
  })();
  const again = results.filter((x) => x === 'EAGAIN').length;
  t.true(again > 0, 'the flood beyond the queue bound got EAGAIN');
  t.true(await until(() => got >= delivered, 10_000));
  t.is(got, delivered, 'every delivered invocation reached the handler');
  t.is(delivered + again, 200);
  await teardown(e);
});

test('objects do not leak: one-shot RPC continuations and dropped derived objects are collected', async (t) => {
  const e = await env();
  const { a, b, ea } = await echoPair(e);
  await a.rpc(ea, Echo, { x: 1 });
  await a.rpcSettle();
  const before = e.c.objectCount;
  for (let i = 0; i < 50; i++) await a.rpc(ea, Echo, { x: i });
  t.true(e.c.objectCount <= before + 2 * (24 + 32 + 2), 'continuations made ahead and awaiting their batched revocation are bounded');
  for (let i = 0; i < 50; i++) await a.capDrop(await a.requestDerive(ea, Echo.args({ x: i })));
  await a.rpcSettle();
  await b.nullOp();
  t.is(e.c.objectCount, before);
  await teardown(e);
});

test('rpc continuations made ahead: a callee that keeps a finished call\'s continuation cannot answer a later call; rpcSettle revokes it', async (t) => {
  const e = await env();
  const [a, b] = [await e.proc('a'), await e.proc('b')];
  const kept: number[] = [];
  let held: (() => void) | null = null;
  b.serve(Echo, async ({ imms, caps }, inv) => {
    if (imms.x === 1) {
      inv.retain(caps.onSuccess); // a hostile callee keeps its continuation after answering
      kept.push(caps.onSuccess);
    }
    if (imms.x === 2) await new Promise<void>((r) => (held = r)); // answer only when told
    await b.invoke(caps.onSuccess, EchoReply, { y: imms.x * 2 });
  });
  const echo = await b.createRequest(Echo);
  await b.kvPut('echo', echo);
  const ea = await a.kvGet('echo');
  t.is(EchoReply.decode(await a.rpc(ea, Echo, { x: 1 })).imms.y, 2);
  // Call 2 waits in b; b replays call 1's continuation meanwhile: call 2 must not take it.
  const second = a.rpc(ea, Echo, { x: 2 });
  t.true(await until(() => held !== null, 10_000), 'call 2 reached b');
  await b.invoke(kept[0]!, EchoReply, { y: 999 }).catch(() => {});
  await new Promise((r) => setTimeout(r, 20));
  held!();
  t.is(EchoReply.decode(await second).imms.y, 4, 'the later call got its own answer, not the replayed one');
  // Revoked at the latest by rpcSettle (else in the next batch).
  await a.rpcSettle();
  await code(t, b.invoke(kept[0]!, EchoReply, { y: 7 }), 'EREVOKED');
  await teardown(e);
});

test('a cap held only in a Request\'s slot keeps its object alive', async (t) => {
  const e = await env();
  const { a, ea } = await echoPair(e);
  // a derived continuation lives only inside another derived Request's slot
  const { cid: mem } = await a.memoryCreateShared(8192);
  const view = await a.memoryDiminish(mem, 0, 4096);
  const d = await a.requestDerive(ea, Echo.args({ x: 9 }, { buf: view }));
  await a.capDrop(view);
  await a.nullOp();
  const inv = await a.rpc(d, Echo);
  t.deepEqual(EchoReply.decode(inv).imms.size, 4096, 'the view reached the provider alive');
  await a.capDrop(d);
  await teardown(e);
});

test('a dropped cid is not reused as-is: a stale cid is EBADCAP, never another cap', async (t) => {
  const e = await env();
  const a = await e.proc('a');
  const r1 = await a.requestCreate(1);
  const c1 = await a.capCreateRevtree(r1);
  await a.capDrop(c1);
  const c2 = await a.capCreateRevtree(r1);
  t.not(c2, c1);
  await code(t, a.requestInvoke(c1), 'EBADCAP');
  await a.requestInvoke(c2);
  await teardown(e);
});

test('deliveries carry Memory descriptors to a Process that asks for them', async (t) => {
  const e = await env();
  const a = await e.proc('a');
  const dev = await connect(e.addr, { name: 'adaptor', memoryDescriptors: true });
  e.procs.push(dev);
  const seen = new Promise<unknown[]>((res) =>
    dev.onRequest(Echo.tag, (inv) => res([inv.memory(Echo.slot('buf')), inv.memory(Echo.slot('onSuccess'))])),
  );
  await dev.kvPut('r', await dev.createRequest(Echo));
  const region = a.allocShared(3 * 4096);
  const mem = await a.memoryCreate(region, Perm.RW, 4096, 8192);
  const ro = await a.memoryDiminish(mem, 4096, 4096, Perm.WRITE);
  await a.invoke(await a.kvGet('r'), Echo, {}, { buf: ro, onSuccess: await a.requestCreate(3) });
  const [d, none] = await seen;
  t.deepEqual(d, { perms: Perm.READ, backing: 'shared', local: true, self: false, mappable: false, size: 4096, regionOffset: 8192, servedKey: 0, regionKey: region.key });
  t.true(region.key > 0);
  t.is(none, undefined, 'a Request cap has no descriptor');
  await teardown(e);
});

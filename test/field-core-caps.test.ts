/**
 * Capability and protocol defects of issue #7 (items 11, 12, 13, 15, 16, 17), on one
 * Controller and on two in-process Controllers linked over TCP: per-getter kv_get
 * children, bounded served-memory accesses, decode errors answered through onError,
 * pinned invocation arguments, the same checks on local and remote copies, and the
 * documented order of errors.
 */
import test from 'ava';
import net from 'node:net';
import { join } from 'node:path';
import { Controller, type ControllerOptions } from '../controller/index.js';
import { defineReply, defineRequest, FractosError, Perm, type Process } from '../libfractos/index.js';
import { allocFrame, Op } from '../libfractos/protocol.js';
import { cluster as startCluster, type Cluster } from './helpers/inproc-cluster.js';
import { tempDir } from './helpers/spawn.js';
import { codeOf } from './helpers/errors.js';

const Echo = defineRequest('field.echo', { x: 'u32' }, ['buf', 'onSuccess', 'onError'] as const);
const EchoReply = defineReply('field.echo.reply', { y: 'u32' }, [] as const);

const cluster = (n: 1 | 2, opts: Partial<ControllerOptions> = {}): Promise<Cluster> => startCluster(n, opts, 'field-core-caps secret');

/** Serve Echo on `p` (y = 2x) and publish it as `name`. */
async function publishEcho(p: Process, name: string): Promise<number> {
  p.serve(Echo, async ({ imms, caps }) => {
    await p.invoke(caps.onSuccess, EchoReply, { y: imms.x * 2 });
  });
  const cid = await p.createRequest(Echo);
  await p.kvPut(name, cid);
  return cid;
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ------------------------------------------------------------------------------------------
// Item 11: a getter's cap_revoke cuts off only itself

for (const placement of ['local', 'remote'] as const) {
  test(`kv_get (${placement}): a client that revokes its cap cuts off only itself, never the service`, async (t) => {
    const c = await cluster(placement === 'local' ? 1 : 2);
    try {
      const svc = await c.proc(0, 'svc');
      const own = await publishEcho(svc, 'fs.stat');
      const { cid: mem, region } = await svc.memoryCreateShared(4096);
      region.bytes.fill(7);
      await svc.kvPut('svc.mem', mem);
      const where = placement === 'local' ? 0 : 1;
      const [a, b] = [await c.proc(where, 'a'), await c.proc(where, 'b')];
      const ea = await a.kvWait('fs.stat');
      t.is(EchoReply.decode(await a.rpc(ea, Echo, { x: 1 })).imms.y, 2);
      await a.capRevoke(ea);
      t.is(await codeOf(a.rpc(ea, Echo, { x: 1 })), 'EREVOKED', "a's own cap is revoked");
      // b (and a, asking again) still reach the service; the publisher keeps its root
      const eb = await b.kvWait('fs.stat');
      t.is(EchoReply.decode(await b.rpc(eb, Echo, { x: 2 })).imms.y, 4);
      t.is(EchoReply.decode(await a.rpc(await a.kvGet('fs.stat'), Echo, { x: 3 })).imms.y, 6);
      t.is(EchoReply.decode(await svc.rpc(own, Echo, { x: 4 })).imms.y, 8);
      // the same for a published Memory
      const ma = await a.kvWait('svc.mem');
      await a.capRevoke(ma);
      const mb = await b.kvGet('svc.mem');
      const dst = await b.memoryCreateShared(4096);
      await b.memoryCopy(mb, dst.cid);
      t.is(dst.region.bytes[4095], 7);
      // the publisher's revocation still reaches every getter
      await svc.capRevoke(own);
      t.is(await codeOf(b.rpc(eb, Echo, { x: 5 }, {}, { timeoutMs: 5000 })), 'EREVOKED');
    } finally {
      await c.stop();
    }
  });
}

// ------------------------------------------------------------------------------------------
// Item 12: a served-memory access that never completes fails with ETIMEDOUT

test('served memory: an owner that never answers fails the copy with ETIMEDOUT; late answers are ignored', async (t) => {
  const c = await cluster(2, { servedTimeoutMs: 200 });
  try {
    const owner = await c.proc(0, 'owner');
    const never = { read: () => new Promise<Uint8Array>(() => {}), write: () => new Promise<void>(() => {}) };
    let late: (() => void)[] = [];
    const slow = {
      read: (_o: number, len: number) => new Promise<Uint8Array>((r) => late.push(() => r(new Uint8Array(len).fill(3)))),
      write: () => new Promise<void>((r) => late.push(r)),
    };
    const prompt = { read: (_o: number, len: number) => new Uint8Array(len).fill(9), write: () => {} };
    await owner.kvPut('never', await owner.memoryCreateServed(65536, Perm.RW, never));
    await owner.kvPut('slow', await owner.memoryCreateServed(4096, Perm.RW, slow));
    await owner.kvPut('prompt', await owner.memoryCreateServed(4096, Perm.RW, prompt));
    for (const where of [0, 1]) {
      const cl = await c.proc(where, `client${where}`);
      const local = await cl.memoryCreateShared(65536);
      const nv = await cl.kvWait('never');
      // reads (served -> local) and writes (local -> served), on the owner's Controller and across
      const results = await Promise.all([
        ...Array.from({ length: 10 }, () => codeOf(cl.memoryCopy(nv, local.cid))),
        ...Array.from({ length: 10 }, () => codeOf(cl.memoryCopy(local.cid, nv))),
      ]);
      t.deepEqual([...new Set(results)], ['ETIMEDOUT']);
      // a late answer is ignored: the owner's channel stays up, its other Memory still works
      late = [];
      const sl = await cl.kvWait('slow');
      const small = await cl.memoryCreateShared(4096);
      t.is(await codeOf(cl.memoryCopy(sl, small.cid)), 'ETIMEDOUT');
      t.is(await codeOf(cl.memoryCopy(small.cid, sl)), 'ETIMEDOUT');
      for (const f of late) f();
      await owner.nullOp();
      t.false(owner.closed);
      await cl.memoryCopy(await cl.kvWait('prompt'), small.cid);
      t.is(small.region.bytes[100], 9);
    }
  } finally {
    await c.stop();
  }
});

test('served-memory timeout option: an integer number of ms (EINVAL otherwise)', async (t) => {
  const dir = tempDir();
  for (const bad of [0, -1, 1.5, Number.NaN]) {
    const err = await Controller.start({ id: 1, listen: [`unix:${join(dir, 'c.sock')}`], stateDir: join(dir, 's'), servedTimeoutMs: bad }).then(
      (c) => c.close().then(() => null),
      (e: FractosError) => e,
    );
    t.is(err?.code, 'EINVAL');
  }
});

// ------------------------------------------------------------------------------------------
// Item 13: immediates that do not decode are answered through onError

const Open = defineRequest('field.open', { path: { str: 100 }, offset: 'u64' }, ['onSuccess', 'onError'] as const);
/** The same Request as a hostile client sees it: raw bytes where the fields are. */
const RawOpen = defineRequest('field.open', { path: { bytes: 102 }, offset: { bytes: 8 } }, ['onSuccess', 'onError'] as const);
const OpenReply = defineReply('field.open.reply', { n: 'u32' }, [] as const);

test('malformed immediates reach onError (EINVAL) instead of hanging; without onError they are dropped with a report', async (t) => {
  const c = await cluster(1);
  try {
    const svc = await c.proc(0, 'svc');
    let handled = 0;
    svc.serve(Open, async ({ imms, caps }) => {
      handled++;
      await svc.invoke(caps.onSuccess, OpenReply, { n: imms.path.length + imms.offset });
    });
    const reports: Error[] = [];
    svc.on('handlerError', (err: Error) => reports.push(err));
    await svc.kvPut('open', await svc.createRequest(Open));
    const cl = await c.proc(0, 'client');
    const open = await cl.kvGet('open');
    t.is(OpenReply.decode(await cl.rpc(open, Open, { path: 'abc', offset: 5 })).imms.n, 8);
    // a length prefix of 60000 for a 100-byte string
    const badLen = Buffer.alloc(2);
    badLen.writeUInt16LE(60000, 0);
    const e1 = await cl.rpc(open, RawOpen, { path: badLen }, {}, { timeoutMs: 5000 }).then(() => null, (e: FractosError) => e);
    t.is(e1?.code, 'EINVAL', e1?.message);
    t.regex(e1!.message, /path/);
    // an offset of 2^53
    const big = Buffer.alloc(8);
    big.writeUInt32LE(0x200000, 4);
    const e2 = await cl.rpc(open, RawOpen, { offset: big }, {}, { timeoutMs: 5000 }).then(() => null, (e: FractosError) => e);
    t.is(e2?.code, 'EINVAL', e2?.message);
    t.regex(e2!.message, /offset/);
    t.is(handled, 1, 'the handler never saw a malformed delivery');
    // no continuation: dropped, and the service says why
    await cl.invoke(open, RawOpen, { path: badLen });
    await until(() => reports.length === 1);
    t.is((reports[0] as FractosError).code, 'EINVAL');
    // the service still serves
    t.is(OpenReply.decode(await cl.rpc(open, Open, { path: 'x', offset: 1 })).imms.n, 2);
  } finally {
    await c.stop();
  }
});

// ------------------------------------------------------------------------------------------
// Item 15: arguments of a delivery that waits are pinned

for (const placement of ['local', 'remote'] as const) {
  test(`a derived argument dropped while its delivery waits for credits still reaches the provider live (${placement})`, async (t) => {
    const c = await cluster(placement === 'local' ? 1 : 2, { limits: { maxOutstandingDeliveries: 1 } });
    try {
      const prov = await c.proc(0, 'provider');
      const seen: string[] = [];
      prov.onRequest(77, async (inv) => {
        const buf = inv.caps[0];
        if (!buf) return;
        const mine = await prov.memoryCreateShared(4096);
        const r = await codeOf(prov.memoryCopy(buf, mine.cid));
        seen.push(r === 'OK' ? `copied ${mine.region.bytes[10]}` : r);
      });
      await prov.kvPut('r', await prov.requestCreate(77));
      const inv = await c.proc(placement === 'local' ? 0 : 1, 'invoker');
      const r = await inv.kvWait('r');
      prov.pause(); // takes no deliveries: credits run out
      await inv.requestInvoke(r); // uses the only credit
      const { cid: mem, region } = await inv.memoryCreateShared(4096);
      region.bytes.fill(42);
      const view = await inv.memoryDiminish(mem, 0, 4096); // a derived object: collected once unreferenced
      const queued = inv.requestInvoke(r, { caps: [{ slot: 0, cap: view }] });
      await inv.nullOp(); // the invocation has reached the Controller (and its peer)
      if (placement === 'remote') await new Promise((res) => setTimeout(res, 100));
      await inv.capDrop(view);
      prov.resume();
      await queued;
      await until(() => seen.length === 1);
      t.deepEqual(seen, ['copied 42']);
    } finally {
      await c.stop();
    }
  });
}

// ------------------------------------------------------------------------------------------
// Item 16: a 0-byte copy is checked like any other, locally and across Controllers

test('a 0-byte memory_copy into read-only Memory is EPERM locally and on another Controller', async (t) => {
  const c = await cluster(2);
  try {
    const owner = await c.proc(0, 'owner');
    const { cid: mem } = await owner.memoryCreateShared(4096);
    await owner.kvPut('ro', await owner.memoryDiminish(mem, 0, 4096, Perm.WRITE));
    await owner.kvPut('req', await owner.requestCreate(5));
    for (const where of [0, 1]) {
      const cl = await c.proc(where, `client${where}`);
      const { cid: src } = await cl.memoryCreateShared(4096);
      const empty = await cl.memoryDiminish(src, 0, 0);
      const ro = await cl.kvWait('ro');
      t.is(await codeOf(cl.memoryCopy(empty, ro)), 'EPERM', `controller ${where + 1}, before memory_stat`);
      await cl.memoryStat(ro); // caches the description of a remote Memory
      t.is(await codeOf(cl.memoryCopy(empty, ro)), 'EPERM', `controller ${where + 1}, after memory_stat`);
      t.is(await codeOf(cl.memoryCopy(empty, await cl.kvGet('req'))), 'ETYPE', `controller ${where + 1}: into a Request`);
      // and from a remote 0-byte source into a local read-only Memory
      const myRo = await cl.memoryDiminish(src, 0, 4096, Perm.WRITE);
      await owner.kvPut(`empty${where}`, await owner.memoryDiminish(mem, 0, 0));
      t.is(await codeOf(cl.memoryCopy(await cl.kvWait(`empty${where}`), myRo)), 'EPERM');
    }
  } finally {
    await c.stop();
  }
});

// ------------------------------------------------------------------------------------------
// Item 17: errors in the documented order (EPROTO, EBADCAP, EREVOKED, ETYPE, EPERM, ERANGE)

/** Send `frame` after a HELLO on a raw channel; resolves with the code of the reply to seq 77 and whether the channel was closed. */
async function rawCall(addr: string, frame: Buffer): Promise<{ code: number; closed: boolean }> {
  const s = net.createConnection(addr.slice(5));
  await new Promise((r) => s.once('connect', r));
  const hello = allocFrame(Op.HELLO, 1, 8);
  hello.writeUInt32LE(process.pid, 16);
  hello.writeUInt32LE(0, 20);
  let data = Buffer.alloc(0);
  let closed = false;
  s.on('data', (d: Buffer) => (data = Buffer.concat([data, d])));
  s.on('close', () => (closed = true));
  s.write(Buffer.concat([hello, frame]));
  await until(() => {
    const first = data.length >= 4 ? data.readUInt32LE(0) : Infinity;
    return data.length >= first + 16;
  });
  const code = data.readUInt16LE(data.readUInt32LE(0) + 12);
  await new Promise((r) => setTimeout(r, 100));
  s.destroy();
  return { code, closed };
}

test('a malformed body is EPROTO (channel closed) before any cid lookup', async (t) => {
  const c = await cluster(1);
  try {
    for (const op of [Op.REQUEST_INVOKE, Op.REQUEST_DERIVE]) {
      // cid 12345 is not in the space, and the args say 5 caps but carry none
      const f = allocFrame(op, 77, 8);
      f.writeUInt32LE(12345, 16);
      f.writeUInt16LE(5, 20);
      const r = await rawCall(c.addr[0]!, f);
      t.is(r.code, 6, `op ${op}: EPROTO`);
      t.true(r.closed, `op ${op}: channel closed`);
    }
  } finally {
    await c.stop();
  }
});

test('a type mismatch is ETYPE before a range error, locally and across Controllers', async (t) => {
  const c = await cluster(2);
  try {
    const owner = await c.proc(0, 'owner');
    const { cid: mem } = await owner.memoryCreateShared(4096);
    await owner.kvPut('mem', mem);
    await owner.kvPut('req', await owner.requestCreate(5));
    for (const where of [0, 1]) {
      const cl = await c.proc(where, `client${where}`);
      const m = await cl.kvWait('mem');
      const farImm = { imms: [{ offset: 70000, bytes: Buffer.from([1]) }] };
      const bigSlot = { caps: [{ slot: 100, cap: m }] };
      for (const args of [farImm, bigSlot]) {
        t.is(await codeOf(cl.requestInvoke(m, args)), 'ETYPE', `invoke on Memory, controller ${where + 1}`);
        t.is(await codeOf(cl.requestDerive(m, args)), 'ETYPE', `derive on Memory, controller ${where + 1}`);
      }
      // memory_copy: the destination's type before the source's rights
      const { cid: src } = await cl.memoryCreateShared(4096);
      const unreadable = await cl.memoryDiminish(src, 0, 4096, Perm.READ);
      t.is(await codeOf(cl.memoryCopy(unreadable, await cl.kvGet('req'))), 'ETYPE');
      // and a Request with arguments out of range is still ERANGE
      const req = await cl.kvGet('req');
      t.is(await codeOf(cl.requestDerive(req, farImm)), 'ERANGE');
    }
  } finally {
    await c.stop();
  }
});

for (const placement of ['local', 'remote'] as const) {
  test(`kv_get (${placement}): monitor_delegate still fires once every getter's cap is gone`, async (t) => {
    const c = await cluster(placement === 'local' ? 1 : 2);
    try {
      const svc = await c.proc(0, 'svc');
      const req = await svc.requestCreate(9);
      let fired = 0;
      await svc.monitorDelegate(req, () => fired++);
      await svc.kvPut('r', req);
      const g = await c.proc(placement === 'local' ? 0 : 1, 'getter');
      const x = await g.kvWait('r');
      await svc.kvPut('r', await svc.requestCreate(10)); // unpin the name
      await svc.nullOp();
      t.is(fired, 0, 'the getter still holds its child');
      await g.capDrop(x);
      await until(() => fired === 1);
      t.is(fired, 1);
    } finally {
      await c.stop();
    }
  });
}

/**
 * Several Controllers as real OS processes, peers over TCP: delegation across
 * Controllers, revocation, use after revoke from a third Controller, copies across,
 * kill -9 of a provider, restarted Controllers' stale caps, replicated names.
 */
import test from 'ava';
import { join } from 'node:path';
import { connect, Perm, type Process } from '../libfractos/index.js';
import { Echo, EchoReply } from './fixtures/provider.js';
import { REPO_ROOT, clusterSpecs, spawnNode, startController, type ControllerSpec, type Spawned } from './helpers/spawn.js';
import { codeOf as code } from './helpers/errors.js';

const PROVIDER = join(REPO_ROOT, 'dist', 'test', 'fixtures', 'provider.js');

async function cluster(n: number): Promise<{ specs: ControllerSpec[]; ctl: Spawned[]; procs: Process[]; stop(): Promise<void> }> {
  const specs = await clusterSpecs(n);
  const ctl = await Promise.all(specs.map((s) => startController(s, specs)));
  const procs: Process[] = [];
  // wait until every Controller sees every peer: a name put on the last one reaches the first
  const probe = await connect(specs[n - 1]!.unix);
  await probe.kvPut(`probe`, await probe.requestCreate(1));
  for (const s of specs) {
    const p = await connect(s.unix);
    await p.kvWait('probe', 10_000);
    await p.close();
  }
  return {
    specs,
    ctl,
    procs,
    stop: async () => {
      for (const p of procs) await p.close();
      await probe.close();
      await Promise.all(ctl.map((c) => c.stop()));
    },
  };
}


/**
 * Arm a monitor and wait until the Controller took it (its call answered), so that an event
 * that follows cannot overtake the registration. Resolves to `{ fired }`, the promise of the
 * reason (wrapped: an async function would otherwise wait for it).
 */
async function monitorArmed(arm: (res: (reason: string) => void) => Promise<void>): Promise<{ fired: Promise<string> }> {
  let fire!: (reason: string) => void;
  const fired = new Promise<string>((res) => (fire = res));
  await arm(fire);
  return { fired };
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('a cap delegated across Controllers works like a local one: invoke, copy, derive, revoke, monitor', async (t) => {
  const c = await cluster(3);
  const prov = await spawnNode([PROVIDER, c.specs[1]!.unix, 'echo2'], /^ready/);
  try {
    const a = await connect(c.specs[0]!.unix, { name: 'client-a' });
    const z = await connect(c.specs[2]!.unix, { name: 'client-z' });
    c.procs.push(a, z);
    const echo = await a.kvWait('echo2');
    // invoke across: the reply continuation lives on controller 1, the provider on 2
    const r = EchoReply.decode(await a.rpc(echo, Echo, { x: 21 })).imms;
    t.deepEqual(r, { y: 42, controller: 2 });
    // derive across: arguments fixed at the owner
    const d = await a.requestDerive(echo, Echo.args({ x: 5 }));
    t.is(await code(a.requestDerive(d, Echo.args({ x: 6 }))), 'EARGSET');
    t.is(EchoReply.decode(await a.rpc(d, Echo)).imms.y, 10);
    // copy across: controller 2's memory into controller 1's
    const mem = await a.kvWait('echo2.mem');
    const local = await a.memoryCreateShared(1 << 20);
    await a.memoryCopy(mem, local.cid);
    t.true(local.region.bytes.every((b) => b === 0x5a));
    // diminish across cannot widen
    const ro = await a.memoryDiminish(mem, 0, 4096, Perm.WRITE);
    t.is((await a.memoryStat(ro)).perms, Perm.READ);
    // checks in a fixed order: rights first, then range
    t.is(await code(a.memoryCopy(local.cid, ro)), 'EPERM');
    const rw = await a.memoryDiminish(mem, 0, 4096);
    t.is(await code(a.memoryCopy(local.cid, rw)), 'ERANGE');
    const small = await a.memoryDiminish(local.cid, 0, 4096);
    t.is(await code(a.memoryCopy(small, ro)), 'EPERM');
    // a revtree child made by client a, handed to client z through a name (third Controller)
    const child = await a.capCreateRevtree(echo);
    await a.kvPut('child', child);
    const zc = await z.kvWait('child');
    t.is(EchoReply.decode(await z.rpc(zc, Echo, { x: 1 })).imms.y, 2);
    const { fired } = await monitorArmed((res) => z.monitorReceive(zc, res));
    await a.capRevoke(child);
    // revocation at the owner is immediate for every holder
    t.is(await code(z.rpc(zc, Echo, { x: 1 })), 'EREVOKED');
    t.is(await fired, 'revoked');
    // the parent is intact
    t.is(EchoReply.decode(await z.rpc(await z.kvWait('echo2'), Echo, { x: 3 })).imms.y, 6);
  } finally {
    await prov.stop();
    await c.stop();
  }
});

test('kill -9 of a provider fires monitor_receive at a client on another Controller', async (t) => {
  const c = await cluster(2);
  const prov = await spawnNode([PROVIDER, c.specs[1]!.unix, 'victim'], /^ready/);
  try {
    const a = await connect(c.specs[0]!.unix, { name: 'client' });
    c.procs.push(a);
    const echo = await a.kvWait('victim');
    t.is(EchoReply.decode(await a.rpc(echo, Echo, { x: 2 })).imms.y, 4);
    const { fired } = await monitorArmed((res) => a.monitorReceive(echo, res));
    await prov.kill9();
    t.is(await fired, 'owner-failed');
    t.is(await code(a.rpc(echo, Echo, { x: 2 })), 'EREVOKED');
  } finally {
    await prov.stop();
    await c.stop();
  }
});

test('a restarted Controller: caps to its old objects are EREVOKED (epochs); monitors fire on the crash', async (t) => {
  const c = await cluster(2);
  const prov = await spawnNode([PROVIDER, c.specs[1]!.unix, 'old'], /^ready/);
  try {
    const a = await connect(c.specs[0]!.unix, { name: 'client' });
    c.procs.push(a);
    const echo = await a.kvWait('old');
    const { fired } = await monitorArmed((res) => a.monitorReceive(echo, res));
    await c.ctl[1]!.kill9();
    t.is(await fired, 'owner-failed');
    c.ctl[1] = await startController(c.specs[1]!, c.specs);
    const prov2 = await spawnNode([PROVIDER, c.specs[1]!.unix, 'new'], /^ready/);
    try {
      const fresh = await a.kvWait('new', 10_000);
      t.is(EchoReply.decode(await a.rpc(fresh, Echo, { x: 4 })).imms.y, 8);
      t.is(await code(a.rpc(echo, Echo, { x: 4 })), 'EREVOKED');
      t.is(await code(a.requestDerive(echo, Echo.args({ x: 1 }))), 'EREVOKED');
    } finally {
      await prov2.stop();
    }
  } finally {
    await prov.stop();
    await c.stop();
  }
});

test('revocation through a shared revtree reaches holders on every Controller; stale entries are cleaned', async (t) => {
  const c = await cluster(3);
  try {
    const owner = await connect(c.specs[0]!.unix, { name: 'owner' });
    const h2 = await connect(c.specs[1]!.unix, { name: 'h2' });
    const h3 = await connect(c.specs[2]!.unix, { name: 'h3' });
    c.procs.push(owner, h2, h3);
    const req = await owner.requestCreate(3);
    let got = 0;
    owner.onRequest(3, () => {
      got++;
    });
    const shared = await owner.capCreateRevtree(req);
    await owner.kvPut('shared', shared);
    const x2 = await h2.kvWait('shared');
    const x3 = await h3.kvWait('shared');
    await h2.requestInvoke(x2);
    await h3.requestInvoke(x3);
    await until(() => got === 2);
    const events: string[] = [];
    await h2.monitorReceive(x2, (e) => events.push(`h2:${e}`));
    await h3.monitorReceive(x3, (e) => events.push(`h3:${e}`));
    await owner.capRevoke(shared);
    t.is(await code(h2.requestInvoke(x2)), 'EREVOKED');
    t.is(await code(h3.requestInvoke(x3)), 'EREVOKED');
    await until(() => events.length === 2);
    t.deepEqual(events.sort(), ['h2:revoked', 'h3:revoked']);
    // the owner's own Request still works
    await owner.requestInvoke(req);
    await until(() => got === 3);
  } finally {
    await c.stop();
  }
});

test('deliveries describe Memory caps owned by another Controller (no memory_stat across)', async (t) => {
  const c = await cluster(2);
  try {
    const app = await connect(c.specs[0]!.unix, { name: 'app' });
    const dev = await connect(c.specs[1]!.unix, { name: 'adaptor', memoryDescriptors: true });
    c.procs.push(app, dev);
    const seen = new Promise<unknown>((res) => dev.onRequest(Echo.tag, (inv) => res(inv.memory(Echo.slot('buf')))));
    await dev.kvPut('dev', await dev.createRequest(Echo));
    const { cid } = await app.memoryCreateShared(16384);
    const view = await app.memoryDiminish(cid, 4096, 8192, Perm.WRITE);
    await app.invoke(await app.kvWait('dev'), Echo, { x: 1 }, { buf: view });
    t.deepEqual(await seen, { perms: Perm.READ, backing: 'shared', local: false, self: false, mappable: false, size: 8192, regionOffset: 0, servedKey: 0, regionKey: 0 });
  } finally {
    await c.stop();
  }
});

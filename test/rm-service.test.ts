// The resource manager (rm/, docs/rm.md) on one Controller: registration and choice by
// policy (least loaded, fewer grants, node affinity), grants revoked when their instance
// fails (kill -9 of an OS process) or unregisters, a re-ask gets the survivor, the bounds a
// hostile registrant or client runs into, and `fractos rm` as an OS process.
import test from 'ava';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, FractosError, type MonitorEvent, type Process } from '../libfractos/index.js';
import { Register, Release, RmClient, RmService, Update, type Grant } from '../rm/index.js';
import { Who, WhoReply, serveWho } from './fixtures/rm-instance.js';
import { REPO_ROOT, spawnFractos, spawnNode, tempDir, type Spawned } from './helpers/spawn.js';
import { codeOf as code } from './helpers/errors.js';
import { until } from './helpers/wait.js';

const INSTANCE = join(REPO_ROOT, 'dist', 'test', 'fixtures', 'rm-instance.js');
const dir = tempDir('fractos-rm-');
const address = `unix:${join(dir, 'c.sock')}`;
let controller: Controller;
let rmProc: Process;
let rm: RmService;
const procs: Process[] = [];
const children: Spawned[] = [];

test.before(async () => {
  controller = await Controller.start({ id: 1, listen: [address], stateDir: join(dir, 'state'), peers: new Map() });
  rmProc = await connect(address, { name: 'rm' });
  rm = await RmService.start(rmProc, { limits: { maxRegistrationsPerSession: 3, maxGrantsPerSession: 4, maxSessions: 12, maxMetaBytesPerSession: 400 } });
});

test.after.always(async () => {
  for (const c of children) await c.kill9().catch(() => {});
  for (const p of procs) await p.close().catch(() => {});
  await rm?.close();
  await rmProc?.close();
  await controller?.close();
});

async function proc(name: string): Promise<Process> {
  const p = await connect(address, { name });
  procs.push(p);
  return p;
}

/** Ask the granted `who` Request which instance serves it. */
async function who(g: Grant): Promise<string> {
  return WhoReply.decode(await g.client.p.rpc(g.request('who'), Who, {}, {}, { timeoutMs: 5000 })).imms.name;
}

/** Wait for a condition the RM makes true (fails the test with `what` after 5 s). */
async function settled(f: () => boolean, what: string): Promise<void> {
  if (!(await until(f, 5000))) throw new Error(`timed out waiting for ${what}`);
}

test.serial('register; acquire picks the least loaded, then the one with fewer grants, and honours node affinity', async (t) => {
  const a = await proc('inst-a');
  const b = await proc('inst-b');
  const ra = await (await RmClient.connect(a)).register({ kind: 'echo', name: 'a', node: 1, capacity: 4, requests: { who: await serveWho(a, 'a') } });
  const rb = await (await RmClient.connect(b)).register({ kind: 'echo', name: 'b', node: 2, capacity: 4, requests: { who: await serveWho(b, 'b') } });
  const app = await RmClient.connect(await proc('app-policy'));
  const g1 = await app.acquire('echo');
  const g2 = await app.acquire('echo');
  t.deepEqual([g1.name, g2.name], ['a', 'b'], 'equal load: fewer grants wins, then registration order');
  t.is(await who(g1), 'a', 'the granted Request reaches instance a');
  t.is(await who(g2), 'b');
  await ra.update(3);
  await rb.update(1);
  await settled(() => rm.snapshot().instances.find((i) => i.name === 'a')?.load === 3 && rm.snapshot().instances.find((i) => i.name === 'b')?.load === 1, 'load updates');
  const g3 = await app.acquire('echo');
  t.is(g3.name, 'b', 'load 1/4 beats 3/4');
  const g4 = await app.acquire('echo', { node: 1, affinity: 'require' });
  t.is(g4.name, 'a', 'node 1 required');
  t.is(g4.node, 1);
  const revoked = new Promise<MonitorEvent>((r) => void g1.onLost(r));
  await Promise.all([g1, g2, g3, g4].map((g) => g.release()));
  t.is(await revoked, 'revoked', 'a released grant is revoked');
  t.is(await code(app.acquire('echo', { node: 7, affinity: 'require' })), 'ENOENT');
  t.is((await app.acquire('echo', { node: 7 })).name, 'b', 'prefer falls back to the least loaded');
  t.is(await code(app.acquire('nothing')), 'ENOENT');
  await ra.unregister();
  await rb.unregister();
  await app.close();
  t.is(rm.snapshot().instances.length, 0);
});

test.serial('unregister revokes the grants: the holder sees the monitor fire and EREVOKED', async (t) => {
  const a = await proc('inst-u');
  const reg = await (await RmClient.connect(a)).register({ kind: 'echo', name: 'u', requests: { who: await serveWho(a, 'u') } });
  const app = await RmClient.connect(await proc('app-u'));
  const g = await app.acquire('echo');
  const fired = new Promise<MonitorEvent>((r) => void g.onLost(r));
  await reg.unregister();
  t.is(await fired, 'revoked');
  t.is(await code(who(g)), 'EREVOKED');
  t.is(await code(app.acquire('echo')), 'ENOENT');
  await app.close();
});

test.serial('kill -9 of an instance revokes its grants; a re-ask gets the survivor', async (t) => {
  for (const n of ['k1', 'k2']) children.push(await spawnNode([INSTANCE, address, 'rm', 'echo', n, '1'], /^ready id=\d+/));
  const app = await RmClient.connect(await proc('app-k'));
  const g = await app.acquire('echo');
  t.is(g.name, 'k1');
  t.is(await who(g), 'k1');
  const lost = new Promise<MonitorEvent>((r) => void g.onLost(r));
  const before = rm.snapshot().grants;
  await children[0]!.kill9();
  // The Controller fires owner-failed; the RM, seeing the instance fail, revokes its grant:
  // whichever reaches the holder first (load decides) is the event.
  t.regex(await lost, /owner-failed|revoked/);
  t.regex(String(await code(who(g))), /EREVOKED|EDISCONNECTED/);
  await settled(() => !rm.snapshot().instances.some((i) => i.name === 'k1'), 'k1 removed');
  t.is(rm.snapshot().grants, before - 1, 'the dead instance\'s grant is gone from the RM');
  const again = await app.acquire('echo');
  t.is(again.name, 'k2');
  t.is(await who(again), 'k2');
  // Another registrant may take the dead one's name now.
  const p = await proc('k1-again');
  const r = await (await RmClient.connect(p)).register({ kind: 'echo', name: 'k1', requests: { who: await serveWho(p, 'k1-again') } });
  await r.unregister();
  await again.release();
  await children[1]!.kill9();
  await settled(() => !rm.snapshot().instances.some((i) => i.name === 'k2'), 'k2 removed');
  await app.close();
});

test.serial('hostile registrant: bad fields, Memory caps, a taken name, preset arguments and the per-session bounds', async (t) => {
  const h = await proc('hostile');
  const c = await RmClient.connect(h);
  const req = await serveWho(h, 'h');
  const reg = (spec: Partial<Parameters<RmClient['register']>[0]>): Promise<string> => code(c.register({ kind: 'echo', name: 'h', requests: { who: req }, ...spec }));
  t.is(await reg({ kind: 'GPU!' }), 'EINVAL');
  t.is(await reg({ kind: '' }), 'EINVAL');
  t.is(await reg({ name: '../x' }), 'EINVAL');
  t.is(await reg({ capacity: 0 }), 'EINVAL');
  t.is(await reg({ requests: { 'Bad Name': req } }), 'EINVAL');
  const { cid: mem } = await h.memoryCreateShared(4096);
  t.is(await reg({ requests: { mem } }), 'ETYPE');
  // names and slots that disagree (raw Register: a name with no cap).
  t.is(await code(h.rpc(c.registerCid, Register, { kind: 'echo', name: 'h', capacity: 1, names: 'who,extra' }, { r0: req }, { timeoutMs: 5000 })), 'EINVAL');
  // The session id is preset: a registrant cannot register into another session.
  t.is(await code(h.rpc(c.registerCid, Register, { session: 999, kind: 'echo', name: 'h', capacity: 1, names: 'who' }, { r0: req }, { timeoutMs: 5000 })), 'EARGSET');
  const first = await c.register({ kind: 'echo', name: 'h1', requests: { who: req } });
  // Another session cannot take a live instance's name.
  // (With a Request of its own: `req` is a cid of h's space, which means nothing, or something else, in other's.)
  const op = await proc('other');
  const other = await RmClient.connect(op);
  t.is(await code(other.register({ kind: 'echo', name: 'h1', requests: { who: await serveWho(op, 'o') } })), 'EEXIST');
  // ... nor update or end it: those Requests carry their registration preset.
  t.is(await code(h.rpc(first.updateCid, Update, { reg: 12345, load: 1 }, {}, { timeoutMs: 5000 })), 'EARGSET');
  await c.register({ kind: 'echo', name: 'h2', requests: { who: req } });
  await c.register({ kind: 'echo', name: 'h3', requests: { who: req } });
  t.is(await reg({ name: 'h4' }), 'ENOSPC', 'registrations per session');
  await first.unregister();
  await c.register({ kind: 'echo', name: 'h4', requests: { who: req } });
  // A client: grants per session, and release only of its own grants.
  const grants: Grant[] = [];
  for (let i = 0; i < 4; i++) grants.push(await other.acquire('echo'));
  t.is(await code(other.acquire('echo')), 'ENOSPC', 'grants per session');
  t.is(await code(h.rpc(c.releaseCid, Release, { grant: grants[0]!.id }, {}, { timeoutMs: 5000 })), 'ENOENT', 'another session\'s grant');
  t.is(await code(who(grants[0]!)), 'OK');
  await grants[0]!.release();
  grants.shift();
  grants.push(await other.acquire('echo'));
  // Its Process going away ends the session: registrations and the names go, grants are revoked.
  const lost = new Promise<MonitorEvent>((r) => void grants[0]!.onLost(r));
  await h.close();
  t.regex(await lost, /revoked|owner-failed/);
  await settled(() => !rm.snapshot().instances.some((i) => i.name.startsWith('h')), 'hostile registrations removed');
  await settled(() => rm.snapshot().grants === 0, 'the grants of the gone instances revoked at the RM');
  for (const g of grants) g.drop();
  t.is(rm.snapshot().grants, 0, 'the grants of the gone instances are revoked at the RM');
  await other.close();
  t.is(await code(other.acquire('echo')), 'EBADCAP', 'a closed session\'s Requests are dropped');
});

test.serial('metadata bytes and sessions are bounded; closing a session frees its place', async (t) => {
  const p = await proc('meta');
  const req = await serveWho(p, 'm');
  const long = (i: number): string => `${'n'.repeat(60)}-${i}`;
  const c2 = await RmClient.connect(p);
  const big = Object.fromEntries(['b0', 'b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b7'].map((n) => [n + 'x'.repeat(19), req]));
  // 400 bytes of kind + name + names per session: one of 239 bytes fits, a second does not.
  await c2.register({ kind: 'k', name: long(5), requests: big });
  const e = await t.throwsAsync(c2.register({ kind: 'k', name: long(6), requests: big }));
  t.regex(e!.message, /ENOSPC: session metadata over 400 bytes/);
  await c2.close();
  // Sessions: 12 in all (some are open from earlier tests); the 13th is ENOSPC until one closes.
  const open: RmClient[] = [];
  let err = '';
  for (let i = 0; i < 13 && !err; i++) {
    try {
      open.push(await RmClient.connect(p));
    } catch (x) {
      err = (x as FractosError).code;
    }
  }
  t.is(err, 'ENOSPC');
  t.is(rm.snapshot().sessions, 12);
  await open.pop()!.close();
  await settled(() => rm.snapshot().sessions === 11, 'session closed');
  open.push(await RmClient.connect(p));
  for (const o of open) await o.close();
});

test.serial('fractos rm: ready line, instances register and are granted, and a stop revokes the sessions', async (t) => {
  const s = await spawnFractos(['rm', '--controller', address, '--name', 'rm2'], /^ready rm name=rm2 controller=1/);
  children.push(s);
  const p = await proc('cli-app');
  const inst = await proc('cli-inst');
  const reg = await (await RmClient.connect(inst, 'rm2')).register({ kind: 'echo', name: 'cli', requests: { who: await serveWho(inst, 'cli') } });
  const app = await RmClient.connect(p, 'rm2');
  const g = await app.acquire('echo');
  t.is(await who(g), 'cli');
  const lost = new Promise<MonitorEvent>((r) => void app.onLost(r));
  await s.stop();
  t.regex(await lost, /revoked|owner-failed/);
  t.is(await code(who(g)), 'EREVOKED');
  t.regex(s.output(), /rm: stopped on SIGTERM/);
  void reg;
});

test.serial('an RM killed with SIGKILL: grants already made keep working, sessions are lost, a new RM takes registrations again', async (t) => {
  const s = await spawnFractos(['rm', '--controller', address, '--name', 'rm3'], /^ready rm name=rm3/);
  children.push(s);
  // An instance kept registered by keepRegistered (what `fractos gpu|fs --rm` use).
  const kept = await spawnNode([INSTANCE, address, 'rm3', 'kept', 'kept-1', '1'], /^ready id=\d+/);
  children.push(kept);
  const inst = await proc('k-inst');
  const reg = await (await RmClient.connect(inst, 'rm3')).register({ kind: 'echo', name: 'survives', requests: { who: await serveWho(inst, 'survives') } });
  const app = await RmClient.connect(await proc('k-app'), 'rm3');
  const g = await app.acquire('echo');
  const lost = new Promise<MonitorEvent>((r) => void app.onLost(r));
  await s.kill9();
  t.is(await lost, 'owner-failed');
  t.is(await who(g), 'survives', 'a grant is a child of the instance\'s Request, not of the RM\'s');
  t.is(await code(app.acquire('echo')), 'EREVOKED');
  const s2 = await spawnFractos(['rm', '--controller', address, '--name', 'rm3'], /^ready rm name=rm3/);
  children.push(s2);
  const reg2 = await (await RmClient.connect(inst, 'rm3')).register({ kind: 'echo', name: 'survives', requests: { who: await serveWho(inst, 'survives') } });
  const app2 = await RmClient.connect(await proc('k-app2'), 'rm3');
  t.is((await app2.acquire('echo')).name, 'survives');
  const again = await app2.acquire('kept', { waitMs: 10_000 });
  t.is(await who(again), 'kept-1', 'keepRegistered registered again with the new RM');
  void reg;
  void reg2;
  await s2.stop();
});

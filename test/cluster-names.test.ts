/**
 * Bootstrap names in etcd (controller/names-etcd.ts behind the native core's NameStore):
 * Controllers as OS processes (`fractos controller --etcd`) on loopback with a real etcd.
 * A name put on one Controller is got on another; a second owner gets EEXIST; the
 * publisher's republish grows the revision (`fractos names` lists it); the name goes when
 * its Process closes, and with its Controller's lease on kill -9; an etcd restart during
 * traffic revokes nothing (kv ops fail typed, EAGAIN/ETIMEDOUT, within the bound while it
 * is down). Skips with the reason when etcd is not installed.
 */
import anyTest, { type TestFn } from 'ava';
import { listNames } from '../controller/names-etcd.js';
import { connect, defineReply, defineRequest, type Process } from '../libfractos/index.js';
import { codeOf } from './helpers/errors.js';
import { bed, killEtcd, NAMES_TIMEOUT_MS, noEtcd, TTL } from './helpers/etcd.js';
import { run } from './helpers/cli.js';
import { schedulingLag } from './helpers/wait.js';

const test = (noEtcd ? anyTest.skip : anyTest.serial) as TestFn;
if (noEtcd) anyTest(`etcd names tests skipped: ${noEtcd}`, (t) => t.pass());

/** etcd expires leases on a 500 ms tick; then the delete is applied. */
const SLACK = 1500;

const Who = defineRequest('cluster.names.who', {}, ['onSuccess', 'onError'] as const);
const WhoReply = defineReply('cluster.names.who.reply', { id: 'u32' }, [] as const);

async function who(p: Process, id: number): Promise<number> {
  p.serve(Who, async ({ caps }) => {
    await p.invoke(caps.onSuccess, WhoReply, { id });
  });
  return p.createRequest(Who);
}

/**
 * Which server answers the Request published as `name`, asked by `p`; retried while the
 * peer link to the publisher's Controller comes up (EREVOKED 'not connected' until then).
 */
async function ask(p: Process, name: string): Promise<number> {
  for (let i = 0; ; i++) {
    let cid = 0;
    try {
      cid = await p.kvGet(name);
      return WhoReply.decode(await p.rpc(cid, Who, {}, {}, { timeoutMs: 3000 })).imms.id;
    } catch (err) {
      if (i >= 50 || (err as { code?: string }).code === 'ENOENT') throw err;
      await new Promise((r) => setTimeout(r, 100));
    } finally {
      if (cid) await p.capDrop(cid).catch(() => {});
    }
  }
}

/** ms until `p` gets ENOENT for `name` (null: not within `ms`). */
async function gone(p: Process, name: string, ms = 10_000): Promise<number | null> {
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    const code = await codeOf(p.kvGet(name).then((c) => p.capDrop(c)));
    if (code === 'ENOENT') return performance.now() - t0;
    await new Promise((r) => setTimeout(r, 20));
  }
  return null;
}

test('names across Controllers on etcd: put on one, get on another; EEXIST for a second owner; republish grows the revision; fractos names lists it; gone with its Process', async (t) => {
  const b = await bed(t);
  await b.start(1);
  await b.start(2);
  const a = await connect(b.unix(1), { name: 'svc' });
  const z = await connect(b.unix(2), { name: 'client' });
  const m = await connect(b.unix(2), { name: 'mallory' });
  try {
    t.is(await codeOf(z.kvGet('svc.who')), 'ENOENT');
    await a.kvPut('svc.who', await who(a, 1));
    t.is(await ask(z, 'svc.who'), 1);
    const [first] = await listNames(b.admin, '/fractos');
    t.like(first, { name: 'svc.who', controller: 1, proc: 1 });
    // one value per name cluster-wide: a Process on another Controller cannot take it
    const err = await m.kvPut('svc.who', await who(m, 666)).then(() => null, (e: Error) => e);
    t.is((err as { code?: string } | null)?.code, 'EEXIST');
    t.regex(err!.message, /^EEXIST: 'svc\.who' is published by process 1 of controller 1 \(epoch \d+\) at revision \d+; only its publisher can replace it$/);
    // the publisher replaces its own value: the revision grows, the creation stays
    await a.kvPut('svc.who', await who(a, 2));
    const [second] = await listNames(b.admin, '/fractos');
    t.true(second!.revision > first!.revision, `${second!.revision} > ${first!.revision}`);
    t.is(second!.createRevision, first!.createRevision);
    t.not(second!.lease, '');
    t.is(await ask(z, 'svc.who'), 2);
    // fractos names
    const cli = run(['bin/fractos.js', 'names', '--etcd', b.url, '--json']);
    t.is((await cli.exit).code, 0, cli.out());
    const listed = JSON.parse(cli.out()) as { name: string; controller: number; revision: number }[];
    t.like(listed.find((n) => n.name === 'svc.who'), { controller: 1, revision: second!.revision });
    // one Controller's view (KV_LIST): its own names, with the etcd revisions
    const own = await a.kvList();
    t.true(own.external);
    t.deepEqual(own.names.map((n) => [n.name, n.revision, n.since]), [['svc.who', second!.revision, second!.createRevision]]);
    t.deepEqual((await z.kvList()).names, []);
    // bad names: typed errors, nothing stored
    t.is(await codeOf(m.kvPut('x'.repeat(257), await m.requestCreate(7))), 'EINVAL');
    t.is(await codeOf(z.kvGet('y'.repeat(300))), 'EINVAL');
    // the name goes with its Process
    await a.close();
    const ms = await gone(z, 'svc.who');
    t.not(ms, null);
    t.deepEqual(await listNames(b.admin, '/fractos'), []);
    // and is free for another publisher
    await m.kvPut('svc.who', await who(m, 3));
    t.is(await ask(z, 'svc.who'), 3);
  } finally {
    for (const p of [a, z, m]) await p.close().catch(() => {});
  }
});

test('names vanish with their Controller\'s lease (kill -9) within the TTL', async (t) => {
  const b = await bed(t);
  const c1 = await b.start(1);
  await b.start(2);
  const a = await connect(b.unix(1), { name: 'svc' });
  const z = await connect(b.unix(2), { name: 'client' });
  try {
    await a.kvPut('svc.a', await who(a, 1));
    await a.kvPut('svc.b', await who(a, 1));
    t.is(await ask(z, 'svc.a'), 1);
    const t0 = performance.now();
    const lag = schedulingLag();
    await c1.kill9();
    // gone from etcd once the lease expires (not at the TCP close: the lease is the detector)
    while ((await listNames(b.admin, '/fractos')).length) {
      if (performance.now() - t0 > 30_000) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const ms = performance.now() - t0;
    // wake-ups: etcd's lease check, its answer to the listing, this process
    const bound = TTL + SLACK + 3 * lag.stop();
    t.log(`kill -9 -> names gone from etcd: ${ms.toFixed(0)} ms (TTL ${TTL} ms, bound ${bound.toFixed(0)} ms)`);
    t.deepEqual(await listNames(b.admin, '/fractos'), []);
    t.true(ms < bound, `${ms} ms`);
    t.is(await codeOf(z.kvGet('svc.a')), 'ENOENT');
  } finally {
    for (const p of [a, z]) await p.close().catch(() => {});
  }
});

test('etcd restarted during traffic: kv ops fail typed (EAGAIN/ETIMEDOUT) within the bound while it is down, nothing is revoked, names stay', async (t) => {
  const b = await bed(t);
  await b.start(1);
  await b.start(2);
  const a = await connect(b.unix(1), { name: 'svc' });
  const z = await connect(b.unix(2), { name: 'client' });
  try {
    await a.kvPut('svc.who', await who(a, 1));
    const held = await z.kvGet('svc.who');
    t.is(WhoReply.decode(await z.rpc(held, Who, {}, {}, { timeoutMs: 3000 })).imms.id, 1);
    // traffic: invocations on the held cap and kv_gets, while etcd is killed and restarted
    const codes = new Map<string, number>();
    let worst = 0;
    let invokes = 0;
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        const t0 = performance.now();
        const code = await codeOf(z.kvGet('svc.who').then((c) => z.capDrop(c)));
        worst = Math.max(worst, performance.now() - t0);
        codes.set(code, (codes.get(code) ?? 0) + 1);
        WhoReply.decode(await z.rpc(held, Who, {}, {}, { timeoutMs: 3000 }));
        invokes++;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    const lag = schedulingLag();
    await killEtcd(b.etcd);
    const downAt = performance.now();
    // while it is down a put fails typed within the bound
    const p0 = performance.now();
    const putCode = await codeOf(a.kvPut('svc.other', await a.requestCreate(2)));
    const putMs = performance.now() - p0;
    t.true(['EAGAIN', 'ETIMEDOUT'].includes(putCode), putCode);
    // the bound: the Controller's kv timeout, 1 s, and the wake-ups of this process, the
    // Controller's loop and its etcd client, each late by at most the measured scheduling lag
    const bound = (): number => NAMES_TIMEOUT_MS + 1000 + 3 * lag.stop();
    t.true(putMs < bound(), `${putMs} ms (bound ${bound()} ms)`);
    await new Promise((r) => setTimeout(r, Math.max(0, 500 - (performance.now() - downAt))));
    await b.restartEtcd();
    await new Promise((r) => setTimeout(r, 1000));
    stop = true;
    await traffic;
    t.log(`kv_get outcomes during the restart: ${JSON.stringify(Object.fromEntries(codes))}; slowest ${worst.toFixed(0)} ms; ${invokes} invocations`);
    for (const c of codes.keys()) t.true(['OK', 'EAGAIN', 'ETIMEDOUT'].includes(c), c);
    t.true(worst < bound(), `${worst} ms (bound ${bound()} ms)`);
    // nothing was revoked, the name (and its lease) survived
    t.is(WhoReply.decode(await z.rpc(held, Who, {}, {}, { timeoutMs: 3000 })).imms.id, 1);
    t.is(await ask(z, 'svc.who'), 1);
    t.like((await listNames(b.admin, '/fractos'))[0], { name: 'svc.who', controller: 1 });
  } finally {
    for (const p of [a, z]) await p.close().catch(() => {});
  }
});

test('a Controller restarted before its lease expired does not serve its earlier epoch\'s names; its Processes take them over at once', async (t) => {
  const b = await bed(t);
  // A lease far longer than the restart below (5 s under the sanitizers, 16 s seen on a
  // machine at load 20): the earlier epoch's names are still in etcd when it is back. Its end
  // is not waited for: the test revokes it, as etcd does at the TTL (the keys go with it).
  const LONG = 60_000;
  // and kv ops that wait for etcd as long as it takes: this test checks what they answer,
  // not their bound (1.5 s was exceeded by etcd at load 25: ETIMEDOUT)
  const KV_MS = 30_000;
  const c1 = await b.start(1, LONG, KV_MS);
  await b.start(2, TTL, KV_MS);
  const a = await connect(b.unix(1), { name: 'svc' });
  const z = await connect(b.unix(2), { name: 'client' });
  let a2: Process | null = null;
  try {
    await a.kvPut('svc.a', await who(a, 1));
    await a.kvPut('svc.b', await who(a, 1));
    t.is(await ask(z, 'svc.a'), 1);
    const t0 = performance.now();
    await c1.kill9();
    await b.start(1, LONG, KV_MS);
    a2 = await connect(b.unix(1), { name: 'svc' });
    const restartMs = performance.now() - t0;
    const left = await listNames(b.admin, '/fractos');
    t.log(`restarted in ${restartMs.toFixed(0)} ms; names of the earlier epoch still in etcd: ${left.map((n) => `${n.name}@${n.epoch}`).join(', ')}`);
    t.is(left.length, 2, 'the earlier lease is still valid');
    // not served: its objects died with that epoch
    const e = await a2.kvGet('svc.b').then(() => null, (err: Error) => err);
    t.is((e as { code?: string } | null)?.code, 'ENOENT');
    t.regex(e!.message, /controller 1 restarted/);
    // taken over by the new run's publisher (a restarted service republishes)
    await a2.kvPut('svc.a', await who(a2, 2));
    t.is(await ask(z, 'svc.a'), 2);
    const now = await listNames(b.admin, '/fractos');
    t.true(now.find((n) => n.name === 'svc.a')!.epoch > left[0]!.epoch);
    // the old lease ends (revoked here, as at its TTL): svc.b goes, svc.a (new lease) stays
    const oldLease = left.find((n) => n.name === 'svc.b')!.lease;
    t.not(oldLease, now.find((n) => n.name === 'svc.a')!.lease);
    await b.admin.leaseClient.leaseRevoke({ ID: BigInt(`0x${oldLease}`).toString() });
    t.deepEqual((await listNames(b.admin, '/fractos')).map((n) => n.name), ['svc.a']);
  } finally {
    for (const p of [a, z, a2]) await p?.close().catch(() => {});
  }
});

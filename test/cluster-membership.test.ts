/**
 * Membership on etcd (controller/membership.ts) against a real etcd on loopback, members as
 * OS processes: registration and discovery, a SIGSTOPped or killed member failed for the
 * others within the lease TTL, the stopped one fences itself when resumed, a restart with a
 * new epoch rejoins, a non-member is refused, an etcd restart fails nobody.
 * Skips with the reason when etcd is not installed.
 */
import anyTest, { type TestFn } from 'ava';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { EtcdMembership } from '../controller/membership.js';
import { freePort, REPO_ROOT, spawnNode, tempDir, type Spawned } from './helpers/spawn.js';
import { noEtcd, startEtcd } from './helpers/etcd.js';
import { schedulingLag } from './helpers/wait.js';

const test = (noEtcd ? anyTest.skip : anyTest.serial) as TestFn;
if (noEtcd) anyTest(`membership tests skipped: ${noEtcd}`, (t) => t.pass());

const MEMBER = join(REPO_ROOT, 'dist', 'test', 'fixtures', 'member.js');
const TTL = 2000;
/** Wake-ups between a lease's end and the member's line here: each late by at most the measured scheduling lag (see cluster-etcd.test.ts). */
const HOPS = 4;

/** Events a member fixture printed, and a wait for one. */
function events(m: Spawned): { lines: () => string[]; wait: (re: RegExp, ms?: number) => Promise<number> } {
  const lines = (): string[] => m.output().split('\n');
  return {
    lines,
    wait: async (re, ms = 10_000) => {
      const t0 = performance.now();
      while (!lines().some((l) => re.test(l))) {
        if (performance.now() - t0 > ms) throw new Error(`no ${re} in ${ms} ms: ${m.output()}`);
        await new Promise((r) => setTimeout(r, 5));
      }
      return performance.now() - t0;
    },
  };
}

test('members discover each other; SIGSTOP and kill -9 fail a member within the TTL; it fences itself, rejoins with a new epoch; a non-member is refused; an etcd restart fails nobody', async (t) => {
  const dir = tempDir('fractos-etcd-');
  const port = await freePort();
  const peer = await freePort();
  let etcd = await startEtcd(dir, port, peer);
  const url = `http://127.0.0.1:${port}`;
  const admin = new Etcd3({ hosts: url });
  const members: Spawned[] = [];
  try {
    for (const id of [1, 2, 3]) await admin.put(`/fractos/allowed/${id}`).value('');
    const start = async (id: number, epoch: number): Promise<Spawned> => {
      const m = await spawnNode([MEMBER, url, String(id), String(epoch), `tcp://127.0.0.1:${7000 + id}`], /^(ready|error)/);
      members.push(m);
      return m;
    };
    // a non-member is refused
    const intruder = await start(9, 1);
    t.regex(intruder.line, /^error EPERM/);
    const m1 = await start(1, 1);
    const m2 = await start(2, 1);
    const e1 = events(m1);
    await e1.wait(/^add 2 1 tcp:\/\/127\.0\.0\.1:7002$/);
    t.true(events(m2).lines().includes('add 1 1 tcp://127.0.0.1:7001'));
    // SIGSTOP of member 2: failed for member 1 within the TTL (+ keepalive period and watch delivery)
    let lag = schedulingLag();
    m2.child.kill('SIGSTOP');
    const t0 = performance.now();
    await e1.wait(/^fail 2$/, 30_000);
    const stopMs = performance.now() - t0;
    let bound = TTL + 1500 + HOPS * lag.stop();
    t.log(`SIGSTOP -> failed elsewhere: ${stopMs.toFixed(0)} ms (TTL ${TTL} ms, bound ${bound.toFixed(0)} ms)`);
    t.true(stopMs < bound, `${stopMs} ms`);
    // resumed, it finds its lease gone and fences itself (the CLI exits 75)
    m2.child.kill('SIGCONT');
    await events(m2).wait(/^fenced /, 30_000);
    // it comes back with a new epoch
    const m2b = await start(2, 2);
    await e1.wait(/^add 2 2 /);
    // kill -9 of member 2 (epoch 2): failed within the TTL
    const t1 = performance.now();
    lag = schedulingLag();
    await m2b.kill9();
    const before = e1.lines().filter((l) => l === 'fail 2').length;
    while (e1.lines().filter((l) => l === 'fail 2').length === before) await new Promise((r) => setTimeout(r, 5));
    const killMs = performance.now() - t1;
    bound = TTL + 1500 + HOPS * lag.stop();
    t.log(`kill -9 -> failed elsewhere: ${killMs.toFixed(0)} ms (TTL ${TTL} ms, bound ${bound.toFixed(0)} ms)`);
    t.true(killMs < bound, `${killMs} ms`);
    // an etcd restart (down ~0.5 s) fails nobody: member 3 joins, etcd restarts, both live on
    const m3 = await start(3, 1);
    await e1.wait(/^add 3 1 /);
    etcd.kill('SIGKILL');
    await new Promise((r) => etcd.once('exit', r));
    await new Promise((r) => setTimeout(r, 500));
    etcd = await startEtcd(dir, port, peer);
    await new Promise((r) => setTimeout(r, 2 * TTL));
    t.false(e1.lines().includes('fail 3'), e1.lines().join('\n'));
    t.false(events(m3).lines().some((l) => l.startsWith('fenced') || l === 'fail 1'), m3.output());
    // and the watch works again afterwards: member 3 leaves, member 1 sees it
    await m3.stop();
    await e1.wait(/^fail 3$/, 30_000);
    t.pass();
  } finally {
    for (const m of members) await m.stop();
    admin.close();
    etcd.kill('SIGKILL');
  }
});

test('EtcdMembership checks its options', (t) => {
  t.throws(() => new EtcdMembership({ endpoints: [], id: 1, epoch: 1, advertise: 'tcp://1.2.3.4:5', onFenced: () => {} }), { message: /EINVAL/ });
  t.throws(() => new EtcdMembership({ endpoints: ['http://127.0.0.1:1'], id: 1, epoch: 1, advertise: 'unix:/x', onFenced: () => {} }), { message: /EINVAL: --advertise/ });
  const m = new EtcdMembership({ endpoints: ['http://127.0.0.1:1'], id: 1, epoch: 1, advertise: 'tcp://1.2.3.4:5', ttlMs: 500, onFenced: () => {} });
  t.is(m.ttlMs, 2000);
  void m.close();
});

/**
 * `fractos cluster up` with etcd membership (controller/membership.ts in the native
 * Controller): partition and SIGSTOP of a node -> its objects revoked and monitors fired
 * ('owner-failed') on the other nodes within the lease TTL while its TCP links are still up;
 * its names are gone; heal -> it rejoins with a new epoch, its old caps stay revoked; etcd restarted during
 * traffic fails nobody. Skips with the reason when not root, `ip netns` or etcd is missing.
 */
import anyTest, { type TestFn } from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { down, heal, kill, netnsUnavailable, partition, pause, startNode, up, type ClusterState } from '../cluster/cluster.js';
import { connect, type Process } from '../libfractos/index.js';
import { Echo, EchoReply } from './fixtures/provider.js';
import { codeOf as code } from './helpers/errors.js';
import { REPO_ROOT, spawnNode, tempDir, type Spawned } from './helpers/spawn.js';
import { schedulingLag, until } from './helpers/wait.js';

const why = netnsUnavailable() ?? (spawnSync('etcd', ['--version']).status === 0 ? null : 'etcd is not installed (Debian etcd-server)');
const test = (why ? anyTest.skip : anyTest.serial) as TestFn;
if (why) anyTest(`cluster etcd tests skipped: ${why}`, (t) => t.pass());

const PROVIDER = join(REPO_ROOT, 'dist', 'test', 'fixtures', 'provider.js');
const TTL = 2000;
/** etcd expires leases on a 500 ms tick, the watch event then travels to each member. */
const SLACK = 1500;
/**
 * Wake-ups between a lease's end and the monitor event here (etcd's lease check, its watch
 * reply, the Controller's loop, this process): each one late by at most the scheduling lag
 * measured meanwhile (schedulingLag), which the bound adds that many times. Idle, the lag
 * is ~1 ms and the bound TTL + SLACK; at load 8-14 it was 30-160 ms (bounds 3.6-4.1 s).
 */
const HOPS = 4;

type Node = ClusterState['nodes'][0];

async function withCluster(t: { teardown: (f: () => Promise<void>) => void }, nodes: number): Promise<ClusterState> {
  const dir = tempDir('fractos-cle-');
  const s = await up({ dir, nodes, membership: 'etcd', leaseTtlMs: TTL, readyTimeoutMs: 30_000 });
  t.teardown(async () => {
    if (existsSync(join(dir, 'cluster.json'))) await down(dir);
  });
  return s;
}

function provider(n: Node, name: string): Promise<Spawned> {
  return spawnNode([PROVIDER, n.unix, name], /^ready/, { prefix: ['ip', 'netns', 'exec', n.ns] });
}

/** A monitor armed (its call answered) on `cap`; resolves to the reason and the ms since `t0()`. */
async function armed(p: Process, cap: number): Promise<{ fired: Promise<string>; t0: () => void; ms: () => number }> {
  let fire!: (r: string) => void;
  const fired = new Promise<string>((r) => (fire = r));
  let start = 0;
  let at = 0;
  await p.monitorReceive(cap, (r) => {
    at = performance.now();
    fire(r);
  });
  return { fired, t0: () => (start = performance.now()), ms: () => at - start };
}

test('partition of a node: owner-failed on the others within the TTL with its TCP links up; heal: it rejoins at a new epoch, old caps stay revoked', async (t) => {
  const s = await withCluster(t, 3);
  const [n1, n2, n3] = s.nodes as [Node, Node, Node];
  const prov = await provider(n3, 'echo');
  const a = await connect(n1.unix, { name: 'a' });
  const z = await connect(n2.unix, { name: 'z' });
  try {
    const echo = await a.kvWait('echo', 10_000);
    t.is(EchoReply.decode(await a.rpc(echo, Echo, { x: 1 })).imms.y, 2);
    const child = await a.capCreateRevtree(echo);
    await a.kvPut('child', child);
    const zc = await z.kvWait('child', 10_000);
    t.is(EchoReply.decode(await z.rpc(zc, Echo, { x: 2 })).imms.y, 4);
    const ma = await armed(a, echo);
    const mz = await armed(z, zc);
    ma.t0();
    mz.t0();
    partition(s.dir, 3, true);
    const lag = schedulingLag(); // from here: partition() blocks this thread (spawnSync)
    t.is(await ma.fired, 'owner-failed');
    t.is(await mz.fired, 'owner-failed');
    const bound = TTL + SLACK + HOPS * lag.stop();
    t.log(`partition -> owner-failed on nodes 1, 2: ${ma.ms().toFixed(0)}, ${mz.ms().toFixed(0)} ms (TTL ${TTL} ms, bound ${bound.toFixed(0)} ms)`);
    t.true(ma.ms() < bound && mz.ms() < bound);
    // the link was failed by membership, not by TCP (a partition sends no FIN or RST)
    // (the log line travels from the loop thread through JS: it may trail the monitor event)
    const logged = (): boolean => /peer 3 failed: its etcd lease expired/.test(readFileSync(join(s.dir, 'n1', 'controller.log'), 'utf8'));
    t.true(await until(logged, 20_000), readFileSync(join(s.dir, 'n1', 'controller.log'), 'utf8'));
    t.is(await code(a.rpc(echo, Echo, { x: 1 })), 'EREVOKED');
    // names published on the failed node are gone with it
    t.is(await code(a.kvGet('echo')), 'ENOENT');
    // heal: node 3 fenced itself meanwhile (lease lost) and is started again at epoch 2
    await prov.stop();
    // it notices after 2 TTLs without an answer to its keepalives (awaited: load delays it)
    t.true(await until(() => /fenced/.test(readFileSync(join(s.dir, 'n3', 'controller.log'), 'utf8')), 30_000), 'node 3 fenced itself');
    const started = await heal(s.dir, 3);
    t.true(started.some((p) => p.role === 'controller'));
    const c3 = await connect(n3.unix);
    t.is((await c3.stats()).epoch, 2);
    await c3.close();
    const prov2 = await provider(n3, 'echo-b');
    try {
      const echo2 = await a.kvWait('echo-b', 10_000);
      t.is(EchoReply.decode(await a.rpc(echo2, Echo, { x: 5 })).imms.y, 10);
      t.is(await code(a.rpc(echo, Echo, { x: 1 })), 'EREVOKED');
      t.is(await code(z.rpc(zc, Echo, { x: 1 })), 'EREVOKED');
    } finally {
      await prov2.stop();
    }
  } finally {
    await a.close();
    await z.close();
    await prov.stop();
  }
});

test('etcd restarted during traffic fails nobody; SIGSTOP of a node fails it within the TTL', async (t) => {
  const s = await withCluster(t, 2);
  const [n1, n2] = s.nodes as [Node, Node];
  const prov = await provider(n2, 'echo');
  const a = await connect(n1.unix, { name: 'a' });
  try {
    const echo = await a.kvWait('echo', 10_000);
    let calls = 0;
    let failed: unknown = null;
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        try {
          await a.rpc(echo, Echo, { x: 1 });
          calls++;
        } catch (err) {
          failed = err;
          return;
        }
      }
    })();
    t.is(kill(s.dir, 0), 1);
    await new Promise((r) => setTimeout(r, 300));
    await startNode(s.dir, 0);
    await new Promise((r) => setTimeout(r, TTL + 1000));
    stop = true;
    await traffic;
    t.is(failed, null);
    t.true(calls > 10, `${calls} calls`);
    for (const n of [1, 2]) t.notRegex(readFileSync(join(s.dir, `n${n}`, 'controller.log'), 'utf8'), /failed: its etcd lease|fenced/);
    // SIGSTOP of node 2: failed for node 1 within the TTL (its TCP link is up, the kernel still acks)
    const m = await armed(a, echo);
    m.t0();
    t.is(pause(s.dir, 2, true), 1);
    const lag = schedulingLag(); // from here: pause() blocks this thread (spawnSync)
    t.is(await m.fired, 'owner-failed');
    const bound = TTL + SLACK + HOPS * lag.stop();
    t.log(`SIGSTOP -> owner-failed on node 1: ${m.ms().toFixed(0)} ms (TTL ${TTL} ms, bound ${bound.toFixed(0)} ms)`);
    t.true(m.ms() < bound);
    pause(s.dir, 2, false);
  } finally {
    await a.close();
    await prov.stop();
  }
});

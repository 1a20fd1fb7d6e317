/**
 * `fractos cluster` (cluster/): nodes in network namespaces on a private subnet. up/down
 * leaves nothing behind (also after a crash of `up`); the subnet goes nowhere else; partition
 * cuts a node off and heal reconnects it; across namespaces: delegation, invoke and copy;
 * kill -9 of a node -> owner-failed elsewhere, `start` -> a new epoch, old caps stay revoked;
 * a peer without the cluster secret is refused and logged. Static `--peer` lists (no etcd).
 * Skips with the reason when not root or `ip netns` is unavailable.
 */
import anyTest, { type TestFn } from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { down, kill, loadState, netnsUnavailable, partition, pause, READY_TIMEOUT_MS, startNode, status, up, type ClusterState } from '../cluster/cluster.js';
import { listNamespaces, listRootLinks } from '../cluster/netns.js';
import { connect, type Process } from '../libfractos/index.js';
import { Echo, EchoReply } from './fixtures/provider.js';
import { codeOf as code } from './helpers/errors.js';
import { FRACTOS_BIN, REPO_ROOT, spawnNode, tempDir } from './helpers/spawn.js';

const why = netnsUnavailable();
const test = (why ? anyTest.skip : anyTest.serial) as TestFn;
if (why) anyTest(`cluster tests skipped: ${why}`, (t) => t.pass());

const PROVIDER = join(REPO_ROOT, 'dist', 'test', 'fixtures', 'provider.js');

/** Nothing of cluster `s` is left: namespaces, root links, processes, files. */
function assertGone(t: { deepEqual: (a: unknown, b: unknown, m?: string) => void; false: (a: boolean, m?: string) => void }, s: ClusterState): void {
  t.deepEqual(listNamespaces().filter((n) => n.startsWith(`fx${s.tag}`)), [], 'namespaces left');
  t.deepEqual(listRootLinks().filter((n) => n.startsWith(`fx${s.tag}`)), [], 'links left');
  for (const p of s.procs) t.false(existsSync(`/proc/${p.pid}`) && readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').includes(s.dir), `process ${p.role} ${p.pid} left`);
  for (const f of s.files) t.false(existsSync(f), `${f} left`);
  t.false(existsSync(join(s.dir, 'cluster.json')), 'state file left');
}

/** From inside namespace `ns`: connect to HOST:PORT; resolves 'connected' or the error code (within `ms`). */
function tcpFrom(ns: string, host: string, port: number, ms = 1000): string {
  const js = `const s=require('net').connect(${port},'${host}');const t=setTimeout(()=>{console.log('ETIMEDOUT');process.exit(0)},${ms});s.on('connect',()=>{console.log('connected');process.exit(0)});s.on('error',e=>{console.log(e.code);process.exit(0)})`;
  return spawnSync('ip', ['netns', 'exec', ns, process.execPath, '-e', js], { encoding: 'utf8' }).stdout.trim();
}

async function withCluster(t: { teardown: (f: () => Promise<void>) => void }, nodes: number): Promise<ClusterState> {
  const dir = tempDir('fractos-cl-');
  const s = await up({ dir, nodes, noEtcd: true });
  t.teardown(async () => {
    if (existsSync(join(dir, 'cluster.json'))) await down(dir);
  });
  return s;
}

test('up then down leaves nothing behind; so does down after up was killed halfway', async (t) => {
  const dir = tempDir('fractos-cl-');
  const s = await up({ dir, nodes: 2 });
  t.is(s.nodes.length, 2);
  t.is(s.etcd.length, 1);
  t.truthy(s.convergedMs);
  const ns = listNamespaces();
  for (const n of [s.hub, s.etcdNs!, ...s.nodes.map((x) => x.ns)]) t.true(ns.includes(n), n);
  t.deepEqual(status(dir).nodes.map((n) => n.procs.every((p) => p.state === 'running')), [true, true, true]);
  await down(dir);
  assertGone(t, s);

  // a crash of `up` (kill -9 once it has started a Controller): down still removes it all
  const dir2 = tempDir('fractos-cl-');
  const child = spawn(process.execPath, [FRACTOS_BIN, 'cluster', 'up', '--nodes', '3', '--dir', dir2], { stdio: 'ignore' });
  let exited = false;
  child.once('exit', () => (exited = true));
  // Until `up` records its first Controller (after etcd is ready: over 20 s at load 20).
  // A liveness bound only (as `up`'s own ready timeout); an `up` that ends first (finished
  // or failed) fails at once.
  const end = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const f = join(dir2, 'cluster.json');
    if (existsSync(f) && (JSON.parse(readFileSync(f, 'utf8')) as ClusterState).procs.some((p) => p.role === 'controller')) break;
    if (exited || Date.now() > end) {
      t.fail(exited ? 'up ended before the test could kill it' : 'up never started a controller');
      break;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  const s2 = loadState(dir2);
  t.true(s2.namespaces.length >= 2);
  await down(dir2);
  assertGone(t, s2);
  t.deepEqual(readdirSync(dir2), []);
});

test('the subnet reaches only its members; partition cuts a node off, heal reconnects it', async (t) => {
  const s = await withCluster(t, 2);
  const [n1, n2] = s.nodes as [ClusterState['nodes'][0], ClusterState['nodes'][0]];
  t.is(tcpFrom(n1.ns, n2.addr, 7000), 'connected');
  // no route out of the namespaces
  t.is(tcpFrom(n1.ns, '10.232.0.1', 80), 'ENETUNREACH');
  t.is(tcpFrom(n1.ns, '1.1.1.1', 80), 'ENETUNREACH');
  partition(s.dir, 2, true);
  t.is(status(s.dir).nodes.find((n) => n.id === 2)!.link, 'down');
  t.not(tcpFrom(n1.ns, n2.addr, 7000, 500), 'connected');
  partition(s.dir, 2, false);
  t.is(tcpFrom(n1.ns, n2.addr, 7000), 'connected');
  // SIGSTOP: state visible, SIGCONT: running again
  t.is(pause(s.dir, 2, true), 1);
  t.is(status(s.dir).nodes.find((n) => n.id === 2)!.procs[0]!.state, 'paused');
  t.is(pause(s.dir, 2, false), 1);
  t.is(status(s.dir).nodes.find((n) => n.id === 2)!.procs[0]!.state, 'running');
  // the Controllers' link survived the short partition: a name crosses it
  const a = await connect(n1.unix);
  const b = await connect(n2.unix);
  try {
    await a.kvPut('after-heal', await a.requestCreate(1));
    t.truthy(await b.kvWait('after-heal', 10_000));
  } finally {
    await a.close();
    await b.close();
  }
});

test('across namespaces: invoke, delegation and copy; kill -9 of a node fires owner-failed elsewhere; start gives a new epoch', async (t) => {
  const s = await withCluster(t, 3);
  const [n1, n2, n3] = s.nodes as [ClusterState['nodes'][0], ClusterState['nodes'][0], ClusterState['nodes'][0]];
  const prov = await spawnNode([PROVIDER, n2.unix, 'echo'], /^ready/, { prefix: ['ip', 'netns', 'exec', n2.ns] });
  const procs: Process[] = [];
  try {
    const a = await connect(n1.unix, { name: 'client-a' });
    const z = await connect(n3.unix, { name: 'client-z' });
    procs.push(a, z);
    const echo = await a.kvWait('echo', 10_000);
    t.deepEqual(EchoReply.decode(await a.rpc(echo, Echo, { x: 21 })).imms, { y: 42, controller: 2 });
    // delegation node 1 -> node 3 of a cap owned on node 2
    const child = await a.capCreateRevtree(echo);
    await a.kvPut('child', child);
    const zc = await z.kvWait('child', 10_000);
    t.is(EchoReply.decode(await z.rpc(zc, Echo, { x: 4 })).imms.y, 8);
    // copy node 2's memory into node 1's
    const mem = await a.kvWait('echo.mem', 10_000);
    const local = await a.memoryCreateShared(1 << 20);
    await a.memoryCopy(mem, local.cid);
    t.true(local.region.bytes.every((x) => x === 0x5a));
    // the links between the Controllers run over the private subnet
    const st = await a.stats();
    t.is(st.links.filter((l) => l.kind === 'peer' && l.live).length, 2);
    // kill -9 of node 2 (Controller and provider): holders on nodes 1 and 3 learn at once
    let fireA!: (r: string) => void;
    let fireZ!: (r: string) => void;
    const fa = new Promise<string>((res) => (fireA = res));
    const fz = new Promise<string>((res) => (fireZ = res));
    // armed (the calls answered) before the kill they watch for
    await a.monitorReceive(echo, fireA);
    await z.monitorReceive(zc, fireZ);
    const t0 = performance.now();
    t.is(kill(s.dir, 2), 1); // the Controller; the provider goes with it
    t.is(await fa, 'owner-failed');
    t.is(await fz, 'owner-failed');
    t.log(`kill -9 -> owner-failed on another node: ${(performance.now() - t0).toFixed(1)} ms`);
    t.is(await code(a.rpc(echo, Echo, { x: 1 })), 'EREVOKED');
    // the node comes back with a new epoch; the old caps stay revoked
    await startNode(s.dir, 2);
    const c2 = await connect(n2.unix);
    procs.push(c2);
    const ep = (await c2.stats()).epoch;
    if (ep !== 2) t.log(readFileSync(join(s.dir, 'n2', 'controller.log'), 'utf8'));
    t.is(ep, 2);
    const prov2 = await spawnNode([PROVIDER, n2.unix, 'echo-b'], /^ready/, { prefix: ['ip', 'netns', 'exec', n2.ns] });
    try {
      const echo2 = await a.kvWait('echo-b', 10_000);
      t.is(EchoReply.decode(await a.rpc(echo2, Echo, { x: 5 })).imms.y, 10);
      t.is(await code(a.rpc(echo, Echo, { x: 1 })), 'EREVOKED');
      t.is(await code(z.rpc(zc, Echo, { x: 1 })), 'EREVOKED');
    } finally {
      await prov2.stop();
    }
  } finally {
    for (const p of procs) await p.close();
    await prov.stop();
  }
});

test('a Controller without the cluster secret is refused and logged', async (t) => {
  const s = await withCluster(t, 2);
  const n1 = s.nodes[0]!;
  const n2 = s.nodes[1]!;
  const dir = tempDir('fractos-cl-intruder-');
  writeFileSync(join(dir, 'secret'), 'x'.repeat(64), { mode: 0o600 });
  // an intruder in node 2's namespace claims id 3 and dials node 1
  const intruder = await spawnNode([FRACTOS_BIN, 'controller', '--id', '3', '--state-dir', join(dir, 'st'), '--listen', `unix:${join(dir, 'c.sock')}`, '--listen', `tcp://${n2.addr}:7100`,
    '--cluster-secret-file', join(dir, 'secret'), '--peer', `1=${n1.tcp}`], /^controller 3 epoch/, { prefix: ['ip', 'netns', 'exec', n2.ns] });
  try {
    const log = join(s.dir, 'n1', 'controller.log');
    const end = Date.now() + 10_000;
    while (!/refused/.test(readFileSync(log, 'utf8')) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    const line = readFileSync(log, 'utf8').split('\n').find((l) => /refused/.test(l));
    t.truthy(line, 'no refusal logged');
    t.regex(line!, /controller 3/);
    t.regex(line!, new RegExp(n2.addr.replace(/\./g, '\\.')));
    // the member still sees only its real peer
    const a = await connect(n1.unix);
    t.deepEqual((await a.stats()).links.filter((l) => l.kind === 'peer' && l.live).map((l) => l.id), [2]);
    await a.close();
  } finally {
    await intruder.stop();
  }
});

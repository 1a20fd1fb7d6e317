/**
 * The dashboard's HTTP API against three Controllers (OS processes on loopback): the shape
 * of /api/snapshot, the SSE stream, link rates, the chain and star edges joined across
 * Controllers, a killed Controller shown down, and bad options refused.
 */
import test from 'ava';
import { startDashboard, type Dashboard } from '../dashboard/server.js';
import type { Snapshot } from '../dashboard/collector.js';
import { FractosError } from '../libfractos/index.js';
import { dashCluster } from './helpers/dash-cluster.js';

async function snapshot(d: Dashboard): Promise<Snapshot> {
  const r = await fetch(`${d.url}/api/snapshot`);
  if (r.status !== 200) throw new Error(`status ${r.status}`);
  return (await r.json()) as Snapshot;
}

async function waitSnapshot(d: Dashboard, cond: (s: Snapshot) => boolean, ms = 15_000): Promise<Snapshot> {
  const end = Date.now() + ms;
  for (;;) {
    const s = await snapshot(d);
    if (cond(s)) return s;
    if (Date.now() > end) throw new Error(`condition not met; last snapshot:\n${JSON.stringify(s, null, 1)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('snapshot: nodes, Processes with counts, links with rates, chain and star edges; SSE; a killed Controller is down', async (t) => {
  const c = await dashCluster();
  t.teardown(() => c.stop());
  const d = await startDashboard({ port: 0, controllers: c.specs.map((s) => s.unix), intervalMs: 200 });
  t.teardown(() => d.close());
  await c.traffic(5);
  const id = (n: string): { controller: number; process: number } => c.ids.get(n)!;
  const has = (s: Snapshot, a: string, b: string): number => s.edges.find((e) => e.from.controller === id(a).controller && e.from.process === id(a).process && e.to.controller === id(b).controller && e.to.process === id(b).process)?.count ?? 0;
  const s = await waitSnapshot(d, (x) => has(x, 'head', 'mid') >= 5 && has(x, 'mid', 'tail') >= 5 && has(x, 'hub', 'leaf-3') >= 5 && x.links.length === 3);

  t.deepEqual(s.nodes.map((n) => [n.id, n.up]), [[1, true], [2, true], [3, true]]);
  for (const n of s.nodes) {
    t.is(typeof n.epoch, 'number');
    t.deepEqual(n.peers, [1, 2, 3].filter((p) => p !== n.id));
    t.false(n.processes.some((p) => p.name === 'dashboard'), 'the dashboard hides its own Process');
  }
  const mid = s.nodes[1]!.processes.find((p) => p.name === 'mid')!;
  // Its Request and the revocation-tree child that head's kv_get made of it (owned by mid).
  t.like(mid, { id: id('mid').process, pid: process.pid, objects: 2 });
  t.true(mid.caps >= 2, 'its Request and its cap to tail');
  t.true(s.nodes[1]!.objects >= 3);
  // Chain: head → mid → tail; star: hub → each leaf (the local one too).
  t.is(has(s, 'head', 'mid'), 5);
  t.is(has(s, 'mid', 'tail'), 5);
  for (const l of ['leaf-1', 'leaf-2', 'leaf-3']) t.is(has(s, 'hub', l), 5);
  t.false(s.edges.some((e) => e.to.process === 0), 'every remote edge was joined to its provider');
  for (const l of s.links) {
    t.true(l.up);
    t.true(l.from < l.to);
    t.true(l.framesOut > 0 && l.bytesOut > 0);
    t.true(l.framesOutPerSec >= 0 && Number.isFinite(l.bytesInPerSec));
  }

  // Rates: traffic during two polls shows on the links and the Processes.
  await c.traffic(200);
  const busy = await snapshot(d);
  t.true(busy.links.some((l) => l.framesOutPerSec + l.framesInPerSec > 0), JSON.stringify(busy.links));

  // SSE: the first event is a snapshot of the same shape.
  const ac = new AbortController();
  const res = await fetch(`${d.url}/api/events`, { signal: ac.signal });
  t.is(res.headers.get('content-type'), 'text/event-stream');
  const reader = res.body!.getReader();
  let text = '';
  while (!/\n\n(event: snapshot\ndata: .*\n\n)/.test(text)) text += new TextDecoder().decode((await reader.read()).value);
  const ev = JSON.parse(/data: (.*)\n\n/.exec(text)![1]!) as Snapshot;
  t.deepEqual(Object.keys(ev).sort(), ['edges', 'intervalMs', 'links', 'nodes', 'time', 'windowMs']);
  ac.abort();

  // Kill controller 3: down, with the reason; its links go.
  await c.ctl[2]!.kill9();
  const after = await waitSnapshot(d, (x) => x.nodes[2]!.up === false && x.links.every((l) => l.from !== 3 && l.to !== 3 ? true : !l.up));
  t.like(after.nodes[2], { id: 3, up: false });
  t.truthy(after.nodes[2]!.error);
  t.true(after.nodes[0]!.up && after.nodes[1]!.up);
  const gone = await waitSnapshot(d, (x) => !x.nodes[0]!.peers.includes(3) && !x.nodes[1]!.peers.includes(3));
  t.deepEqual(gone.nodes[0]!.peers, [2]);
});

test('bad options are refused with typed errors', async (t) => {
  for (const o of [{ port: 0, controllers: [] }, { port: 0, controllers: ['unix:/nope'], intervalMs: 1 }, { port: 70000, controllers: ['unix:/nope'] }]) {
    const err = await t.throwsAsync(startDashboard(o));
    t.true(err instanceof FractosError);
    t.is((err as FractosError).code, 'EINVAL');
  }
});

test('a Controller that is not there is shown down with the reason, not fatal', async (t) => {
  const d = await startDashboard({ port: 0, controllers: ['unix:/tmp/fractos-dashboard-test-nothing-here.sock'], intervalMs: 100 });
  t.teardown(() => d.close());
  const s = await snapshot(d);
  t.is(s.nodes.length, 1);
  t.like(s.nodes[0], { id: 0, up: false, address: 'unix:/tmp/fractos-dashboard-test-nothing-here.sock' });
  t.truthy(s.nodes[0]!.error);
});

/**
 * Cluster benchmarks with `fractos cluster up` (cluster/): each node a network namespace.
 *
 * - `cluster_converge` (ms): from the start of `up` until every Controller has a live link
 *   to every other one, for each N; baseline: the same for N = 1 (namespaces, one etcd and
 *   one Controller started, nothing to link), measured in the same run.
 * - `kill_to_owner_failed` (ms): kill -9 of a node whose object a Process on another node
 *   holds, until that Process's monitor fires 'owner-failed'; median of `trials`; baseline:
 *   the lease TTL (2 s), the bound etcd membership guarantees when no socket closes.
 * - `kv_get_rtt` (us): kv_get of a name published on another node, median over `iters`
 *   calls; baseline: the null operation on the same Controller, same run; once with the
 *   replicated map (static peers) and once with names in etcd (a linearizable read each).
 * - `kv_put_rtt` (us): kv_put of the publisher's own name again (names in etcd: a txn, one
 *   fsync'd write), median over `iters` / 4; baseline: the null operation.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { down, heal, kill, partition, startNode, up, waitConverged, type ClusterState } from '../cluster/cluster.js';
import { connect, type Process } from '../libfractos/index.js';
import { spawnNode, tempDir, REPO_ROOT } from '../testbed/spawn.js';
import { benchRecord, type BenchRecord } from './records.js';

/** Lease TTL of etcd membership (ms): the baseline of kill_to_owner_failed. */
export const LEASE_TTL_MS = 2000;

export interface ClusterBenchOptions {
  /** Cluster sizes to converge (default 2, 4, 8). */
  sizes?: number[];
  /** Kills measured (default 5). */
  trials?: number;
  /** kv_get calls (default 2000). */
  iters?: number;
  progress?: (line: string) => void;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function withCluster<T>(nodes: number, membership: 'etcd' | 'static', fn: (s: ClusterState) => Promise<T>): Promise<T> {
  const dir = tempDir('fractos-clbench-');
  const s = await up({ dir, nodes, membership, readyTimeoutMs: 60_000 });
  try {
    return await fn(s);
  } finally {
    await down(dir);
  }
}

async function timedCalls(iters: number, call: () => Promise<unknown>): Promise<number> {
  const t: number[] = [];
  for (let i = 0; i < iters; i++) {
    const t0 = performance.now();
    await call();
    t.push(performance.now() - t0);
  }
  return median(t) * 1000;
}

/** Run the cluster benchmarks (module comment); needs root and `ip netns`. */
export async function runClusterBench(o: ClusterBenchOptions = {}): Promise<BenchRecord[]> {
  const sizes = o.sizes ?? [2, 4, 8];
  const trials = o.trials ?? 5;
  const iters = o.iters ?? 2000;
  const say = o.progress ?? ((): void => {});
  const out: BenchRecord[] = [];
  for (const membership of ['static', 'etcd'] as const) {
    const base = await withCluster(1, membership, async (s) => s.convergedMs!);
    say(`converge ${membership} N=1: ${base} ms`);
    for (const n of sizes) {
      const ms = await withCluster(n, membership, async (s) => s.convergedMs!);
      say(`converge ${membership} N=${n}: ${ms} ms`);
      out.push(benchRecord('cluster', 'cluster_converge', ms, 'ms', base, { nodes: n, membership }));
    }
  }
  const provider = join(REPO_ROOT, 'dist', 'test', 'fixtures', 'provider.js');
  // partition (no FIN, no RST): only the etcd lease tells the others
  await withCluster(2, 'etcd', async (s) => {
    const [n1, n2] = s.nodes as [ClusterState['nodes'][0], ClusterState['nodes'][0]];
    const a = await connect(n1.unix, { name: 'bench-client' });
    const times: number[] = [];
    try {
      // names in etcd: kv_get (a linearizable etcd read through the Controller's JS host) and kv_put
      const pub = await connect(n2.unix, { name: 'bench-pub' });
      try {
        const q = await pub.requestCreate(1);
        await pub.kvPut('bench.name', q);
        await a.kvWait('bench.name', 10_000);
        await timedCalls(200, () => a.nullOp());
        const nul = await timedCalls(iters, () => a.nullOp());
        const get = await timedCalls(iters, () => a.kvGet('bench.name'));
        say(`kv_get (etcd) ${get.toFixed(1)} us, null op ${nul.toFixed(1)} us`);
        out.push(benchRecord('cluster', 'kv_get_rtt', get, 'us', nul, { published_on: 'other node', names: 'etcd' }));
        const pnul = await timedCalls(iters, () => pub.nullOp());
        const put = await timedCalls(Math.max(1, iters >> 2), () => pub.kvPut('bench.name', q));
        say(`kv_put (etcd) ${put.toFixed(1)} us, null op ${pnul.toFixed(1)} us`);
        out.push(benchRecord('cluster', 'kv_put_rtt', put, 'us', pnul, { names: 'etcd', republish: 'own name' }));
      } finally {
        await pub.close();
      }
      for (let i = 0; i < Math.min(trials, 3); i++) {
        const prov = await spawnNode([provider, n2.unix, `p${i}`], /^ready/, { prefix: ['ip', 'netns', 'exec', n2.ns] });
        const cap = await a.kvWait(`p${i}`, 20_000);
        let fire!: (r: string) => void;
        const fired = new Promise<string>((r) => (fire = r));
        await a.monitorReceive(cap, fire);
        const t0 = performance.now();
        partition(s.dir, 2, true);
        const why = await fired;
        times.push(performance.now() - t0);
        if (why !== 'owner-failed') throw new Error(`monitor fired '${why}', not owner-failed`);
        await prov.stop();
        // node 2 fences itself (its lease is gone), then heal starts it at a new epoch
        const log = join(s.dir, 'n2', 'controller.log');
        const end = Date.now() + 4 * LEASE_TTL_MS;
        while ((readFileSync(log, 'utf8').match(/fenced/g) ?? []).length <= i && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
        await heal(s.dir, 2, 60_000);
        await waitConverged(s, 30_000);
      }
    } finally {
      await a.close();
    }
    const k = median(times);
    say(`partition -> owner-failed (etcd): median ${k.toFixed(1)} ms (${times.map((x) => x.toFixed(1)).join(' ')})`);
    out.push(benchRecord('cluster', 'partition_to_owner_failed', k, 'ms', LEASE_TTL_MS, { detector: 'etcd lease', trials: times.length }));
  });
  await withCluster(3, 'static', async (s) => {
    const [n1, n2, n3] = s.nodes as [ClusterState['nodes'][0], ClusterState['nodes'][0], ClusterState['nodes'][0]];
    // kv_get across nodes vs the null op
    const pub = await connect(n3.unix, { name: 'bench-pub' });
    const a = await connect(n1.unix, { name: 'bench-client' });
    try {
      await pub.kvPut('bench.name', await pub.requestCreate(1));
      await a.kvWait('bench.name', 10_000);
      await timedCalls(200, () => a.nullOp());
      const nul = await timedCalls(iters, () => a.nullOp());
      const get = await timedCalls(iters, () => a.kvGet('bench.name'));
      say(`kv_get ${get.toFixed(1)} us, null op ${nul.toFixed(1)} us`);
      out.push(benchRecord('cluster', 'kv_get_rtt', get, 'us', nul, { published_on: 'other node', names: 'replicated' }));
      // kill -9 -> owner-failed on another node
      const times: number[] = [];
      for (let i = 0; i < trials; i++) {
        const prov = await spawnNode([provider, n2.unix, `victim${i}`], /^ready/, { prefix: ['ip', 'netns', 'exec', n2.ns] });
        const cap = await a.kvWait(`victim${i}`, 10_000);
        let fire!: (r: string) => void;
        const fired = new Promise<string>((r) => (fire = r));
        await a.monitorReceive(cap, fire);
        const t0 = performance.now();
        kill(s.dir, 2);
        const why = await fired;
        times.push(performance.now() - t0);
        if (why !== 'owner-failed') throw new Error(`monitor fired '${why}', not owner-failed`);
        await prov.stop();
        await startNode(s.dir, 2);
      }
      const k = median(times);
      say(`kill -9 -> owner-failed: median ${k.toFixed(1)} ms (${times.map((x) => x.toFixed(1)).join(' ')})`);
      out.push(benchRecord('cluster', 'kill_to_owner_failed', k, 'ms', LEASE_TTL_MS, { detector: 'peer link closed (static peers)', trials }));
    } finally {
      const ps: Process[] = [a, pub];
      for (const p of ps) await p.close();
    }
  });
  return out;
}

/** A table of the records. */
export function formatClusterBench(rs: BenchRecord[]): string {
  const lines = ['| metric | params | value | baseline | ratio |', '|---|---|---|---|---|'];
  for (const r of rs) {
    const p = Object.entries(r.params).map(([k, v]) => `${k}=${v}`).join(' ');
    lines.push(`| ${r.metric} | ${p} | ${r.value.toFixed(1)} ${r.unit} | ${r.baseline?.toFixed(1) ?? '-'} ${r.unit} | ${r.ratio?.toFixed(2) ?? '-'} |`);
  }
  return lines.join('\n');
}

/**
 * `fractos facever loadtest`: goodput of `facever serve` under overload (issue #7 item 18).
 *
 * Starts the single-host stack (Controller, blockdev on a sparse file, FS, GPU adaptor:
 * facever-app/cluster.ts), enrolls the ORL photos, starts `fractos facever serve` as its own
 * process, and loads it with `autocannon` run as a separate process at `factor x slots`
 * concurrent connections for each factor (default 1, 8, 32; the server's capacity is its
 * number of GPU buffer sets, `--slots`). Every connection sends the same `POST /verify` of
 * `batch` pairs (base64 ORL PGMs) and sends its next request as soon as an answer arrives,
 * 503 included: the hostile client that ignores `Retry-After`. The connections all come from
 * 127.0.0.1 but stand for many clients, so the server's per-address bounds (connections,
 * bodies being read) are raised to its global ones.
 *
 * Per level: goodput (pairs/s answered 200), p50/p99 latency of the 200 answers (autocannon
 * records 2xx latencies only), 503 and other answers, socket errors and time-outs, and each
 * figure's ratio against the 1x level. Records (DESIGN.md §6): bench `facever-overload`,
 * baseline = the 1x figure of the same run.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchRecord, type BenchRecord } from '../bench/records.js';
import { FsClient } from '../fs-service/client.js';
import { FractosError } from '../libfractos/errors.js';
import { connect } from '../libfractos/process.js';
import { orlPairs } from './accuracy.js';
import { LocalCluster, spawnChild, stopChild, type Child } from './cluster.js';
import { DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_READING } from './server.js';
import { enroll, readMeta } from './store.js';
import type { Design } from './verifier.js';

export interface LoadtestOptions {
  /** ORL layout s<N>/<k>.pgm: enrolled, and the probes of the request body. */
  dataset: string;
  /** Use running services (enrolled) on this Controller instead of starting a local cluster. */
  controller?: string;
  /** GPU backend of the local cluster (default cpu). */
  backend?: 'auto' | 'cpu' | 'cuda';
  design?: Design;
  /** The server's GPU buffer sets (= batches in flight) = the 1x connection count (default 8). */
  slots?: number;
  /** The server's `--max-queued` (default: the server's own, 16). */
  maxQueued?: number;
  /** Pairs per request (default 8). */
  batch?: number;
  /** Overload factors: connections = factor x slots (default 1, 8, 32). */
  factors?: readonly number[];
  /** Seconds of load per level (default 10), after `warmupS` of untimed load at 1x (default 3). */
  durationS?: number;
  warmupS?: number;
  /** autocannon's per-request time-out (s, default 30). */
  timeoutS?: number;
  log?: (line: string) => void;
}

/** One level of load, as measured by autocannon. */
export interface LoadLevel {
  factor: number;
  connections: number;
  /** Pairs per second in 200 answers. */
  goodput: number;
  /** Latency of the 200 answers, ms. */
  p50Ms: number;
  p99Ms: number;
  ok: number;
  s503: number;
  /** Answers other than 200 and 503. */
  otherStatus: number;
  /** Socket errors and time-outs (autocannon `errors`, time-outs included). */
  errors: number;
  timeouts: number;
  durationS: number;
  /** CPU seconds during the level: the server, autocannon, the rest of the stack (cluster children). */
  cpuServerS: number;
  cpuLoadgenS: number;
  cpuStackS: number;
}

/** What autocannon --json prints (the fields used). */
interface AutocannonResult {
  duration: number;
  errors: number;
  timeouts: number;
  '2xx': number;
  non2xx: number;
  latency: { p50: number; p99: number };
  statusCodeStats?: Record<string, { count: number }>;
}

/**
 * The autocannon command-line script, found by normal module resolution (it is a
 * dependency in package.json). @throws FractosError ENOENT when it is not installed.
 */
export function autocannonBin(): string {
  try {
    return createRequire(import.meta.url).resolve('autocannon');
  } catch {
    throw new FractosError('ENOENT', "the load generator 'autocannon' is not installed (npm install)");
  }
}

/**
 * Run autocannon as a child process: `connections` connections for `durationS` seconds, each
 * POSTing the JSON body in `bodyFile` to `url` back to back. Resolves with its JSON result;
 * `signal` kills it.
 * @throws FractosError EIO when autocannon fails or prints no result.
 */
export function runAutocannon(url: string, bodyFile: string, connections: number, durationS: number, timeoutS: number, signal?: AbortSignal): Promise<AutocannonResult> {
  const args = [autocannonBin(), '--json', '-c', String(connections), '-d', String(durationS), '-t', String(timeoutS), '-m', 'POST', '-H', 'content-type=application/json', '-i', bodyFile, url];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], signal });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', (e) => reject(new FractosError('EIO', `autocannon: ${e.message}`)));
    child.once('exit', (code) => {
      try {
        const line = out.trim().split('\n').pop() ?? '';
        if (code !== 0) throw new Error(`exit ${code}`);
        resolve(JSON.parse(line) as AutocannonResult);
      } catch (e) {
        reject(new FractosError('EIO', `autocannon ${args.slice(1).join(' ')}: ${(e as Error).message}; stderr: ${err.slice(-500)}`));
      }
    });
  });
}

/** The request body: `batch` ORL pairs of `ids`, each probe the base64 of its PGM file. */
export function requestBody(dataset: string, ids: readonly number[], batch: number): string {
  const pairs = orlPairs(ids);
  return JSON.stringify(Array.from({ length: batch }, (_, i) => {
    const pr = pairs[(i * 37) % pairs.length]!;
    return { id: pr.enrolled, image: readFileSync(join(dataset, `s${pr.probe}`, `${pr.photo}.pgm`)).toString('base64') };
  }));
}

/**
 * CPU seconds (user + system) of process `pid` from /proc (Linux), and with `children` those
 * of its waited-for children (the autocannon runs); NaN where /proc is not there.
 */
export function cpuSeconds(pid: number | 'self', children = false): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const v = f.slice(f.lastIndexOf(')') + 2).split(' ').map(Number); // v[0] is field 3 (state)
    const ticks = children ? v[13]! + v[14]! : v[11]! + v[12]!; // cutime+cstime (16, 17) or utime+stime (14, 15)
    return ticks / 100; // USER_HZ
  } catch {
    return NaN;
  }
}

/** The level's figures from autocannon's result. */
function levelOf(factor: number, connections: number, batch: number, r: AutocannonResult, cpu: Pick<LoadLevel, 'cpuServerS' | 'cpuLoadgenS' | 'cpuStackS'>): LoadLevel {
  const s503 = r.statusCodeStats?.['503']?.count ?? 0;
  return {
    factor, connections, ok: r['2xx'], s503, otherStatus: r.non2xx - s503, errors: r.errors, timeouts: r.timeouts, durationS: r.duration,
    goodput: (r['2xx'] * batch) / r.duration, p50Ms: r.latency.p50, p99Ms: r.latency.p99, ...cpu,
  };
}

/**
 * Run the load test (module comment). Resolves with the levels, their records and a table
 * whose every figure carries its ratio against the 1x level. Errors: those of the cluster,
 * the server and autocannon (ENOENT when it is not installed).
 */
export async function runLoadtest(o: LoadtestOptions): Promise<{ levels: LoadLevel[]; records: BenchRecord[]; table: string }> {
  const log = o.log ?? (() => {});
  const slots = o.slots ?? 8;
  const batch = o.batch ?? 8;
  const factors = o.factors ?? [1, 8, 32];
  const design = o.design ?? 'chain';
  const positive = (name: string, x: number, int = true): void => {
    if (!(x > 0) || (int && !Number.isInteger(x))) throw new FractosError('EINVAL', `${name} must be a positive ${int ? 'integer' : 'number'}, got ${x}`);
  };
  positive('slots', slots);
  positive('batch', batch);
  for (const f of factors) positive('factor', f, false);
  positive('duration', o.durationS ?? 10, false);
  autocannonBin();
  const tmp = mkdtempSync(join(tmpdir(), 'fractos-loadtest-'));
  let cluster: LocalCluster | undefined;
  let server: Child | undefined;
  const abort = new AbortController();
  let cleaning: Promise<void> | undefined;
  // Everything started here goes on return, error, SIGINT (Ctrl-C) and SIGTERM.
  const cleanup = (): Promise<void> => (cleaning ??= (async () => {
    abort.abort();
    if (server) await stopChild(server);
    await cluster?.stop();
    rmSync(tmp, { recursive: true, force: true });
  })());
  const onSignal = (sig: NodeJS.Signals): void => {
    void cleanup().finally(() => {
      // The same line as the other batch commands (testbed/scratch.ts cleanupOnSignals).
      process.stderr.write(`fractos facever loadtest: interrupted by ${sig}; scratch removed\n`);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    if (!o.controller) {
      log('starting a local cluster (one Controller, blockdev, FS, GPU adaptor)');
      cluster = await LocalCluster.start({ gpuBackend: o.backend ?? 'cpu', log });
    }
    const controller = o.controller ?? cluster!.controller;
    const p = await connect(controller, { name: 'facever-loadtest' });
    let ids: number[];
    try {
      const fs = await FsClient.connect(p, 'fs', 20_000);
      ids = (cluster ? await enroll(p, fs, o.dataset, { log }) : await readMeta(p, fs)).ids;
    } finally {
      await p.close();
    }
    const args = ['facever', 'serve', '--port', '0', '--controller', controller, '--design', design, '--slots', String(slots), '--max-batch', String(batch)];
    if (o.maxQueued !== undefined) args.push('--max-queued', String(o.maxQueued));
    // All connections come from this one address but stand for many clients: the per-address
    // bounds of the server (connections, bodies being read) are lifted to the global ones.
    const conns = Math.max(slots, ...factors.map((f) => Math.max(1, Math.round(f * slots))));
    const maxConns = Math.max(DEFAULT_MAX_CONNECTIONS, conns + 16);
    args.push('--max-connections', String(maxConns), '--max-connections-per-peer', String(maxConns), '--max-reading-per-peer', String(DEFAULT_MAX_READING));
    server = await spawnChild('facever serve', args, /^ready facever port=\d+/);
    log(`  facever serve pid ${server.child.pid} ${server.line}`);
    const url = `http://127.0.0.1:${/port=(\d+)/.exec(server.line)![1]}/verify`;
    const bodyFile = join(tmp, 'body.json');
    writeFileSync(bodyFile, requestBody(o.dataset, ids, batch));
    const timeoutS = o.timeoutS ?? 30;
    if ((o.warmupS ?? 3) > 0) {
      log(`warm-up: ${slots} connections for ${o.warmupS ?? 3} s`);
      await runAutocannon(url, bodyFile, slots, o.warmupS ?? 3, timeoutS, abort.signal);
    }
    const levels: LoadLevel[] = [];
    for (const f of factors) {
      const c = Math.max(1, Math.round(f * slots));
      const stackPids = cluster ? [...cluster.children.values()].map((ch) => ch.child.pid!) : [];
      const cpu = (): number[] => [cpuSeconds(server!.child.pid!), cpuSeconds('self', true), stackPids.reduce((a, pid) => a + cpuSeconds(pid), 0)];
      const before = cpu();
      const r = await runAutocannon(url, bodyFile, c, o.durationS ?? 10, timeoutS, abort.signal);
      const after = cpu();
      const lv = levelOf(f, c, batch, r, { cpuServerS: after[0]! - before[0]!, cpuLoadgenS: after[1]! - before[1]!, cpuStackS: after[2]! - before[2]! });
      levels.push(lv);
      log(`  ${f}x (${c} connections): ${lv.goodput.toFixed(0)} pairs/s, p50 ${lv.p50Ms} ms, p99 ${lv.p99Ms} ms, ${lv.ok} ok, ${lv.s503} x 503, ${lv.otherStatus} other, ${lv.errors} errors; CPU s: server ${lv.cpuServerS.toFixed(1)}, autocannon ${lv.cpuLoadgenS.toFixed(1)}, rest of the stack ${lv.cpuStackS.toFixed(1)}`);
    }
    const params = { design, slots, batch, backend: cluster?.gpuBackend ?? 'running services' };
    return { levels, records: recordsOf(levels, params), table: tableOf(levels, params) };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

const METRICS = [
  ['goodput_pairs_s', 'goodput', 'pairs/s'],
  ['latency_p50_ms', 'p50Ms', 'ms'],
  ['latency_p99_ms', 'p99Ms', 'ms'],
  ['responses_503', 's503', 'responses'],
  ['server_cpu_s', 'cpuServerS', 's'],
  ['loadgen_cpu_s', 'cpuLoadgenS', 's'],
] as const;

function recordsOf(levels: readonly LoadLevel[], params: Record<string, string | number>): BenchRecord[] {
  const base = levels[0]!;
  return levels.flatMap((lv) => METRICS.map(([metric, key, unit]) =>
    benchRecord('facever-overload', metric, lv[key], unit, base[key], { ...params, factor: lv.factor, connections: lv.connections, durationS: lv.durationS })));
}

function tableOf(levels: readonly LoadLevel[], params: Record<string, string | number>): string {
  const base = levels[0]!;
  const ratio = (x: number, b: number): string => (b ? ` (${(x / b).toFixed(2)}x)` : '');
  let s = `facever serve under overload: design ${params.design}, ${params.slots} GPU buffer sets, batches of ${params.batch} pairs, backend ${params.backend}; clients retry at once on 503\n`;
  s += `${'load'.padEnd(16)}${'goodput pairs/s'.padStart(20)}${'p50 ms'.padStart(18)}${'p99 ms'.padStart(18)}${'503s'.padStart(10)}${'other/errors'.padStart(14)}${'CPU s: server/autocannon/stack'.padStart(32)}\n`;
  for (const lv of levels) {
    s += `${`${lv.factor}x (${lv.connections} conn)`.padEnd(16)}`;
    s += `${lv.goodput.toFixed(0)}${ratio(lv.goodput, base.goodput)}`.padStart(20);
    s += `${lv.p50Ms}${ratio(lv.p50Ms, base.p50Ms)}`.padStart(18);
    s += `${lv.p99Ms}${ratio(lv.p99Ms, base.p99Ms)}`.padStart(18);
    s += `${lv.s503}`.padStart(10);
    s += `${lv.otherStatus}/${lv.errors}`.padStart(14);
    s += `${lv.cpuServerS.toFixed(1)}/${lv.cpuLoadgenS.toFixed(1)}/${lv.cpuStackS.toFixed(1)}`.padStart(32);
    s += '\n';
  }
  s += `(ratios against the 1x level; latency of the 200 answers; CPU seconds used during the level)\n`;
  return s;
}

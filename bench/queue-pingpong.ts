/**
 * Round trips of the shared-memory queues (docs/queues.md) next to their baselines, all
 * measured in the same run (issue #8, "Targets"):
 *   - `c`: the raw mechanism, a C ping-pong over one queue pair between two processes
 *     (native/queue/src/pingpong.cc), policies spin (2 us, 4 yields, then sleep) and sleep
 *     (sleep at once), doorbells futex and eventfd, payloads 0/64/4096 bytes, placed by the
 *     scheduler; and 64 B with the two processes pinned to two CPUs (split) or one (same);
 *   - `node-socket`: a raw Node.js unix-socket round trip (a second Node process echoing
 *     length-prefixed frames of the same payload), the other baseline;
 *   - `node-queue`: a Node.js client (the queue addon) to the C echo peer over one pair,
 *     polling (`wait` + `drain`, the spin policy) and watching (eventfd + libuv), what libfractos
 *     will do. Its ratio is against the C ping-pong of the same policy and against the socket.
 * Plus the CPU of a C consumer asleep for 1 s and of an idle Node process watching its doorbell. Latencies: median and p99 of per-round-trip
 * samples (ns), after a 10% warm-up.
 */
import { spawn, execFile } from 'node:child_process';
import net from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FractosError } from '../libfractos/errors.js';
import {
  QueueChannel, QueueSide, closeFd, createDoorbell, createQueuePair, queueToolPath, sendFds, socketPair,
} from '../native/queue/index.js';
import { removeTempDir, spawnNode, tempDir } from '../testbed/spawn.js';
import { benchRecord, type BenchRecord } from './records.js';

const PAYLOADS = [0, 64, 4096] as const;

export interface QueueBenchOptions {
  /** Seconds per case (default 0.5). */
  seconds?: number;
  progress?: (line: string) => void;
}

interface CCase {
  case: string;
  policy?: string;
  wake?: string;
  payload?: number;
  placement?: string;
  n?: number;
  median_ns?: number;
  p99_ns?: number;
  cpu_pct?: number;
  wall_s?: number;
}

function quantiles(xs: Float64Array | number[], n: number): { median: number; p99: number } {
  const s = Float64Array.from(xs.slice(0, n)).sort();
  return { median: s[Math.floor(n / 2)] ?? NaN, p99: s[Math.floor((n * 99) / 100)] ?? NaN };
}

/** Echo server: frames `u32 LE length | payload`, each echoed whole. */
const ECHO_JS = `
const net = require('node:net');
const srv = net.createServer((s) => {
  s.setNoDelay?.(true);
  let acc = Buffer.alloc(0);
  s.on('data', (d) => {
    acc = acc.length ? Buffer.concat([acc, d]) : d;
    while (acc.length >= 4) {
      const n = 4 + acc.readUInt32LE(0);
      if (acc.length < n) break;
      s.write(acc.subarray(0, n));
      acc = acc.subarray(n);
    }
  });
});
srv.listen(process.argv[1], () => process.stdout.write('ready\\n'));
`;

async function nodeSocketRtt(path: string, payload: number, seconds: number): Promise<{ median: number; p99: number; n: number }> {
  const sock = net.createConnection(path);
  await new Promise((r, j) => sock.once('connect', r).once('error', j));
  sock.setNoDelay(true);
  const frame = Buffer.alloc(4 + payload, 7);
  frame.writeUInt32LE(payload, 0);
  const samples = new Float64Array(1 << 20);
  let n = 0;
  const end = performance.now() + seconds * 1000;
  const warm = performance.now() + seconds * 100;
  let got = 0;
  let resolveOne: (() => void) | null = null;
  sock.on('data', (d: Buffer) => {
    got += d.length;
    if (got >= frame.length && resolveOne) {
      got -= frame.length;
      const r = resolveOne;
      resolveOne = null;
      r();
    }
  });
  while (performance.now() < end) {
    const t0 = process.hrtime.bigint();
    await new Promise<void>((r) => {
      resolveOne = r;
      sock.write(frame);
    });
    const dt = Number(process.hrtime.bigint() - t0);
    if (performance.now() >= warm && n < samples.length) samples[n++] = dt;
  }
  sock.destroy();
  return { ...quantiles(samples, n), n };
}

async function nodeQueueRtt(mode: 'poll' | 'watch', payload: number, seconds: number): Promise<{ median: number; p99: number; n: number }> {
  const fd = createQueuePair(1 << 16);
  const efdP = createDoorbell();
  const efdC = createDoorbell();
  const [mine, theirs] = socketPair();
  const child = spawn(queueToolPath('pingpong'), ['echo', '3'], { stdio: ['ignore', 'ignore', 'inherit', theirs] });
  closeFd(theirs);
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  try {
    sendFds(mine, [fd, efdP, efdC]);
    const ch = new QueueChannel(fd, { side: QueueSide.PROCESS, ownDoorbell: efdP, peerDoorbell: efdC, spinNs: 2000 });
    const msg = Buffer.alloc(payload, 7);
    const out = Buffer.alloc(4 + ch.maxEntry);
    const samples = new Float64Array(1 << 20);
    let n = 0;
    const end = performance.now() + seconds * 1000;
    const warm = performance.now() + seconds * 100;
    if (mode === 'poll') {
      while (performance.now() < end) {
        const t0 = process.hrtime.bigint();
        if (!ch.push(msg)) throw new FractosError('EIO', 'queue bench: ring full in a ping-pong');
        while (ch.drain(out) === 0) if (!ch.wait(5000)) throw new FractosError('ETIMEDOUT', 'queue bench: echo peer silent');
        const dt = Number(process.hrtime.bigint() - t0);
        if (performance.now() >= warm && n < samples.length) samples[n++] = dt;
      }
    } else {
      await new Promise<void>((resolve, reject) => {
        let t0 = 0n;
        const next = (): void => {
          if (performance.now() >= end) return resolve();
          t0 = process.hrtime.bigint();
          if (!ch.push(msg)) reject(new FractosError('EIO', 'queue bench: ring full in a ping-pong'));
        };
        ch.watch((_buf, bytes) => {
          if (bytes === 0) return;
          const dt = Number(process.hrtime.bigint() - t0);
          if (performance.now() >= warm && n < samples.length) samples[n++] = dt;
          next();
        }, reject);
        next();
      });
    }
    ch.close();
    return { ...quantiles(samples, n), n };
  } finally {
    closeFd(mine);
    await exited;
    for (const x of [fd, efdP, efdC]) closeFd(x);
  }
}

/** Run the suite; DESIGN.md §6 records (bench 'queue'). */
export async function runQueueBench(opts: QueueBenchOptions = {}): Promise<BenchRecord[]> {
  const seconds = opts.seconds ?? 0.5;
  if (!(seconds > 0 && seconds <= 60)) throw new FractosError('EINVAL', `seconds must be in (0, 60], got ${seconds}`);
  const say = opts.progress ?? (() => {});
  const records: BenchRecord[] = [];
  const rec = (metric: string, value: number, unit: string, baseline: number | null, params: BenchRecord['params']): void => {
    records.push(benchRecord('queue', metric, value, unit, baseline, params));
  };

  // 1. Node unix-socket baseline
  const dir = tempDir('fractos-queue-bench-');
  const sockets: Record<number, { median: number; p99: number }> = {};
  const echo = await spawnNode(['-e', ECHO_JS, join(dir, 'echo.sock')], /^ready/);
  try {
    for (const p of PAYLOADS) {
      say(`node unix socket rtt, ${p} B`);
      const r = await nodeSocketRtt(join(dir, 'echo.sock'), p, seconds);
      sockets[p] = r;
      rec('node_socket_rtt', r.median, 'ns', null, { payload: p, p99_ns: Math.round(r.p99), n: r.n });
    }
  } finally {
    await echo.stop();
    removeTempDir(dir);
  }

  // 2. the C ping-pong
  say('C ping-pong over one queue pair (pingpong bench)');
  const { stdout } = await promisify(execFile)(queueToolPath('pingpong'), ['bench', String(seconds)], { timeout: 60_000 + seconds * 20_000 });
  const cases = stdout.trim().split('\n').map((l) => JSON.parse(l) as CCase);
  const cRtt = (policy: string, payload: number): number => cases.find((c) => c.case === 'rtt' && c.policy === policy && c.wake === 'futex' && c.payload === payload && c.placement === 'any')?.median_ns ?? NaN;
  for (const c of cases) {
    if (c.case === 'rtt') {
      rec('c_queue_rtt', c.median_ns!, 'ns', sockets[c.payload!]!.median, { policy: c.policy!, wake: c.wake!, payload: c.payload!, placement: c.placement!, p99_ns: c.p99_ns!, n: c.n! });
    } else if (c.case === 'idle') {
      rec('idle_consumer_cpu', c.cpu_pct!, '%', null, { wall_s: c.wall_s!, policy: 'spin 2us, 4 yields, futex' });
    }
  }

  // 3. a Node client over the queue to the C echo peer
  for (const mode of ['poll', 'watch'] as const) {
    for (const p of PAYLOADS) {
      say(`node queue client (${mode}) rtt, ${p} B`);
      const r = await nodeQueueRtt(mode, p, seconds);
      const base = cRtt(mode === 'poll' ? 'spin' : 'sleep', p);
      rec('node_queue_rtt', r.median, 'ns', base, { mode, payload: p, p99_ns: Math.round(r.p99), n: r.n, vs_node_socket: +(r.median / sockets[p]!.median).toFixed(3) });
    }
  }
  // 4. an idle Node client watching its doorbell (uv_poll on the eventfd): CPU of this whole process over 1 s
  {
    const fd = createQueuePair(4096);
    const efdP = createDoorbell();
    const efdC = createDoorbell();
    const ch = new QueueChannel(fd, { side: QueueSide.PROCESS, ownDoorbell: efdP, peerDoorbell: efdC });
    ch.watch(() => {}, () => {});
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 1000));
    const c = process.cpuUsage(c0);
    const wallMs = performance.now() - t0;
    rec('idle_node_watch_cpu', ((c.user + c.system) / 1000 / wallMs) * 100, '%', null, { wall_s: +(wallMs / 1000).toFixed(3), policy: 'watch (eventfd, uv_poll)' });
    ch.close();
    for (const x of [fd, efdP, efdC]) closeFd(x);
  }
  return records;
}

/** A table of the records (ratios: against the baseline named in the footer). */
export function formatQueueBench(records: BenchRecord[]): string {
  const lines = ['metric              params                                   median      p99   ratio'];
  for (const r of records) {
    const params = Object.entries(r.params).filter(([k]) => !['p99_ns', 'n', 'vs_node_socket', 'wall_s'].includes(k)).map(([k, v]) => `${k}=${v}`).join(' ');
    const p99 = typeof r.params.p99_ns === 'number' ? `${(r.params.p99_ns / 1000).toFixed(1)} us` : '';
    const value = r.unit === 'ns' ? `${(r.value / 1000).toFixed(2)} us` : `${r.value.toFixed(3)} ${r.unit}`;
    const ratio = r.ratio === null ? '' : r.ratio.toFixed(2) + (r.params.vs_node_socket !== undefined ? ` (${r.params.vs_node_socket} of socket)` : '');
    lines.push(`${r.metric.padEnd(20)}${params.padEnd(41)}${value.padStart(10)}${p99.padStart(10)}   ${ratio}`);
  }
  lines.push('', 'ratios: c_queue_rtt / node_socket_rtt of the same payload; node_queue_rtt / c_queue_rtt of the same payload',
    '(poll vs policy spin, watch vs policy sleep, futex); all measured in this run.');
  return lines.join('\n');
}

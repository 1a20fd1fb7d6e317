/**
 * `fractos bench null`: the null operation and the invoke round trip (0, 64, 4096 immediate
 * bytes, provider on the same Controller) over the Process's transports — the unix socket
 * (queue: false), the shared-memory queue pair (watch: doorbell + libuv) and the queue pair
 * in poll mode — next to two baselines measured in the same run: the C ping-pong of the same
 * queue mechanism (native/queue pingpong: sleeping waiters on eventfds for watch, spinning
 * waiters for poll) and a raw Node.js unix-socket round trip. Also the CPU of an idle stack
 * (the Controller OS process and one connected idle Process, queue mode; then the same with
 * an idle poll-mode Process) over `idleSeconds`.
 * Medians of per-operation times (hrtime) over `seconds` per case.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect, FractosError, type Process } from '../libfractos/index.js';
import { queueToolPath } from '../native/queue/index.js';
import { REPO_ROOT, clusterSpecs, removeTempDir, spawnNode, startController, tempDir, type Spawned } from '../testbed/spawn.js';
import { BenchEcho } from './micro-schema.js';
import { benchRecord, type BenchRecord } from './records.js';

export interface StackBenchOptions {
  /** Seconds per case (default 1). */
  seconds?: number;
  /** Seconds of the idle-CPU measurement (default 5). */
  idleSeconds?: number;
  progress?: (line: string) => void;
}

const PEER = join(REPO_ROOT, 'dist', 'bench', 'micro-peer.js');
const MODES = [
  { mode: 'socket', opts: { queue: false } },
  { mode: 'queue', opts: { queue: true } },
  { mode: 'queue-poll', opts: { queue: true, poll: true } },
] as const;

/** Median ns of `op` run back to back for `seconds` (after 10% of it as warm-up). */
async function medianNs(op: (done: () => void) => void, seconds: number): Promise<{ median: number; p99: number; n: number }> {
  const warmEnd = performance.now() + seconds * 100;
  while (performance.now() < warmEnd) await new Promise<void>((r) => op(r));
  const xs: number[] = [];
  const end = performance.now() + seconds * 1000;
  while (xs.length < 10 || performance.now() < end) {
    const t0 = process.hrtime.bigint();
    await new Promise<void>((r) => op(r));
    xs.push(Number(process.hrtime.bigint() - t0));
  }
  xs.sort((a, b) => a - b);
  return { median: xs[Math.floor(xs.length / 2)]!, p99: xs[Math.floor(xs.length * 0.99)]!, n: xs.length };
}

/** CPU seconds (user + system) of an OS process so far (/proc/PID/stat, clock ticks of 100 Hz). */
function procCpuS(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100; // utime, stime (fields 14, 15)
}

export async function runStackBench(opts: StackBenchOptions = {}): Promise<BenchRecord[]> {
  const seconds = opts.seconds ?? 1;
  const idleSeconds = opts.idleSeconds ?? 5;
  if (!(seconds > 0 && seconds <= 60)) throw new FractosError('EINVAL', `seconds must be in (0, 60], got ${seconds}`);
  const say = opts.progress ?? (() => {});
  const records: BenchRecord[] = [];
  const rec = (metric: string, value: number, unit: string, baseline: number | null, params: BenchRecord['params']): void => {
    records.push(benchRecord('null', metric, value, unit, baseline, params));
  };
  const dir = tempDir('fractos-bench-null-');
  const children: Spawned[] = [];
  const procs: Process[] = [];
  try {
    // 1. baselines: the C ping-pong of the same mechanism, a raw Node unix-socket round trip
    say('C ping-pong over one queue pair');
    const { stdout } = await promisify(execFile)(queueToolPath('pingpong'), ['bench', String(Math.min(seconds, 2))], { timeout: 120_000 });
    const cases = stdout.trim().split('\n').map((l) => JSON.parse(l) as { case: string; policy?: string; wake?: string; payload?: number; placement?: string; median_ns?: number });
    const cRtt = (policy: string, wake: string, payload: number): number =>
      cases.find((c) => c.case === 'rtt' && c.policy === policy && c.wake === wake && c.payload === payload && c.placement === 'any')?.median_ns ?? NaN;
    const rawAddr = join(dir, 'raw.sock');
    children.push(await spawnNode([PEER, 'raw-echo', `unix:${rawAddr}`], /^ready/));
    const raw = net.createConnection(rawAddr);
    await new Promise((r, j) => raw.once('connect', r).once('error', j));
    raw.setNoDelay(true);
    const ping = Buffer.alloc(16);
    ping.writeUInt32LE(16, 0);
    ping.writeUInt16LE(1, 4);
    let rawCb: (() => void) | null = null;
    let got = 0;
    raw.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= 16 && rawCb) {
        got -= 16;
        const cb = rawCb;
        rawCb = null;
        cb();
      }
    });
    say('raw Node unix-socket round trip');
    const node = await medianNs((d) => {
      rawCb = d;
      raw.write(ping);
    }, seconds);
    raw.destroy();
    rec('node_socket_rtt', node.median / 1000, 'us', null, { payload: 16, p99_us: +(node.p99 / 1000).toFixed(1), n: node.n });
    for (const [policy, wake] of [['sleep', 'eventfd'], ['spin', 'futex']] as const) {
      rec('c_queue_rtt', cRtt(policy, wake, 0) / 1000, 'us', node.median / 1000, { policy, wake, payload: 0 });
    }

    // 2. the stack, one Controller OS process; a provider per mode (same transport as the client)
    const [spec] = await clusterSpecs(1, dir);
    const ctl = await startController(spec!, [spec!]);
    children.push(ctl);
    for (const { mode, opts: copts } of MODES) {
      const provider = await spawnNode([PEER, 'provider', spec!.unix, `p-${mode}`], /^ready/, { env: { FRACTOS_QUEUE: copts.queue ? '1' : '0' } });
      children.push(provider);
      const client = await connect(spec!.unix, { name: `bench-${mode}`, ...copts });
      procs.push(client);
      const base = mode === 'socket' ? NaN : cRtt(mode === 'queue' ? 'sleep' : 'spin', mode === 'queue' ? 'eventfd' : 'futex', 0);
      say(`null operation (${mode})`);
      const nul = await medianNs((d) => void client.nullOp().then(d), seconds);
      rec('null_op_rtt', nul.median / 1000, 'us', Number.isNaN(base) ? null : base / 1000, {
        transport: mode, p99_us: +(nul.p99 / 1000).toFixed(1), n: nul.n, vs_node_socket: +(nul.median / node.median).toFixed(3),
      });
      let wake: (() => void) | null = null;
      const CONT = 0x1234;
      client.onRequest(CONT, () => {
        const w = wake;
        wake = null;
        w?.();
      });
      const cont = await client.requestCreate(CONT);
      const echo = await client.kvWait(`p-${mode}.echo`);
      for (const immBytes of [0, 64, 4096]) {
        say(`invoke ${immBytes} B (${mode})`);
        const args = BenchEcho.args(immBytes ? { pad: Buffer.alloc(immBytes, 1) } : {}, { onSuccess: cont });
        if (immBytes && immBytes < 4096) args.imms[0]!.bytes = args.imms[0]!.bytes.subarray(0, immBytes);
        const inv = await medianNs((d) => {
          wake = d;
          client.requestInvoke(echo, args).catch(() => {});
        }, seconds);
        rec('invoke_rtt', inv.median / 1000, 'us', Number.isNaN(base) ? null : base / 1000, {
          transport: mode, imm_bytes: immBytes, p99_us: +(inv.p99 / 1000).toFixed(1), n: inv.n, vs_node_socket: +(inv.median / node.median).toFixed(3),
        });
      }
      await client.close();
      procs.pop();
      await provider.stop();
      children.pop();
    }

    // 3. an idle stack: the Controller and one connected idle Process (queue mode), then the
    // same with an idle poll-mode Process (it spins only while calls are outstanding; the
    // Controller only after its activity)
    const pid = ctl.child.pid!;
    for (const [metric, copts] of [['idle_stack_cpu', {}], ['idle_poll_stack_cpu', { poll: true }]] as const) {
      say(`${metric} over ${idleSeconds} s`);
      const idle = await connect(spec!.unix, { name: `bench-${metric}`, ...copts });
      procs.push(idle);
      await idle.nullOp(); // the poll client has been active once
      await new Promise((r) => setTimeout(r, 2000)); // the closes of the runs above settle first
      const c0 = procCpuS(pid);
      const u0 = process.cpuUsage();
      const t0 = performance.now();
      await new Promise((r) => setTimeout(r, idleSeconds * 1000));
      const wall = (performance.now() - t0) / 1000;
      const ctlPct = ((procCpuS(pid) - c0) / wall) * 100;
      const u = process.cpuUsage(u0);
      const procPct = ((u.user + u.system) / 1e6 / wall) * 100;
      rec(metric, ctlPct + procPct, '%', null, { controller_pct: +ctlPct.toFixed(2), process_pct: +procPct.toFixed(2), wall_s: +wall.toFixed(2) });
      await idle.close();
      procs.pop();
    }
  } finally {
    for (const p of procs) await p.close().catch(() => {});
    for (const c of children.reverse()) await c.stop().catch(() => {});
    removeTempDir(dir);
  }
  return records;
}

/** A table: metric, params, value, baseline, ratio. */
export function formatStackBench(records: BenchRecord[]): string {
  const rows = [['metric', 'params', 'value', 'baseline', 'ratio']];
  for (const r of records) {
    const p = Object.entries(r.params).map(([k, v]) => `${k}=${v}`).join(' ');
    const f = (v: number | null): string => (v === null || Number.isNaN(v) ? '-' : `${v.toFixed(2)} ${r.unit}`);
    rows.push([r.metric, p, f(r.value), f(r.baseline), r.ratio === null || r.ratio === undefined ? '-' : r.ratio.toFixed(2)]);
  }
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  return rows.map((row) => row.map((c, i) => c.padEnd(w[i]!)).join('  ')).join('\n');
}

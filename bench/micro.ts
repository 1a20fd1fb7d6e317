/**
 * Microbenchmarks of the core (paper §6.1), each next to the raw transport measured in the
 * same run: null operation, Request invoke round trip (same Controller, two Controllers;
 * 0/64/4096 immediate bytes), cost per delegated cap (0..8 caps), revocation of N caps
 * (one revtree per cap vs one shared revtree), memory_copy throughput (1 B .. 4 MiB, local
 * and across Controllers). Controllers, providers and raw servers run as their own OS
 * processes; latencies use the `benchmark` package; revocation, whose per-trial setup
 * (delegating N caps) must stay outside the timed region, uses hrtime (median of trials);
 * throughput uses a plain back-to-back loop for both sides of the ratio (see `timed`).
 */
import Benchmark from 'benchmark';
import net from 'node:net';
import { join } from 'node:path';
import { connect, FractosError, Perm, type Process } from '../libfractos/index.js';
import { parseAddress } from '../libfractos/link.js';
import { COPY_CHUNK_BYTES } from '../libfractos/protocol.js';
import { REPO_ROOT, clusterSpecs, freePort, removeTempDir, spawnNode, startController, tempDir, type Spawned } from '../testbed/spawn.js';
import { BenchEcho, BenchHold } from './micro-schema.js';
import { benchRecord, type BenchRecord } from './records.js';
import { fitSlope, slopeFigure, type SlopeFit } from './slope.js';

export type { BenchRecord } from './records.js';

export interface MicroOptions {
  /** Seconds per benchmark.js measurement (default 0.5). */
  maxTime?: number;
  /** Revocation trials per N (default 5). */
  trials?: number;
  /** Passes over 0..8 delegated caps for the per-cap slope (default 3: 27 points). */
  rounds?: number;
  /** Largest N of the revocation benchmark (default 1000). */
  maxRevokeN?: number;
  /** Progress lines (stderr). */
  progress?: (line: string) => void;
  /** Run only these groups: null, invoke, delegate, revoke, memcpy (default all). */
  only?: string[];
  /**
   * memcpy group: after the other sizes, leave every link idle this many seconds, then
   * measure the remote 4 MiB copy and the raw TCP stream again (default 0: not measured).
   * The target is 60 s.
   */
  idleS?: number;
}

const PEER = join(REPO_ROOT, 'dist', 'bench', 'micro-peer.js');

/** Mean seconds per call of an async operation, with benchmark.js. */
function measure(name: string, op: (done: () => void) => void, maxTime: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const bench = new Benchmark(name, {
      defer: true,
      maxTime,
      minSamples: 5,
      fn: (deferred: { resolve(): void }) => op(() => deferred.resolve()),
      onComplete: () => resolve(bench.stats.mean),
      onError: (e: { message?: string }) => reject(new Error(`${name}: ${e.message ?? 'benchmark error'}`)),
    });
    bench.run({ async: true });
  });
}

/** A raw ping-pong / stream client over the same socket kind, no FractOS in between. */
class RawClient {
  #sock: net.Socket;
  #want = 0;
  #got = 0;
  #cb: (() => void) | null = null;
  #ping = Buffer.alloc(16);
  private constructor(sock: net.Socket) {
    this.#sock = sock;
    sock.setNoDelay?.(true);
    this.#ping.writeUInt32LE(16, 0);
    this.#ping.writeUInt16LE(1, 4);
    sock.on('data', (d: Buffer) => {
      this.#got += d.length;
      if (this.#got >= this.#want && this.#cb) {
        const cb = this.#cb;
        this.#cb = null;
        this.#got -= this.#want;
        cb();
      }
    });
  }
  static async open(addr: string): Promise<RawClient> {
    const a = parseAddress(addr);
    const sock = a.kind === 'unix' ? net.createConnection(a.path) : net.createConnection(a.port, a.host);
    await new Promise((r, j) => sock.once('connect', r).once('error', j));
    return new RawClient(sock);
  }
  /** One 16-byte round trip. */
  ping(done: () => void): void {
    this.#want = 16;
    this.#cb = done;
    this.#sock.write(this.#ping);
  }
  #chunk: Buffer | null = null;

  /**
   * Stream `size` bytes in frames of COPY_CHUNK_BYTES (what memory_copy uses) from a
   * preallocated source of `size` bytes (distinct data per frame, like a copy's source; no
   * allocation) and wait for every frame's 16-byte ack.
   */
  stream(size: number, done: () => void): void {
    if (!this.#chunk || this.#chunk.length < size) this.#chunk = Buffer.alloc(size, 7);
    const source = this.#chunk;
    let frames = 0;
    this.#sock.cork();
    for (let off = 0; off < size; off += COPY_CHUNK_BYTES) {
      const len = Math.max(16, Math.min(COPY_CHUNK_BYTES, size - off));
      const f = source.subarray(off, off + len);
      f.writeUInt32LE(len, 0);
      f.writeUInt16LE(2, 4);
      this.#sock.write(f);
      frames++;
    }
    this.#sock.uncork();
    this.#want = 16 * frames;
    this.#cb = done;
  }
  close(): void {
    this.#sock.destroy();
  }
}

/**
 * Mean seconds per call of an async operation run back to back for `seconds` (at least 5
 * calls). Used for throughput: benchmark.js's deferred cycles timed pipelined bulk copies
 * 2.7x slower than this loop in the same process (8-13 ms vs ~4 ms per 4 MiB copy) while
 * timing the raw stream alike, so both sides of a throughput ratio use this loop instead.
 */
async function timed(op: (done: () => void) => void, seconds: number): Promise<number> {
  const end = performance.now() + seconds * 1000;
  let n = 0;
  const t0 = performance.now();
  while (n < 5 || performance.now() < end) {
    await new Promise<void>((r) => op(r));
    n++;
  }
  return (performance.now() - t0) / 1000 / n;
}

/** Run an async operation back to back for `ms` (warm-up: JIT, TCP windows on fresh links). */
async function warm(op: (done: () => void) => void, ms: number): Promise<void> {
  const end = performance.now() + ms;
  while (performance.now() < end) await new Promise<void>((r) => op(r));
}

/**
 * Median seconds per call of `op` and of `raw`, called alternately (op first) back to back
 * for `seconds` (at least 5 pairs): the baseline sees the same moments of a machine shared
 * with other jobs as the operation, instead of a window seconds earlier. Also returns the
 * first call of each (after an idle period, the one that pays for it).
 */
async function paired(op: (done: () => void) => void, raw: (done: () => void) => void, seconds: number): Promise<{ op: number; raw: number; firstOp: number; firstRaw: number }> {
  const end = performance.now() + seconds * 1000;
  const ops: number[] = [];
  const raws: number[] = [];
  const once = async (f: (done: () => void) => void, into: number[]): Promise<void> => {
    const t0 = performance.now();
    await new Promise<void>((r) => f(r));
    into.push((performance.now() - t0) / 1000);
  };
  while (ops.length < 5 || performance.now() < end) {
    await once(op, ops);
    await once(raw, raws);
  }
  return { op: median(ops), raw: median(raws), firstOp: ops[0]!, firstRaw: raws[0]! };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Run the whole suite; returns DESIGN §6 records. */
export async function runMicro(opts: MicroOptions = {}): Promise<BenchRecord[]> {
  const maxTime = opts.maxTime ?? 0.5;
  const trials = opts.trials ?? 5;
  const rounds = opts.rounds ?? 3;
  if (!(Number.isInteger(rounds) && rounds >= 1)) throw new FractosError('EINVAL', `rounds must be an integer >= 1, got ${rounds}`);
  const idleS = opts.idleS ?? 0;
  if (!(Number.isFinite(idleS) && idleS >= 0)) throw new FractosError('EINVAL', `idle-s must be a number >= 0, got ${opts.idleS}`);
  const maxN = opts.maxRevokeN ?? 1000;
  const say = opts.progress ?? (() => {});
  const want = (group: string): boolean => !opts.only?.length || opts.only.includes(group);
  const records: BenchRecord[] = [];
  const rec = (metric: string, value: number, unit: string, baseline: number | null, params: BenchRecord['params']): void => {
    records.push(benchRecord('micro', metric, value, unit, baseline, params));
  };
  const children: Spawned[] = [];
  const procs: Process[] = [];
  const raws: RawClient[] = [];
  const dir = tempDir('fractos-micro-');
  try {
    const specs = await clusterSpecs(2, dir);
    for (const s of specs) children.push(await startController(s, specs));
    const rawUnix = `unix:${join(dir, 'raw.sock')}`;
    const rawTcp = `tcp://127.0.0.1:${await freePort()}`;
    children.push(await spawnNode([PEER, 'raw-echo', rawUnix], /^ready/));
    children.push(await spawnNode([PEER, 'raw-echo', rawTcp], /^ready/));
    children.push(await spawnNode([PEER, 'provider', specs[0]!.unix, 'p1'], /^ready/));
    children.push(await spawnNode([PEER, 'provider', specs[1]!.unix, 'p2'], /^ready/));
    const client = await connect(specs[0]!.unix, { name: 'bench-client' });
    procs.push(client);
    const ru = await RawClient.open(rawUnix);
    const rt = await RawClient.open(rawTcp);
    raws.push(ru, rt);

    // --- null operation and the raw round trips
    say('null operation');
    const rawUnixRtt = await measure('raw unix rtt', (d) => ru.ping(d), maxTime);
    const rawTcpRtt = await measure('raw tcp rtt', (d) => rt.ping(d), maxTime);
    const nullRtt = await measure('null op', (d) => void client.nullOp().then(d), maxTime);
    rec('null_op_rtt', nullRtt * 1e6, 'us', rawUnixRtt * 1e6, { placement: 'local', transport: 'unix' });

    // --- invoke round trips: client -> provider -> continuation back to the client
    let wake: (() => void) | null = null;
    const CONT = 0x1234;
    client.onRequest(CONT, () => {
      const w = wake;
      wake = null;
      w?.();
    });
    const cont = await client.requestCreate(CONT);
    const echo = { local: await client.kvWait('p1.echo'), remote: await client.kvWait('p2.echo') };
    for (const placement of want('invoke') ? (['local', 'remote'] as const) : []) {
      for (const immBytes of [0, 64, 4096]) {
        say(`invoke ${placement} ${immBytes} B`);
        const args = BenchEcho.args(immBytes ? { pad: Buffer.alloc(immBytes, 1) } : {}, { onSuccess: cont });
        if (immBytes && immBytes < 4096) args.imms[0]!.bytes = args.imms[0]!.bytes.subarray(0, immBytes);
        const t = await measure(`invoke ${placement} ${immBytes}`, (d) => {
          wake = d;
          client.requestInvoke(echo[placement], args).catch(() => {});
        }, maxTime);
        rec('invoke_rtt', t * 1e6, 'us', (placement === 'local' ? rawUnixRtt : rawTcpRtt) * 1e6, { placement, imm_bytes: immBytes });
      }
    }

    // --- delegation: invoke with 0..8 caps (each a new cid at the provider)
    const someMem = (await client.memoryCreateShared(4096)).cid;
    const capNames = ['c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8'] as const;
    // `rounds` passes over k = 0..8 (interleaved, so drift spreads over every k); the slope
    // is fitted on every point and reported only where significant (bench/slope.ts).
    const xs: number[] = [];
    const ys: number[] = [];
    for (let round = 0; want('delegate') && round < rounds; round++) {
      for (let k = 0; k <= 8; k++) {
        say(`delegate ${k} caps (round ${round + 1}/${rounds})`);
        const caps: Record<string, number> = { onSuccess: cont };
        for (let i = 0; i < k; i++) caps[capNames[i]!] = someMem;
        const args = BenchEcho.args({}, caps);
        const t = await measure(`delegate ${k}`, (d) => {
          wake = d;
          client.requestInvoke(echo.local, args).catch(() => {});
        }, maxTime);
        xs.push(k);
        ys.push(t * 1e6);
      }
    }
    if (xs.length) {
      for (let k = 0; k <= 8; k++) {
        const at = ys.filter((_, i) => xs[i] === k);
        rec('invoke_rtt', at.reduce((a, b) => a + b, 0) / at.length, 'us', rawUnixRtt * 1e6, { placement: 'local', imm_bytes: 0, caps: k, rounds });
      }
      records.push(slopeRecord('delegate_per_cap', fitSlope(xs, ys), 'us', rawUnixRtt * 1e6, { placement: 'local', caps: '0..8', rounds }));
    }

    // --- revocation: N caps held by another Process, one revtree each vs one shared revtree
    const hold = await client.kvWait('p1.hold');
    const holdWait = (cap: number): Promise<void> =>
      new Promise((r) => {
        wake = r;
        client.invoke(hold, BenchHold, {}, { onSuccess: cont, cap }).catch(() => {});
      });
    const base = await client.requestCreate(0x999);
    for (let n = 1; want('revoke') && n <= maxN; n *= 10) {
      say(`revoke N=${n}`);
      const per: number[] = [];
      const shared: number[] = [];
      for (let trial = 0; trial < trials; trial++) {
        const kids: number[] = [];
        for (let i = 0; i < n; i++) {
          const c = await client.capCreateRevtree(base);
          kids.push(c);
          await holdWait(c);
        }
        let t0 = process.hrtime.bigint();
        await Promise.all(kids.map((c) => client.capRevoke(c)));
        per.push(Number(process.hrtime.bigint() - t0) / 1e3);
        await client.capDrop(...kids);
        const one = await client.capCreateRevtree(base);
        for (let i = 0; i < n; i++) await holdWait(one);
        t0 = process.hrtime.bigint();
        await client.capRevoke(one);
        shared.push(Number(process.hrtime.bigint() - t0) / 1e3);
        await client.capDrop(one);
      }
      rec('revoke', median(per), 'us', nullRtt * 1e6, { revtree: 'per-cap', n });
      rec('revoke', median(shared), 'us', nullRtt * 1e6, { revtree: 'shared', n });
    }

    // --- memory_copy throughput, local and across Controllers, vs raw streams
    const src = await client.memoryCreateShared(4 << 20, Perm.RW);
    src.region.bytes.fill(3);
    const sinks = { local: await client.kvWait('p1.sink'), remote: await client.kvWait('p2.sink') };
    const rawStream: Record<string, number> = {};
    // Both sides of each comparison get the same warm-up (1 s of 4 MiB transfers): a fresh
    // TCP connection on loopback needs ~100 MiB before its window stops growing.
    const big = { src: await client.memoryDiminish(src.cid, 0, 4 << 20), local: 0, remote: 0 };
    for (const [placement, raw] of want('memcpy') ? ([['local', ru], ['remote', rt]] as const) : []) {
      await warm((d) => raw.stream(4 << 20, d), 1000);
      const t = await timed((d) => raw.stream(4 << 20, d), maxTime);
      rawStream[placement] = (4 << 20) / t;
      big[placement] = await client.memoryDiminish(sinks[placement], 0, 4 << 20);
      await warm((d) => void client.memoryCopy(big.src, big[placement]).then(d), 1000);
    }
    const raw = { local: ru, remote: rt };
    for (const placement of want('memcpy') ? (['local', 'remote'] as const) : []) {
      for (const size of [1, 64, 4096, 65536, 1 << 20, 4 << 20]) {
        say(`memory_copy ${placement} ${size} B`);
        const s = await client.memoryDiminish(src.cid, 0, size);
        const d = await client.memoryDiminish(sinks[placement], 0, size);
        const transport = placement === 'local' ? 'unix' : 'tcp';
        if (size < 4 << 20) {
          const t = await timed((done) => void client.memoryCopy(s, d).then(done), maxTime);
          rec('memcpy_throughput', size / t, 'B/s', rawStream[placement]!, { placement, size, transport });
          continue;
        }
        // 4 MiB: the copy and the raw 4 MiB stream alternate (medians), the ratio the target is about.
        const p = await paired((done) => void client.memoryCopy(s, d).then(done), (done) => raw[placement].stream(4 << 20, done), maxTime);
        rec('memcpy_throughput', size / p.op, 'B/s', size / p.raw, { placement, size, transport, paired: 'yes' });
      }
    }
    if (want('memcpy') && idleS > 0) {
      // Every link idle (the client's channel, the peer link, the raw TCP connection), then
      // the copy first (it is the target), the raw stream right after it.
      say(`memory_copy remote 4194304 B after ${idleS} s idle`);
      await new Promise((r) => setTimeout(r, idleS * 1000));
      const p = await paired((done) => void client.memoryCopy(big.src, big.remote).then(done), (done) => rt.stream(4 << 20, done), maxTime);
      rec('memcpy_throughput', (4 << 20) / p.op, 'B/s', (4 << 20) / p.raw, {
        placement: 'remote', size: 4 << 20, transport: 'tcp', paired: 'yes', idle_s: idleS,
        first_copy_ms: Number((p.firstOp * 1e3).toFixed(2)), first_raw_ms: Number((p.firstRaw * 1e3).toFixed(2)),
      });
    }
    return records;
  } finally {
    for (const r of raws) r.close();
    for (const p of procs) await p.close();
    for (const c of children.reverse()) await c.stop();
    removeTempDir(dir);
  }
}

/**
 * The record of a fitted slope: value = the slope where `slopeFigure` calls it a figure,
 * else NaN (null in JSON) with ratio null; params add `ci95` (95% half-width, same unit),
 * `r2`, `points` and `significant` (yes | no).
 */
export function slopeRecord(metric: string, fit: SlopeFit, unit: string, baseline: number | null, params: BenchRecord['params']): BenchRecord {
  const f = slopeFigure(fit, unit);
  const r = benchRecord('micro', metric, f.value ?? NaN, unit, baseline, {
    ...params, ci95: Number(fit.ci95.toPrecision(3)), r2: Number(fit.r2.toFixed(3)), points: fit.points, significant: f.value === null ? 'no' : 'yes',
  });
  if (f.value === null) r.ratio = null;
  return r;
}

/**
 * A human table of the records, columns as wide as their widest cell (a slope that is not a
 * figure reads `not significant (±X us)`), with a note on what the baselines are.
 */
export function formatMicro(records: BenchRecord[]): string {
  const rows = [['metric', 'params', 'value', 'baseline', 'ratio']];
  for (const r of records) {
    const p = Object.entries(r.params).filter(([k]) => k !== 'invoke_us').map(([k, v]) => `${k}=${v}`).join(' ');
    const fmt = (v: number | null): string => (v === null ? '-' : r.unit === 'B/s' ? `${(v / 2 ** 20).toFixed(1)} MiB/s` : `${v.toFixed(1)} ${r.unit}`);
    const value = r.params.significant === 'no' ? `not significant (±${r.params.ci95} ${r.unit})` : fmt(r.value);
    rows.push([r.metric, p, value, fmt(r.baseline), r.ratio === null ? '-' : r.ratio.toFixed(2)]);
  }
  const width = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const lines = rows.map((row) => row.map((cell, i) => (i < 2 ? cell.padEnd(width[i]!) : cell.padStart(width[i]!))).join('  ').trimEnd());
  lines.push('', 'baseline: the raw transport of the same placement measured in the same run (a unix or TCP stream',
    'between two processes); a local memory_copy is one memcpy inside the Controller, so its ratio can exceed 1.');
  return lines.join('\n');
}

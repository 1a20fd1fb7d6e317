/**
 * fio-style output of a `FioReport`: the human text summary (as fio's normal output) and
 * fio's JSON layout (field names of fio 3.x `--output-format=json`, checked against fio 3.33),
 * plus the parser of real fio's JSON / json+ output into the same `FioReport` shape.
 */
import { FractosError } from '../../libfractos/errors.js';
import {
  FIO_PERCENTILES,
  LatencyHistogram,
  clatFromHistogram,
  emptyDirStats,
  percentileKey,
  type ClatStats,
  type DirStats,
  type FioReport,
  type JobStats,
  type SampleStats,
} from './stats.js';

// ---------------------------------------------------------------- text

/** Format like fio's num2str: at most 4 digits before scaling by 1000 (k, M, G...) or 1024 (Ki, Mi...), then 3 significant digits. */
export function num2str(v: number, base: 1000 | 1024 = 1000, unit = ''): string {
  const prefixes = base === 1024 ? ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi'] : ['', 'k', 'M', 'G', 'T', 'P'];
  let i = 0;
  let x = v;
  while (x >= 10000 && i < prefixes.length - 1) {
    x /= base;
    i++;
  }
  let s: string;
  if (i === 0 && Number.isInteger(x)) s = String(x);
  else if (x < 10) s = x.toFixed(2);
  else if (x < 100) s = x.toFixed(1);
  else s = x.toFixed(0);
  return `${s}${prefixes[i]}${unit}`;
}

function bigNum(v: number): string {
  // fio prints large latencies like 1607.5k
  if (v < 10000) return String(Math.round(v));
  let x = v;
  let i = 0;
  const p = ['', 'k', 'M', 'G'];
  while (x >= 10000 && i < p.length - 1) {
    x /= 1000;
    i++;
  }
  return `${x.toFixed(1)}${p[i]}`;
}

function pad(s: string, n: number): string {
  return s.padStart(n, ' ');
}

/** fio's clat line: unit chosen as fio does (nsec, usec if min>2000 && max>99999 && dev>1000, msec likewise x1000). */
function clatLine(c: ClatStats): string {
  let min = c.minNs;
  let max = c.maxNs;
  let mean = c.meanNs;
  let dev = c.stddevNs;
  let unit = 'nsec';
  if (min > 2_000_000 && max > 99_999_999 && dev > 1_000_000) {
    unit = 'msec';
    min = Math.floor(min / 1e6);
    max = Math.floor(max / 1e6);
    mean /= 1e6;
    dev /= 1e6;
  } else if (min > 2000 && max > 99_999 && dev > 1000) {
    unit = 'usec';
    min = Math.floor(min / 1e3);
    max = Math.floor(max / 1e3);
    mean /= 1e3;
    dev /= 1e3;
  }
  return `    clat (${unit}): min=${bigNum(min)}, max=${bigNum(max)}, avg=${pad(mean.toFixed(2), 5)}, stdev=${pad(dev.toFixed(2), 5)}`;
}

/** fio's percentile block (4 per line, unit scaled as fio: nsec/usec/msec with round-up). */
function percentileLines(c: ClatStats, list: readonly number[] = FIO_PERCENTILES): string[] {
  const vals = list.map((p) => c.percentiles[percentileKey(p)]).filter((v): v is number => v !== undefined);
  if (vals.length === 0) return [];
  const minv = Math.min(...vals);
  const maxv = Math.max(...vals);
  let div = 1;
  let unit = 'nsec';
  if (minv > 2_000_000 && maxv > 99_999_999) {
    div = 1e6;
    unit = 'msec';
  } else if (minv > 2000 && maxv > 99_999) {
    div = 1e3;
    unit = 'usec';
  }
  const scaled = vals.map((v) => Math.ceil(v / div));
  const width = Math.max(5, String(Math.max(...scaled)).length);
  const out = [`    clat percentiles (${unit}):`];
  let line = '     |';
  scaled.forEach((v, j) => {
    const last = j === scaled.length - 1;
    line += ` ${pad(list[j]!.toFixed(2), 5)}th=[${pad(String(v), width)}]${last ? '' : ','}`;
    if ((j + 1) % 4 === 0 || last) {
      out.push(line);
      line = '     |';
    }
  });
  return out;
}

function sampleLines(d: DirStats): string[] {
  const out: string[] = [];
  const fmt = (s: SampleStats, label: string, intMinMax: boolean): string =>
    `   ${label}: min=${intMinMax ? Math.round(s.min) : s.min.toFixed(0)}, max=${Math.round(s.max)}, avg=${pad(
      s.mean.toFixed(2),
      5,
    )}, stdev=${pad(s.stddev.toFixed(2), 5)}, samples=${s.samples}`;
  if (d.bwSamples) out.push(fmt(d.bwSamples, 'bw (  KiB/s)', true));
  if (d.iopsSamples) out.push(fmt(d.iopsSamples, 'iops        ', true));
  return out;
}

function dirText(label: 'read' | 'write', d: DirStats): string[] {
  const lines = [
    `  ${label}: IOPS=${num2str(d.iops)}, BW=${num2str(d.bwBytes, 1024, 'B/s')} (${num2str(d.bwBytes, 1000, 'B/s')})(${num2str(
      d.ioBytes,
      1024,
      'B',
    )}/${Math.round(d.runtimeMs)}msec)`,
    clatLine(d.clat),
    ...percentileLines(d.clat),
    ...sampleLines(d),
  ];
  if (d.clat.approximate) lines.push('    (percentiles approximated from per-clone figures)');
  return lines;
}

/**
 * fio-like text summary of one job.
 * @returns lines joined with '\n' (no trailing newline)
 */
export function formatJobText(j: JobStats, groupid = 0): string {
  const lines = [`${j.name}: (groupid=${groupid}, jobs=${j.numjobs}): err=${pad(String(j.error), 2)}: pid=${j.pid ?? process.pid}`];
  if (j.read.totalIos > 0) lines.push(...dirText('read', j.read));
  if (j.write.totalIos > 0) lines.push(...dirText('write', j.write));
  return lines.join('\n');
}

/**
 * fio-like text summary of a run: each job, then "Run status" totals.
 * @returns text ending with a newline
 */
export function formatTextReport(r: FioReport): string {
  const parts = [r.version, ...r.jobs.map((j) => formatJobText(j)), '', 'Run status group 0 (all jobs):'];
  for (const [label, key] of [
    ['   READ', 'read'],
    ['  WRITE', 'write'],
  ] as const) {
    const ds = r.jobs.map((j) => j[key]).filter((d) => d.totalIos > 0);
    if (ds.length === 0) continue;
    const bytes = ds.reduce((a, d) => a + d.ioBytes, 0);
    const rts = ds.map((d) => d.runtimeMs);
    const maxRt = Math.max(...rts);
    const bw = maxRt > 0 ? (bytes * 1000) / maxRt : 0;
    parts.push(
      `${label}: bw=${num2str(bw, 1024, 'B/s')} (${num2str(bw, 1000, 'B/s')}), io=${num2str(bytes, 1024, 'B')} (${num2str(
        bytes,
        1000,
        'B',
      )}), run=${Math.round(Math.min(...rts))}-${Math.round(maxRt)}msec`,
    );
  }
  return parts.join('\n') + '\n';
}

// ---------------------------------------------------------------- JSON (fio layout)

/** fio JSON of one direction (fio 3.x field names). */
export interface FioJsonDir {
  io_bytes: number;
  io_kbytes: number;
  bw_bytes: number;
  bw: number;
  iops: number;
  runtime: number;
  total_ios: number;
  short_ios: number;
  drop_ios: number;
  slat_ns: FioJsonLat;
  clat_ns: FioJsonLat & { percentile?: Record<string, number>; bins?: Record<string, number> };
  lat_ns: FioJsonLat;
  bw_min: number;
  bw_max: number;
  bw_agg: number;
  bw_mean: number;
  bw_dev: number;
  bw_samples: number;
  iops_min: number;
  iops_max: number;
  iops_mean: number;
  iops_stddev: number;
  iops_samples: number;
}

/** fio's latency summary object. */
export interface FioJsonLat {
  min: number;
  max: number;
  mean: number;
  stddev: number;
  N: number;
}

/** Options of `toFioJson`. */
export interface FioJsonOptions {
  /** Add clat_ns "bins" (as fio's json+). Default false. */
  bins?: boolean;
}

function latJson(c: ClatStats): FioJsonLat {
  return { min: Math.round(c.minNs), max: Math.round(c.maxNs), mean: c.meanNs, stddev: c.stddevNs, N: c.n };
}

function dirJson(d: DirStats, groupBw: number, o: FioJsonOptions): FioJsonDir {
  const clat: FioJsonDir['clat_ns'] = latJson(d.clat);
  if (d.clat.n > 0) clat.percentile = { ...d.clat.percentiles };
  if (o.bins && d.hist && d.hist.n > 0) clat.bins = d.hist.bins();
  const bw = d.bwSamples;
  const io = d.iopsSamples;
  const bwBytes = Math.floor(d.bwBytes);
  return {
    io_bytes: d.ioBytes,
    io_kbytes: Math.floor(d.ioBytes / 1024),
    bw_bytes: bwBytes,
    bw: Math.floor(bwBytes / 1024),
    iops: d.iops,
    runtime: Math.round(d.runtimeMs),
    total_ios: d.totalIos,
    short_ios: 0,
    drop_ios: 0,
    // Not measured separately: our clat spans submission too (see workload.ts). N = 0 says so.
    slat_ns: { min: 0, max: 0, mean: 0, stddev: 0, N: 0 },
    clat_ns: clat,
    // Total latency = what we measured as clat.
    lat_ns: latJson(d.clat),
    bw_min: bw ? Math.round(bw.min) : 0,
    bw_max: bw ? Math.round(bw.max) : 0,
    bw_agg: bw && groupBw > 0 ? (bw.mean / groupBw) * 100 : 0,
    bw_mean: bw ? bw.mean : 0,
    bw_dev: bw ? bw.stddev : 0,
    bw_samples: bw ? bw.samples : 0,
    iops_min: io ? Math.round(io.min) : 0,
    iops_max: io ? Math.round(io.max) : 0,
    iops_mean: io ? io.mean : 0,
    iops_stddev: io ? io.stddev : 0,
    iops_samples: io ? io.samples : 0,
  };
}

/**
 * Our report in fio's JSON layout: `{ "fio version", "timestamp", "timestamp_ms", "time",
 * "global options", "jobs": [ { "jobname", "groupid", "error", "eta", "elapsed", "job options",
 * "read", "write", "trim", "sync", "job_runtime" } ] }`; each direction has fio's fields
 * (`io_bytes`, `bw` KiB/s, `bw_bytes` B/s, `iops`, `runtime` ms, `total_ios`, `clat_ns` with
 * `percentile` {"1.000000": ns, ...}, ...). `slat_ns.N` is 0 (not measured); `lat_ns` = `clat_ns`.
 * @returns a plain object; `JSON.stringify(x, null, 2)` prints it
 */
export function toFioJson(r: FioReport, o: FioJsonOptions = {}): Record<string, unknown> {
  const groupBw = (key: 'read' | 'write'): number =>
    r.jobs.reduce((a, j) => a + (j[key].bwSamples ? j[key].bwSamples!.mean : 0), 0);
  const gr = groupBw('read');
  const gw = groupBw('write');
  return {
    'fio version': r.version,
    timestamp: Math.floor(r.timestampMs / 1000),
    timestamp_ms: r.timestampMs,
    time: new Date(r.timestampMs).toString(),
    'global options': r.jobs[0] ? { ...r.jobs[0].globalOptions } : {},
    jobs: r.jobs.map((j) => ({
      jobname: j.name,
      groupid: 0,
      error: j.error,
      eta: 0,
      elapsed: Math.round(j.jobRuntimeMs / 1000),
      'job options': { ...j.options },
      read: dirJson(j.read, gr, o),
      write: dirJson(j.write, gw, o),
      trim: dirJson(emptyDirStats(), 0, {}),
      sync: { total_ios: 0, lat_ns: { min: 0, max: 0, mean: 0, stddev: 0, N: 0 } },
      job_runtime: Math.round(j.jobRuntimeMs),
    })),
  };
}

// ---------------------------------------------------------------- parse real fio JSON

type Json = Record<string, unknown>;

function num(o: Json, k: string, ctx: string): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new FractosError('EPROTO', `fio JSON: '${k}' missing or not a number in ${ctx}`);
  return v;
}

function obj(o: Json, k: string, ctx: string): Json {
  const v = o[k];
  if (typeof v !== 'object' || v === null) throw new FractosError('EPROTO', `fio JSON: '${k}' missing in ${ctx}`);
  return v as Json;
}

function parseDir(o: Json, ctx: string): DirStats {
  const c = obj(o, 'clat_ns', ctx);
  const n = num(c, 'N', `${ctx}.clat_ns`);
  const summary = {
    N: n,
    min: num(c, 'min', ctx),
    max: num(c, 'max', ctx),
    mean: num(c, 'mean', ctx),
    stddev: num(c, 'stddev', ctx),
  };
  const pct = (c['percentile'] ?? {}) as Record<string, number>;
  const bins = c['bins'] as Record<string, number> | undefined;
  const hist = bins ? LatencyHistogram.fromBins(bins, summary) : undefined;
  const samples = (p: 'bw' | 'iops'): SampleStats | undefined => {
    const cnt = o[`${p}_samples`];
    if (typeof cnt !== 'number' || cnt === 0) return undefined;
    return {
      min: num(o, `${p}_min`, ctx),
      max: num(o, `${p}_max`, ctx),
      mean: num(o, `${p}_mean`, ctx),
      stddev: num(o, p === 'bw' ? 'bw_dev' : 'iops_stddev', ctx),
      samples: cnt,
    };
  };
  return {
    ioBytes: num(o, 'io_bytes', ctx),
    totalIos: num(o, 'total_ios', ctx),
    runtimeMs: num(o, 'runtime', ctx),
    iops: num(o, 'iops', ctx),
    bwBytes: num(o, 'bw_bytes', ctx),
    clat: {
      n,
      minNs: summary.min,
      maxNs: summary.max,
      meanNs: summary.mean,
      stddevNs: summary.stddev,
      percentiles: { ...pct },
    },
    bwSamples: samples('bw'),
    iopsSamples: samples('iops'),
    hist,
  };
}

/** Merge the per-clone entries of one job (fio prints one per clone without group_reporting). */
export function mergeDirStats(ds: readonly DirStats[]): DirStats {
  if (ds.length === 1) return ds[0]!;
  const ioBytes = ds.reduce((a, d) => a + d.ioBytes, 0);
  const totalIos = ds.reduce((a, d) => a + d.totalIos, 0);
  const runtimeMs = Math.max(...ds.map((d) => d.runtimeMs));
  let clat: ClatStats;
  let hist: LatencyHistogram | undefined;
  if (ds.every((d) => d.hist)) {
    hist = new LatencyHistogram();
    for (const d of ds) hist.merge(d.hist!);
    clat = clatFromHistogram(hist);
  } else {
    // Pooled exact summary; percentiles approximated by the N-weighted mean of clone percentiles.
    const h = new LatencyHistogram();
    for (const d of ds) {
      if (d.clat.n === 0) continue;
      const t = new LatencyHistogram();
      t.n = d.clat.n;
      t.min = d.clat.minNs;
      t.max = d.clat.maxNs;
      t.mean = d.clat.meanNs;
      t.m2 = d.clat.n > 1 ? d.clat.stddevNs ** 2 * (d.clat.n - 1) : 0;
      h.merge(t);
    }
    const percentiles: Record<string, number> = {};
    if (h.n > 0) {
      for (const k of Object.keys(ds.find((d) => d.clat.n > 0)!.clat.percentiles)) {
        let s = 0;
        for (const d of ds) if (d.clat.n > 0) s += (d.clat.percentiles[k] ?? 0) * d.clat.n;
        percentiles[k] = s / h.n;
      }
    }
    clat = { n: h.n, minNs: h.n ? h.min : 0, maxNs: h.max, meanNs: h.mean, stddevNs: h.stddev, percentiles, approximate: true };
  }
  const pool = (sel: (d: DirStats) => SampleStats | undefined): SampleStats | undefined => {
    const ss = ds.map(sel).filter((s): s is SampleStats => s !== undefined);
    if (ss.length === 0) return undefined;
    const h = new LatencyHistogram();
    for (const s of ss) {
      const t = new LatencyHistogram();
      t.n = s.samples;
      t.min = s.min;
      t.max = s.max;
      t.mean = s.mean;
      t.m2 = s.samples > 1 ? s.stddev ** 2 * (s.samples - 1) : 0;
      h.merge(t);
    }
    return { min: h.min, max: h.max, mean: h.mean, stddev: h.stddev, samples: h.n };
  };
  return {
    ioBytes,
    totalIos,
    runtimeMs,
    iops: runtimeMs > 0 ? (totalIos * 1000) / runtimeMs : 0,
    bwBytes: runtimeMs > 0 ? (ioBytes * 1000) / runtimeMs : 0,
    clat,
    bwSamples: pool((d) => d.bwSamples),
    iopsSamples: pool((d) => d.iopsSamples),
    hist,
  };
}

/**
 * Parse real fio's `--output-format=json` or `json+` output into a `FioReport`.
 * Text before the JSON object (fio warnings on stdout) is skipped. Consecutive entries with
 * the same jobname and groupid (numjobs clones) are merged into one job: exactly when json+
 * "bins" are present, else with approximate percentiles (`clat.approximate`).
 * @param input fio's stdout, or an already parsed object
 * @throws FractosError EPROTO (not fio JSON)
 */
export function parseFioJson(input: string | object): FioReport {
  let root: Json;
  if (typeof input === 'string') {
    const start = input.search(/^\{/m);
    if (start < 0) throw new FractosError('EPROTO', 'fio output has no JSON object');
    try {
      root = JSON.parse(input.slice(start)) as Json;
    } catch (e) {
      throw new FractosError('EPROTO', `fio output is not valid JSON: ${(e as Error).message}`);
    }
  } else {
    root = input as Json;
  }
  const version = root['fio version'];
  const jobs = root['jobs'];
  if (typeof version !== 'string' || !Array.isArray(jobs)) throw new FractosError('EPROTO', 'not fio JSON (no "fio version"/"jobs")');
  const globalOptions = (root['global options'] ?? {}) as Record<string, string>;
  const groups: { name: string; groupid: number; entries: Json[] }[] = [];
  for (const j of jobs as Json[]) {
    const name = String(j['jobname']);
    const groupid = Number(j['groupid'] ?? 0);
    const last = groups[groups.length - 1];
    if (last && last.name === name && last.groupid === groupid) last.entries.push(j);
    else groups.push({ name, groupid, entries: [j] });
  }
  const tsMs = typeof root['timestamp_ms'] === 'number' ? (root['timestamp_ms'] as number) : Date.now();
  return {
    version,
    timestampMs: tsMs,
    jobs: groups.map((g) => {
      const ctx = `job '${g.name}'`;
      return {
        name: g.name,
        numjobs: g.entries.length,
        error: Math.max(...g.entries.map((e) => Number(e['error'] ?? 0))),
        jobRuntimeMs: Math.max(...g.entries.map((e) => Number(e['job_runtime'] ?? 0))),
        options: { ...((g.entries[0]!['job options'] ?? {}) as Record<string, string>) },
        globalOptions: { ...globalOptions },
        read: mergeDirStats(g.entries.map((e) => parseDir(obj(e, 'read', ctx), `${ctx}.read`))),
        write: mergeDirStats(g.entries.map((e) => parseDir(obj(e, 'write', ctx), `${ctx}.write`))),
      };
    }),
  };
}

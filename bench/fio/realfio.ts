/**
 * Real fio as the local baseline: run it on a job file, parse its JSON, and compare our
 * figures with its figures as DESIGN.md §6 records.
 *
 * Overrides (filename, runtime, size) are applied by rewriting a temporary copy of the job
 * file, because fio lets a job file's `[global]` override command-line options.
 */
import type { BenchRecord } from '../records.js';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FractosError } from '../../libfractos/errors.js';
import { assertDeviceFree, claimDevice, type DeviceClaim } from '../../blockdev-adaptor/device-claim.js';
import { removeTempDir, tempDir } from '../../testbed/scratch.js';
import { parseFioJson } from './report.js';
import { percentileOf, type DirStats, type FioReport, type JobStats } from './stats.js';

/** Options of `runRealFio`. */
export interface RealFioOptions {
  /**
   * Replace every job's filename. An existing file or device is claimed (device-claim.ts)
   * while fio runs: one a blockdev holds is refused with EBUSY, and no blockdev can start on
   * it meanwhile.
   */
  filename?: string;
  /** Replace every job's runtime, ms (written as `runtime=<n>ms`). */
  runtimeMs?: number;
  /** Replace every job's size, bytes. */
  size?: number;
  /** fio binary (default: `$FIO` or `fio` on PATH). */
  fio?: string;
  /** Extra command-line arguments. */
  extraArgs?: readonly string[];
  /** Use `--output-format=json+` (histogram bins, exact clone merging). Default true. */
  jsonPlus?: boolean;
  /** Kill fio after this many ms (default: runtime + 120 s, or 10 min). */
  timeoutMs?: number;
}

/** Result of `runRealFio`. */
export interface RealFioResult {
  /** Parsed figures (clones merged per job). */
  report: FioReport;
  /** fio's JSON as parsed. */
  raw: unknown;
  /** The job file text fio ran (after overrides). */
  jobText: string;
  /** Command line. */
  argv: string[];
}

function fioBin(o?: { fio?: string }): string {
  return o?.fio ?? process.env['FIO'] ?? 'fio';
}

function exec(
  bin: string,
  args: readonly string[],
  timeoutMs: number,
): Promise<{ stdout: string; stderr: string; code: number | null; pid?: number; spawnErr?: NodeJS.ErrnoException }> {
  return new Promise((resolve) => {
    const child = execFile(bin, args, { maxBuffer: 256 * 1024 * 1024, timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const ecode: unknown = err ? (err as { code?: unknown }).code : undefined;
      if (ecode === 'ENOENT' || ecode === 'EACCES' || ecode === 'ENOEXEC') {
        resolve({ stdout, stderr, code: null, spawnErr: err as NodeJS.ErrnoException });
        return;
      }
      const code = err ? (typeof ecode === 'number' ? ecode : 1) : 0;
      resolve({ stdout, stderr, pid: child.pid, code: err && (err as { killed?: boolean }).killed ? -1 : code });
    });
  });
}

/**
 * Version string of the fio binary (e.g. `fio-3.33`).
 * @throws FractosError ENODEV when fio is not installed (or not runnable)
 */
export async function fioVersion(opts: { fio?: string } = {}): Promise<string> {
  const bin = fioBin(opts);
  const r = await exec(bin, ['--version'], 10_000);
  if (r.spawnErr || r.code !== 0) {
    throw new FractosError('ENODEV', `real fio not available ('${bin}'): ${r.spawnErr?.message ?? r.stderr.trim()}`);
  }
  return r.stdout.trim();
}

/** True when real fio can be run. */
export async function hasRealFio(opts: { fio?: string } = {}): Promise<boolean> {
  try {
    await fioVersion(opts);
    return true;
  } catch {
    return false;
  }
}

const OVERRIDE_KEYS: Record<string, string> = { filename: 'filename', runtime: 'runtime', timeout: 'runtime', size: 'size' };

/**
 * Rewrite a job file's text so `filename`, `runtime` and `size` take the given values in
 * every section: existing lines for those keys are dropped and the new ones are put after
 * each section header.
 * @param overrides values as fio text (e.g. `{ runtime: '1500ms', size: '1048576' }`)
 */
export function overrideJobText(text: string, overrides: { filename?: string; runtime?: string; size?: string }): string {
  const set = Object.entries(overrides).filter(([, v]) => v !== undefined) as [string, string][];
  if (set.length === 0) return text;
  const keys = new Set(set.map(([k]) => k));
  const out: string[] = [];
  for (const line of text.split(/\r?\n/)) {
    const t = line.trim();
    const m = /^([A-Za-z0-9_]+)\s*(=|$)/.exec(t);
    if (m && keys.has(OVERRIDE_KEYS[m[1]!.toLowerCase()] ?? '')) continue;
    out.push(line);
    if (/^\[[^\]]+\]/.test(t)) for (const [k, v] of set) out.push(`${k}=${v}`);
  }
  return out.join('\n');
}

/**
 * Run real fio on a job file and parse its JSON output.
 * @param jobFile path of the fio job file
 * @param opts filename / runtime (ms) / size (bytes) overrides, fio binary, timeout
 * @throws FractosError ENODEV (fio absent), ENOENT (job file), EBUSY (`opts.filename` is in use
 *         by a blockdev: `PATH is in use by blockdev pid N`), EIO (fio failed: exit status and
 *         stderr tail), ETIMEDOUT, EPROTO (unparsable output)
 */
export async function runRealFio(jobFile: string, opts: RealFioOptions = {}): Promise<RealFioResult> {
  const bin = fioBin(opts);
  await fioVersion({ fio: bin });
  let text: string;
  try {
    text = await readFile(jobFile, 'utf8');
  } catch (e) {
    throw new FractosError('ENOENT', `fio job file ${jobFile}: ${(e as Error).message}`);
  }
  const jobText = overrideJobText(text, {
    filename: opts.filename,
    runtime: opts.runtimeMs !== undefined ? `${Math.max(1, Math.round(opts.runtimeMs))}ms` : undefined,
    size: opts.size !== undefined ? String(opts.size) : undefined,
  });
  const claim = opts.filename !== undefined ? claimIfExists(opts.filename) : null;
  let dir: string;
  try {
    dir = tempDir('fractos-fio-');
  } catch (e) {
    claim?.release();
    throw e;
  }
  try {
    const tmpJob = join(dir, 'job.fio');
    await writeFile(tmpJob, jobText);
    const args = [`--output-format=${opts.jsonPlus === false ? 'json' : 'json+'}`, ...(opts.extraArgs ?? []), tmpJob];
    const timeoutMs = opts.timeoutMs ?? (opts.runtimeMs !== undefined ? opts.runtimeMs + 120_000 : 600_000);
    const r = await exec(bin, args, timeoutMs);
    if (r.spawnErr) throw new FractosError('ENODEV', `cannot run '${bin}': ${r.spawnErr.message}`);
    if (r.code === -1) throw new FractosError('ETIMEDOUT', `fio ran past ${timeoutMs} ms`);
    if (r.code !== 0) {
      const tail = (r.stderr + '\n' + r.stdout).trim().split('\n').slice(-8).join('\n');
      throw new FractosError('EIO', `fio exited with status ${r.code}: ${tail}`);
    }
    const start = r.stdout.search(/^\{/m);
    const raw: unknown = start >= 0 ? JSON.parse(r.stdout.slice(start)) : undefined;
    const report = parseFioJson(r.stdout);
    // fio's JSON has no pid: the text report shows the fio process's own.
    for (const j of report.jobs) j.pid = r.pid;
    return { report, raw, jobText, argv: [bin, ...args] };
  } finally {
    claim?.release();
    removeTempDir(dir);
  }
}

/** Claim `path` when it exists (null when it does not: fio creates it). Without the uring addon, only checks that no blockdev holds it. */
function claimIfExists(path: string): DeviceClaim | null {
  if (!existsSync(path)) return null;
  try {
    return claimDevice(path);
  } catch (e) {
    if (!(e instanceof FractosError) || e.code !== 'ENODEV') throw e;
    assertDeviceFree(path);
    return null;
  }
}

/** A DESIGN.md §6 benchmark record. */
/** A DESIGN §6 record (bench/records.ts) narrowed to the fio comparison. */
export interface FioBenchRecord extends BenchRecord {
  bench: 'fio';
  /** `cpu_per_io_ns`: every process of the stack together (bench/fio/cpu.ts), direction `all`. */
  metric: 'iops' | 'bw_bytes' | 'clat_p50_ns' | 'clat_p99_ns' | 'cpu_per_io_ns';
  /** Our figure. */
  value: number;
  /** `IOPS`, `B/s` or `ns`. */
  unit: 'IOPS' | 'B/s' | 'ns';
  /** Real fio's figure in the same run. */
  baseline: number;
  /** value / baseline; null when the baseline is 0. For latencies, > 1 means slower than fio. */
  ratio: number | null;
  params: { profile: string; target: string; direction: 'read' | 'write' | 'all'; job?: string; ios?: number; loadAvg?: number; [k: `ns_${string}`]: number };
}

/** Parameters of `compareRecords`. */
export interface CompareParams {
  /** Profile name, e.g. `randread-4k-qd1`. */
  profile: string;
  /** Our target, e.g. `blockdev`, `fs`, `dax`, `file`. */
  target: string;
}

const METRICS: { metric: FioBenchRecord['metric']; unit: FioBenchRecord['unit']; get: (d: DirStats) => number | undefined }[] = [
  { metric: 'iops', unit: 'IOPS', get: (d) => d.iops },
  { metric: 'bw_bytes', unit: 'B/s', get: (d) => d.bwBytes },
  { metric: 'clat_p50_ns', unit: 'ns', get: (d) => percentileOf(d.clat, 50) },
  { metric: 'clat_p99_ns', unit: 'ns', get: (d) => percentileOf(d.clat, 99) },
];

function jobsOf(x: FioReport | JobStats): JobStats[] {
  return 'jobs' in x ? x.jobs : [x];
}

/**
 * Compare our run with real fio's: for each job (matched by name, else by position) and each
 * direction that did I/O in either run, four records (iops, bw_bytes, clat_p50_ns, clat_p99_ns).
 * @param ours our report or one job
 * @param fio real fio's report or one job
 * @param params profile and target names, copied into every record
 */
export function compareRecords(ours: FioReport | JobStats, fio: FioReport | JobStats, params: CompareParams): FioBenchRecord[] {
  const a = jobsOf(ours);
  const b = jobsOf(fio);
  const multi = a.length > 1;
  const out: FioBenchRecord[] = [];
  a.forEach((job, i) => {
    const base = b.find((j) => j.name === job.name) ?? b[i];
    if (!base) return;
    for (const direction of ['read', 'write'] as const) {
      const d = job[direction];
      const f = base[direction];
      if (d.totalIos === 0 && f.totalIos === 0) continue;
      for (const m of METRICS) {
        const value = m.get(d) ?? 0;
        const baseline = m.get(f) ?? 0;
        out.push({
          bench: 'fio',
          metric: m.metric,
          value,
          unit: m.unit,
          baseline,
          ratio: baseline !== 0 ? value / baseline : null,
          params: { profile: params.profile, target: params.target, direction, ...(multi ? { job: job.name } : {}) },
        });
      }
    }
  });
  return out;
}

function fmtValue(v: number, unit: FioBenchRecord['unit']): string {
  if (unit === 'B/s') return `${(v / 1048576).toFixed(1)} MiB/s`;
  if (unit === 'ns') return v >= 10_000 ? `${(v / 1000).toFixed(1)} us` : `${Math.round(v)} ns`;
  return v >= 10_000 ? `${(v / 1000).toFixed(1)}k` : v.toFixed(0);
}

/**
 * Side-by-side table of comparison records: `profile target dir metric | ours | fio | ratio`.
 * @returns text ending with a newline
 */
export function formatCompareTable(records: readonly FioBenchRecord[]): string {
  const rows = [['profile', 'target', 'dir', 'metric', 'ours', 'fio', 'ratio']];
  for (const r of records) {
    rows.push([
      r.params.job ? `${r.params.profile}/${r.params.job}` : r.params.profile,
      r.params.target,
      r.params.direction,
      r.metric,
      fmtValue(r.value, r.unit),
      fmtValue(r.baseline, r.unit),
      r.ratio === null ? '-' : r.ratio.toFixed(3),
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const c4sep = '  ';
  const line = (r: string[]): string =>
    r.map((cell, c) => (c >= 4 ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join(c4sep);
  const text = [line(rows[0]!), widths.map((w) => '-'.repeat(w)).join(c4sep), ...rows.slice(1).map(line)];
  return text.join('\n') + '\n';
}

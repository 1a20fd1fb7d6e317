/**
 * Latency histogram and the internal statistics shape shared by our runner and by the
 * parser of real fio's JSON.
 *
 * The histogram is fio's own log-linear layout (stat.h: FIO_IO_U_PLAT_BITS=6,
 * FIO_IO_U_PLAT_VAL=64, FIO_IO_U_PLAT_GROUP_NR=29 => 1856 buckets over nanoseconds):
 * values below 128 ns are exact, above that each power-of-two range is split into 64
 * buckets (relative error <= 1/128 at the bucket midpoint), up to ~17 s (larger values land
 * in the last bucket). Why this and not a sample ring: memory is fixed (1856 doubles =
 * 14.5 KiB) however long the run, recording is O(1) with no allocation, histograms merge
 * exactly (numjobs clones, fio's `json+` "bins"), and percentiles are quantised exactly as
 * real fio's are, so ours and fio's figures are comparable value for value.
 * min, max, mean and stddev are exact (Welford), not taken from the buckets.
 */

/** fio's default percentile list (percent). */
export const FIO_PERCENTILES: readonly number[] = [
  1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.95, 99.99,
];

const PLAT_BITS = 6;
const PLAT_VAL = 1 << PLAT_BITS; // 64
const PLAT_GROUP_NR = 29;
/** Number of histogram buckets (as fio's FIO_IO_U_PLAT_NR). */
export const PLAT_NR = PLAT_GROUP_NR * PLAT_VAL; // 1856
const TWO32 = 2 ** 32;

/**
 * Bucket index of a latency, exactly as fio's `plat_val_to_idx`.
 * @param ns latency in nanoseconds (>= 0; rounded down)
 */
export function bucketIndex(ns: number): number {
  const v = ns > 0 ? Math.floor(ns) : 0;
  if (v < PLAT_VAL << 1) return v;
  const msb = v < TWO32 ? 31 - Math.clz32(v) : 63 - Math.clz32(Math.floor(v / TWO32));
  const errorBits = msb - PLAT_BITS;
  const base = (errorBits + 1) << PLAT_BITS;
  const offset = (PLAT_VAL - 1) & Math.floor(v / 2 ** errorBits);
  const idx = base + offset;
  return idx < PLAT_NR - 1 ? idx : PLAT_NR - 1;
}

/**
 * Representative latency (ns) of a bucket: the midpoint, exactly as fio's `plat_idx_to_val`.
 */
export function bucketValue(idx: number): number {
  if (idx < PLAT_VAL << 1) return idx;
  const errorBits = (idx >> PLAT_BITS) - 1;
  const base = 2 ** (errorBits + PLAT_BITS);
  const k = idx % PLAT_VAL;
  return base + (k + 0.5) * 2 ** errorBits;
}

/** fio's JSON key for a percentile: `50` -> `"50.000000"`. */
export function percentileKey(p: number): string {
  return p.toFixed(6);
}

/** Log-linear latency histogram (ns) with exact min/max/mean/stddev. See the module comment. */
export class LatencyHistogram {
  /** Counts per bucket (doubles: no 2^32 overflow on long runs). */
  readonly counts = new Float64Array(PLAT_NR);
  /** Number of samples. */
  n = 0;
  /** Smallest sample, ns (0 when empty). */
  min = Infinity;
  /** Largest sample, ns. */
  max = 0;
  /** Running mean, ns. */
  mean = 0;
  /** Sum of squared deviations (Welford), ns^2. */
  m2 = 0;

  /** Record one latency in ns. O(1), allocation-free. */
  record(ns: number): void {
    const v = ns > 0 ? Math.round(ns) : 0;
    this.counts[bucketIndex(v)]! += 1;
    const n = ++this.n;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
    const d = v - this.mean;
    this.mean += d / n;
    this.m2 += d * (v - this.mean);
  }

  /** Add another histogram's samples into this one (exact; Chan's formula for the variance). */
  merge(o: LatencyHistogram): this {
    if (o.n === 0) return this;
    for (let i = 0; i < PLAT_NR; i++) this.counts[i]! += o.counts[i]!;
    const n = this.n + o.n;
    const d = o.mean - this.mean;
    this.m2 += o.m2 + (d * d * this.n * o.n) / n;
    this.mean += (d * o.n) / n;
    this.n = n;
    if (o.min < this.min) this.min = o.min;
    if (o.max > this.max) this.max = o.max;
    return this;
  }

  /** Sample standard deviation (n-1, as fio), ns. */
  get stddev(): number {
    return this.n > 1 ? Math.sqrt(this.m2 / (this.n - 1)) : 0;
  }

  /**
   * Percentiles with fio's rule (first bucket whose cumulative count >= p/100 * n; its midpoint).
   * @param list percents, ascending (default `FIO_PERCENTILES`)
   * @returns ns per percent, same order; empty when there are no samples
   */
  percentiles(list: readonly number[] = FIO_PERCENTILES): number[] {
    const out: number[] = [];
    if (this.n === 0) return out;
    let sum = 0;
    let j = 0;
    for (let i = 0; i < PLAT_NR && j < list.length; i++) {
      sum += this.counts[i]!;
      while (j < list.length && sum >= (list[j]! / 100) * this.n) {
        out.push(bucketValue(i));
        j++;
      }
    }
    while (out.length < list.length) out.push(bucketValue(PLAT_NR - 1));
    return out;
  }

  /** Non-empty buckets as fio's json+ "bins": `{ "<bucket value ns>": count }`. */
  bins(): Record<string, number> {
    const r: Record<string, number> = {};
    for (let i = 0; i < PLAT_NR; i++) if (this.counts[i]! > 0) r[String(bucketValue(i))] = this.counts[i]!;
    return r;
  }

  /**
   * Rebuild a histogram from fio json+ "bins" plus the exact summary fio reports.
   * @param bins `{ "<ns>": count }` (fio's clat_ns.bins)
   * @param s fio's clat_ns summary: N, min, max, mean, stddev (ns)
   */
  static fromBins(bins: Record<string, number>, s: { N: number; min: number; max: number; mean: number; stddev: number }): LatencyHistogram {
    const h = new LatencyHistogram();
    for (const [k, c] of Object.entries(bins)) h.counts[bucketIndex(Number(k))]! += c;
    h.n = s.N;
    h.min = s.N > 0 ? s.min : Infinity;
    h.max = s.max;
    h.mean = s.mean;
    h.m2 = s.N > 1 ? s.stddev * s.stddev * (s.N - 1) : 0;
    return h;
  }
}

/** Completion-latency summary of one direction (all ns). */
export interface ClatStats {
  /** Samples. */
  n: number;
  minNs: number;
  maxNs: number;
  meanNs: number;
  /** Sample stddev (n-1). */
  stddevNs: number;
  /** fio's percentile table: key `percentileKey(p)` ("50.000000") -> ns. Empty when n = 0. */
  percentiles: Record<string, number>;
  /** True when percentiles were approximated (merging fio clones without json+ bins). */
  approximate?: boolean;
}

/** Per-interval samples summary (fio's bw_* / iops_* fields). */
export interface SampleStats {
  min: number;
  max: number;
  mean: number;
  /** Sample stddev. */
  stddev: number;
  samples: number;
}

/** One direction (read or write) of one job. */
export interface DirStats {
  /** Bytes transferred. */
  ioBytes: number;
  /** Completed ops. */
  totalIos: number;
  /** Run time of this direction, ms (0 when no I/O). */
  runtimeMs: number;
  /** Ops per second. */
  iops: number;
  /** Bandwidth, bytes per second. */
  bwBytes: number;
  /** Completion latency. */
  clat: ClatStats;
  /** Bandwidth samples, KiB/s (fio's bw_min/max/mean/dev/samples); undefined when unknown. */
  bwSamples?: SampleStats;
  /** IOPS samples (fio's iops_min/max/mean/stddev/samples). */
  iopsSamples?: SampleStats;
  /** Full histogram when known (ours, or fio's json+); enables exact merging. */
  hist?: LatencyHistogram;
}

/** One job (all clones of a section, like fio's group_reporting for that job). */
export interface JobStats {
  /** fio "jobname". */
  name: string;
  /** Clones aggregated into this entry. */
  numjobs: number;
  /** 0, or an errno-like code when the job failed. */
  error: number;
  /** OS pid of the process that ran the job (the text report's `pid=`; default this process). */
  pid?: number;
  /** Wall time of the job, ms (fio "job_runtime"). */
  jobRuntimeMs: number;
  /** Raw job-section options (fio "job options"). */
  options: Record<string, string>;
  /** Raw global options (fio "global options"). */
  globalOptions: Record<string, string>;
  read: DirStats;
  write: DirStats;
}

/** A whole run, ours or real fio's. */
export interface FioReport {
  /** fio "fio version": `fractos-fio` for ours, e.g. `fio-3.33` for real fio. */
  version: string;
  /** Start of the run, ms since the epoch. */
  timestampMs: number;
  jobs: JobStats[];
}

/** Summarise a histogram. */
export function clatFromHistogram(h: LatencyHistogram, list: readonly number[] = FIO_PERCENTILES): ClatStats {
  const pv = h.percentiles(list);
  const percentiles: Record<string, number> = {};
  pv.forEach((v, i) => (percentiles[percentileKey(list[i]!)] = v));
  return { n: h.n, minNs: h.n ? h.min : 0, maxNs: h.max, meanNs: h.mean, stddevNs: h.stddev, percentiles };
}

/** Summarise a list of per-interval samples. */
export function sampleStats(xs: readonly number[]): SampleStats | undefined {
  if (xs.length === 0) return undefined;
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  for (const x of xs) {
    if (x < min) min = x;
    if (x > max) max = x;
    sum += x;
  }
  const mean = sum / xs.length;
  let ss = 0;
  for (const x of xs) ss += (x - mean) * (x - mean);
  return { min, max, mean, stddev: xs.length > 1 ? Math.sqrt(ss / (xs.length - 1)) : 0, samples: xs.length };
}

/**
 * Direction stats from raw counters.
 * @param ioBytes bytes moved; @param totalIos ops; @param runtimeMs ms; @param h latency histogram (ns)
 */
export function buildDirStats(
  ioBytes: number,
  totalIos: number,
  runtimeMs: number,
  h: LatencyHistogram,
  samples?: { bwKiB: readonly number[]; iops: readonly number[] },
): DirStats {
  const rt = totalIos > 0 ? runtimeMs : 0;
  return {
    ioBytes,
    totalIos,
    runtimeMs: rt,
    iops: rt > 0 ? (totalIos * 1000) / rt : 0,
    bwBytes: rt > 0 ? (ioBytes * 1000) / rt : 0,
    clat: clatFromHistogram(h),
    bwSamples: samples ? sampleStats(samples.bwKiB) : undefined,
    iopsSamples: samples ? sampleStats(samples.iops) : undefined,
    hist: h,
  };
}

/** Empty direction. */
export function emptyDirStats(): DirStats {
  return buildDirStats(0, 0, 0, new LatencyHistogram());
}

/**
 * Look up a percentile (ns) in a ClatStats, or undefined when absent.
 * @param p percent, e.g. 50 or 99.9
 */
export function percentileOf(c: ClatStats, p: number): number | undefined {
  return c.percentiles[percentileKey(p)];
}

/**
 * fio-compatible workload engine: drives any `IoTarget` with the pattern of a `FioJob`.
 *
 * Semantics (and where they differ from fio):
 * - `numjobs` clones run concurrently in this process's event loop (fio forks processes);
 *   each clone keeps at most `iodepth` ops in flight, so the target sees up to
 *   `numjobs * iodepth`. Every clone covers the same region `[0, size)` (fio's default).
 * - Random offsets are uniform over the `floor(size / bs)` blocks, aligned to `bs`, drawn
 *   from a seeded xoshiro128** PRNG per clone (with replacement: fio's random map, which
 *   visits every block once per pass, is not emulated). Sequential offsets advance by `bs`
 *   per direction and wrap to 0 at the end of the region.
 * - Mixed modes (`rw`, `randrw`) choose read with probability `rwmixread / 100` per op.
 * - Stop: with `time_based`, ops are issued until `runtime` elapses; otherwise after `size`
 *   bytes per clone (or `runtime`, whichever comes first). In-flight ops are always drained.
 * - Latency ("clat") is the time from the `IoTarget` call to its callback, in ns, from
 *   `performance.now()` (monotonic, sub-µs resolution, no allocation). That spans fio's
 *   slat + clat: whatever a target does before submitting counts as completion latency.
 * - bw/iops samples are taken per clone every 500 ms (fio's bwavgtime/iopsavgtime default).
 * - Hot path: one preallocated slot per in-flight op with a completion callback bound once,
 *   so issuing an op allocates nothing. Targets that complete synchronously are handled
 *   without recursion.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { read as fsRead, write as fsWrite, constants as fsConstants } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { FractosError, errorCodeFromErrno } from '../../libfractos/errors.js';
import type { FioJob } from './jobfile.js';
import { LatencyHistogram, buildDirStats, type FioReport, type JobStats } from './stats.js';

/**
 * A device, volume or file the engine drives. Offsets and lengths are in bytes; the engine
 * only issues `offset + length <= size`. Each call must invoke `cb` exactly once, with null
 * on success or an Error (a `FractosError` preferably). Data buffers are the target's own.
 */
export interface IoTarget {
  /** Addressable bytes. */
  readonly size: number;
  read(offset: number, length: number, cb: (err: Error | null) => void): void;
  write(offset: number, length: number, cb: (err: Error | null) => void): void;
}

/** Progress of a running job, emitted about once per `progressIntervalMs`. */
export interface FioProgress {
  /** Job name. */
  job: string;
  /** Since the job started, ms. */
  elapsedMs: number;
  /** Completed reads / writes so far. */
  readIos: number;
  writeIos: number;
  /** Average IOPS (reads + writes) since the start. */
  iops: number;
  /** IOPS over the last interval. */
  intervalIops: number;
}

/** Options of `runJob`. */
export interface RunJobOptions {
  /** Override the job's runtime, ms. */
  runtimeMs?: number;
  /** PRNG seed (clone i uses seed + i). Default: fixed (0x5eed), so runs are repeatable. */
  seed?: number;
  /** Called about once per `progressIntervalMs` (default 1000 ms) while the job runs. */
  onProgress?: (p: FioProgress) => void;
  progressIntervalMs?: number;
  /** Stop issuing when aborted (in-flight ops are drained; the result covers what ran). */
  signal?: AbortSignal;
}

const SAMPLE_MS = 500;
const READ = 0;
const WRITE = 1;

/** xoshiro128** (32-bit state words), seeded through splitmix32. Fast, no allocation. */
class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    let s = seed >>> 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next() | 1;
  }
  /** Uniform uint32. */
  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }
  /** Uniform in [0, 1) with 53 bits. */
  float(): number {
    return ((this.u32() >>> 5) * 67108864 + (this.u32() >>> 6)) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** Per-job shared accumulators. */
class JobAcc {
  readonly hist = [new LatencyHistogram(), new LatencyHistogram()];
  readonly bytes = [0, 0];
  readonly ios = [0, 0];
  readonly bwSamples: number[][] = [[], []];
  readonly iopsSamples: number[][] = [[], []];
  error: Error | null = null;
  startMs = 0;
  lastCompletionMs = 0;
  nextProgressMs = Infinity;
  lastProgressIos = 0;
  lastProgressMs = 0;
}

class Slot {
  startMs = 0;
  dir = READ;
  readonly done: (err: Error | null) => void;
  constructor(clone: Clone) {
    this.done = (err: Error | null): void => clone.complete(this, err);
  }
}

class Clone {
  private readonly free: Slot[] = [];
  private inflight = 0;
  private pumping = false;
  private stopping = false;
  private finished = false;
  private issuedBytes = 0;
  private readonly seqPos = [0, 0];
  private readonly rng: Rng;
  private readonly random: boolean;
  private readonly mixRead: number; // probability of a read
  private readonly nblocks: number;
  private sampleStartMs = 0;
  private readonly sIos = [0, 0];
  private readonly sBytes = [0, 0];
  private readonly active: [boolean, boolean];

  constructor(
    private readonly job: FioJob,
    private readonly target: IoTarget,
    private readonly acc: JobAcc,
    private readonly region: number,
    private readonly deadlineMs: number,
    private readonly byteLimit: number,
    seed: number,
    private readonly progressMs: number,
    private readonly onProgress: ((p: FioProgress) => void) | undefined,
    private readonly signal: AbortSignal | undefined,
    private readonly onDone: () => void,
  ) {
    for (let i = 0; i < job.iodepth; i++) this.free.push(new Slot(this));
    this.rng = new Rng(seed);
    this.random = job.rw === 'randread' || job.rw === 'randwrite' || job.rw === 'randrw';
    this.mixRead =
      job.rw === 'read' || job.rw === 'randread' ? 1 : job.rw === 'write' || job.rw === 'randwrite' ? 0 : job.rwmixread / 100;
    this.active = [this.mixRead > 0, this.mixRead < 1];
    this.nblocks = Math.floor(region / job.bs);
  }

  start(nowMs: number): void {
    this.sampleStartMs = nowMs;
    this.pump();
  }

  /** Issue ops until `iodepth` are in flight or the job must stop; finish when drained. */
  pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    const bs = this.job.bs;
    while (this.inflight < this.job.iodepth && !this.stopping) {
      const now = performance.now();
      if (now >= this.deadlineMs || this.issuedBytes >= this.byteLimit || this.acc.error || this.signal?.aborted) {
        this.stopping = true;
        break;
      }
      const dir = this.mixRead === 1 ? READ : this.mixRead === 0 ? WRITE : this.rng.float() < this.mixRead ? READ : WRITE;
      let offset: number;
      if (this.random) {
        offset = Math.floor(this.rng.float() * this.nblocks) * bs;
      } else {
        offset = this.seqPos[dir]!;
        const nextPos = offset + bs;
        this.seqPos[dir] = nextPos + bs > this.region ? 0 : nextPos;
      }
      const slot = this.free.pop()!;
      slot.dir = dir;
      this.issuedBytes += bs;
      this.inflight++;
      slot.startMs = performance.now();
      if (dir === READ) this.target.read(offset, bs, slot.done);
      else this.target.write(offset, bs, slot.done);
    }
    this.pumping = false;
    if (this.stopping && this.inflight === 0 && !this.finished) {
      this.finished = true;
      this.flushSample(performance.now(), true);
      this.onDone();
    }
  }

  complete(slot: Slot, err: Error | null): void {
    const now = performance.now();
    this.inflight--;
    this.free.push(slot);
    const acc = this.acc;
    if (err) {
      if (!acc.error) acc.error = err;
      this.stopping = true;
    } else {
      const d = slot.dir;
      acc.hist[d]!.record((now - slot.startMs) * 1e6);
      acc.bytes[d]! += this.job.bs;
      acc.ios[d]!++;
      this.sIos[d]!++;
      this.sBytes[d]! += this.job.bs;
      if (now > acc.lastCompletionMs) acc.lastCompletionMs = now;
      if (now - this.sampleStartMs >= SAMPLE_MS) this.flushSample(now, false);
      if (now >= acc.nextProgressMs && this.onProgress) this.emitProgress(now);
    }
    if (!this.pumping) this.pump();
  }

  private flushSample(now: number, final: boolean): void {
    const dt = now - this.sampleStartMs;
    // fio drops a trailing partial interval; keep it only when it is most of one.
    if (dt > 0 && (!final || dt >= SAMPLE_MS * 0.5)) {
      for (let d = 0; d < 2; d++) {
        if (!this.active[d]) continue;
        this.acc.iopsSamples[d]!.push((this.sIos[d]! * 1000) / dt);
        this.acc.bwSamples[d]!.push((this.sBytes[d]! / 1024) * (1000 / dt));
      }
    }
    this.sIos[0] = this.sIos[1] = this.sBytes[0] = this.sBytes[1] = 0;
    this.sampleStartMs = now;
  }

  private emitProgress(now: number): void {
    const acc = this.acc;
    const ios = acc.ios[0]! + acc.ios[1]!;
    const elapsed = now - acc.startMs;
    const dt = now - acc.lastProgressMs;
    const p: FioProgress = {
      job: this.job.name,
      elapsedMs: elapsed,
      readIos: acc.ios[0]!,
      writeIos: acc.ios[1]!,
      iops: elapsed > 0 ? (ios * 1000) / elapsed : 0,
      intervalIops: dt > 0 ? ((ios - acc.lastProgressIos) * 1000) / dt : 0,
    };
    acc.lastProgressIos = ios;
    acc.lastProgressMs = now;
    acc.nextProgressMs = now + this.progressMs;
    this.onProgress!(p);
  }
}

/**
 * Run one job (all its `numjobs` clones) against a target.
 * @param job parsed job (`parseJobFile`); `job.size` bytes of region (default: `target.size`)
 * @param target the device, volume or file
 * @param opts runtime override (ms), PRNG seed, progress callback, abort signal
 * @returns the job's statistics (reads and writes; latencies in ns, runtime in ms)
 * @throws FractosError ERANGE (region larger than the target), EINVAL (region smaller than bs,
 *         time_based without runtime); the first I/O error of the target (a non-FractosError is
 *         wrapped as EIO) after in-flight ops drain
 */
export function runJob(job: FioJob, target: IoTarget, opts: RunJobOptions = {}): Promise<JobStats> {
  const region = job.size ?? target.size;
  if (region > target.size) {
    return Promise.reject(
      new FractosError('ERANGE', `job '${job.name}': size ${region} B exceeds the target's ${target.size} B`),
    );
  }
  if (region < job.bs) {
    return Promise.reject(new FractosError('EINVAL', `job '${job.name}': region ${region} B is smaller than bs ${job.bs} B`));
  }
  const runtimeMs = opts.runtimeMs ?? job.runtimeMs;
  if (job.timeBased && runtimeMs === undefined) {
    return Promise.reject(new FractosError('EINVAL', `job '${job.name}' is time_based but has no runtime`));
  }
  const acc = new JobAcc();
  const progressMs = opts.progressIntervalMs ?? 1000;
  const seed = opts.seed ?? 0x5eed;
  return new Promise<JobStats>((resolve, reject) => {
    const start = performance.now();
    acc.startMs = start;
    acc.lastCompletionMs = start;
    acc.lastProgressMs = start;
    acc.nextProgressMs = opts.onProgress ? start + progressMs : Infinity;
    const deadline = runtimeMs !== undefined ? start + runtimeMs : Infinity;
    const byteLimit = job.timeBased ? Infinity : region;
    let remaining = job.numjobs;
    const onDone = (): void => {
      if (--remaining > 0) return;
      const err = acc.error;
      if (err) {
        reject(err instanceof FractosError ? err : new FractosError(errnoCode(err), `job '${job.name}': ${err.message}`));
        return;
      }
      const runtime = acc.lastCompletionMs - start;
      const stats: JobStats = {
        name: job.name,
        numjobs: job.numjobs,
        error: 0,
        jobRuntimeMs: performance.now() - start,
        options: { ...job.jobOptions },
        globalOptions: { ...job.globalOptions },
        read: buildDirStats(acc.bytes[READ]!, acc.ios[READ]!, runtime, acc.hist[READ]!, {
          bwKiB: acc.bwSamples[READ]!,
          iops: acc.iopsSamples[READ]!,
        }),
        write: buildDirStats(acc.bytes[WRITE]!, acc.ios[WRITE]!, runtime, acc.hist[WRITE]!, {
          bwKiB: acc.bwSamples[WRITE]!,
          iops: acc.iopsSamples[WRITE]!,
        }),
      };
      resolve(stats);
    };
    const clones: Clone[] = [];
    for (let i = 0; i < job.numjobs; i++) {
      clones.push(
        new Clone(job, target, acc, region, deadline, byteLimit, (seed + i) >>> 0, progressMs, opts.onProgress, opts.signal, onDone),
      );
    }
    for (const c of clones) c.start(start);
  });
}

function errnoCode(err: Error): FractosError['code'] {
  const code = (err as NodeJS.ErrnoException).code;
  return typeof code === 'string' ? errorCodeFromErrno(code) : 'EIO';
}

/**
 * Run all jobs of a job file concurrently (fio's default without `stonewall`) and gather
 * them into a report.
 * @param jobs parsed jobs
 * @param targetFor the target of each job (e.g. from `job.filename`); may be shared
 * @param opts as `runJob` (the seed is offset per job)
 */
export async function runJobs(
  jobs: readonly FioJob[],
  targetFor: (job: FioJob) => IoTarget,
  opts: RunJobOptions = {},
): Promise<FioReport> {
  const timestampMs = Date.now();
  const seed = opts.seed ?? 0x5eed;
  const stats = await Promise.all(jobs.map((j, i) => runJob(j, targetFor(j), { ...opts, seed: seed + i * 1000 })));
  return { version: 'fractos-fio', timestampMs, jobs: stats };
}

/** Options of `FileTarget.open`. */
export interface FileTargetOptions {
  /** Bytes to expose. Default: the file's size. A regular file shorter than this is extended (sparse). */
  size?: number;
  /** Create the file when missing (default true; needs `size`). */
  create?: boolean;
  /** Open with O_DIRECT (default false). Node's Buffers are not guaranteed aligned: use only if the FS tolerates it. */
  direct?: boolean;
  /**
   * Write the bytes the file gains (new or extended) with data, as fio's "Laying out IO file",
   * instead of leaving a sparse hole (reads of holes never touch the device). Default false.
   */
  layout?: boolean;
}

class FileOp {
  buf: Buffer;
  cb: ((err: Error | null) => void) | null = null;
  len = 0;
  readonly onRead: (err: NodeJS.ErrnoException | null, n: number) => void;
  readonly onWrite: (err: NodeJS.ErrnoException | null, n: number) => void;
  constructor(owner: FileTarget, size: number) {
    this.buf = FileOp.alloc(size);
    this.onRead = (err, n): void => owner.finish(this, err, n);
    this.onWrite = (err, n): void => owner.finish(this, err, n);
  }
  static alloc(size: number): Buffer {
    const b = Buffer.allocUnsafeSlow(size);
    randomFillSync(b);
    return b;
  }
}

/**
 * `IoTarget` over a regular file (or a block device with an explicit size), with positional
 * `fs.read`/`fs.write` on the fd of a `FileHandle`. Reads land in, and writes come from,
 * pooled buffers filled once with random bytes. Goes through the page cache unless `direct`.
 * A sanity and test target, not a FractOS service.
 */
export class FileTarget implements IoTarget {
  private readonly pool: FileOp[] = [];

  private constructor(
    private readonly fh: FileHandle,
    /** Path opened. */
    readonly path: string,
    /** Bytes exposed. */
    readonly size: number,
  ) {}

  /**
   * Open (and create or extend) a file.
   * @throws FractosError EINVAL (no size for a new file or a device), ENOENT, EPERM, EIO
   */
  static async open(path: string, opts: FileTargetOptions = {}): Promise<FileTarget> {
    const create = opts.create ?? true;
    let flags = fsConstants.O_RDWR | (create ? fsConstants.O_CREAT : 0);
    if (opts.direct) flags |= fsConstants.O_DIRECT;
    let fh: FileHandle;
    try {
      fh = await open(path, flags, 0o644);
    } catch (e) {
      throw new FractosError(errnoCode(e as Error), `open ${path}: ${(e as Error).message}`);
    }
    try {
      const st = await fh.stat();
      let size: number;
      if (st.isFile()) {
        size = opts.size ?? st.size;
        if (size <= 0) throw new FractosError('EINVAL', `${path}: empty file and no size given`);
        if (st.size < size) {
          if (opts.layout) {
            const chunk = FileOp.alloc(1 << 20);
            for (let off = st.size; off < size; off += chunk.length) {
              await fh.write(chunk, 0, Math.min(chunk.length, size - off), off);
            }
            await fh.sync();
          } else {
            await fh.truncate(size);
          }
        }
      } else if (st.isBlockDevice()) {
        if (opts.size === undefined) throw new FractosError('EINVAL', `${path}: a block device needs an explicit size`);
        size = opts.size;
      } else {
        throw new FractosError('EINVAL', `${path}: not a regular file or block device`);
      }
      return new FileTarget(fh, path, size);
    } catch (e) {
      await fh.close();
      throw e instanceof FractosError ? e : new FractosError(errnoCode(e as Error), `${path}: ${(e as Error).message}`);
    }
  }

  private take(length: number, cb: (err: Error | null) => void): FileOp {
    const op = this.pool.pop() ?? new FileOp(this, length);
    if (op.buf.length < length) op.buf = FileOp.alloc(length);
    op.cb = cb;
    op.len = length;
    return op;
  }

  /** Read `length` bytes at `offset` into a pooled buffer. Errors: ERANGE, EIO (short read), errno codes. */
  read(offset: number, length: number, cb: (err: Error | null) => void): void {
    if (offset < 0 || offset + length > this.size) {
      cb(new FractosError('ERANGE', `read [${offset}, +${length}) outside ${this.size} B`));
      return;
    }
    const op = this.take(length, cb);
    fsRead(this.fh.fd, op.buf, 0, length, offset, op.onRead);
  }

  /** Write `length` bytes at `offset` from a pooled buffer. Errors: ERANGE, EIO (short write), errno codes. */
  write(offset: number, length: number, cb: (err: Error | null) => void): void {
    if (offset < 0 || offset + length > this.size) {
      cb(new FractosError('ERANGE', `write [${offset}, +${length}) outside ${this.size} B`));
      return;
    }
    const op = this.take(length, cb);
    fsWrite(this.fh.fd, op.buf, 0, length, offset, op.onWrite);
  }

  /** @internal completion of a pooled op. */
  finish(op: FileOp, err: NodeJS.ErrnoException | null, n: number): void {
    const cb = op.cb!;
    const len = op.len;
    op.cb = null;
    this.pool.push(op);
    if (err) cb(new FractosError(errnoCode(err), `${this.path}: ${err.message}`));
    else if (n !== len) cb(new FractosError('EIO', `${this.path}: short transfer ${n} of ${len} B`));
    else cb(null);
  }

  /** Close the file (wait for in-flight ops first). */
  async close(): Promise<void> {
    await this.fh.close();
  }
}

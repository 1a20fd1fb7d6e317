/**
 * CPU time per I/O (issue #8: "CPU per 4 KiB I/O at QD32, all processes together"): the
 * user + system time of every process of the stack under test, sampled before and after a
 * run, divided by the I/Os the run completed; and real fio's own figure from its JSON
 * (`usr_cpu` + `sys_cpu`, percent of `job_runtime`), for the same profile in the same run.
 *
 * Sources: another process's time is `/proc/PID/stat` fields 14 and 15 (utime, stime: all its
 * threads, including exited ones, in USER_HZ ticks, proc(5)); this process's is
 * `process.cpuUsage()` (getrusage(RUSAGE_SELF), microseconds). USER_HZ is 100 on Linux
 * (`getconf CLK_TCK`), so another process's figure has a 10 ms resolution: over a 4 s run of
 * ~100k I/Os that is 0.1 µs per I/O per process.
 */
import { readFileSync } from 'node:fs';
import type { FioReport, JobStats } from './stats.js';
import type { CompareParams, FioBenchRecord } from './realfio.js';

/** USER_HZ (proc(5)): the unit of utime/stime in /proc/PID/stat. */
const USER_HZ = 100;

/** A process whose CPU time is counted: `pid` 0 (or this process's pid) is this process. */
export interface CpuProc {
  name: string;
  pid: number;
}

/** One process's share of a run. */
export interface CpuShare {
  name: string;
  pid: number;
  /** User + system time over the run, ns; null when it could not be read (the process exited). */
  cpuNs: number | null;
}

/**
 * User + system time of `pid` so far, ns; null when /proc/PID/stat cannot be read.
 * The command name (field 2) may hold spaces and parentheses: fields are counted after its
 * last ')'.
 */
export function procCpuNs(pid: number): number | null {
  if (pid === 0 || pid === process.pid) {
    const u = process.cpuUsage();
    return (u.user + u.system) * 1000;
  }
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return null;
  }
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state): utime is field 14, stime field 15.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return ((utime + stime) * 1e9) / USER_HZ;
}

/** CPU time of a set of processes between `start()` and `stop()`. */
export class CpuMeter {
  readonly #procs: CpuProc[];
  readonly #t0: (number | null)[];

  /** Samples every process now. */
  private constructor(procs: readonly CpuProc[]) {
    this.#procs = [...procs];
    this.#t0 = this.#procs.map((p) => procCpuNs(p.pid));
  }

  static start(procs: readonly CpuProc[]): CpuMeter {
    return new CpuMeter(procs);
  }

  /** Each process's time since `start()`. */
  stop(): CpuShare[] {
    return this.#procs.map((p, i) => {
      const a = this.#t0[i];
      const b = procCpuNs(p.pid);
      return { name: p.name, pid: p.pid, cpuNs: a === null || a === undefined || b === null ? null : b - a };
    });
  }
}

/** Completed I/Os (reads + writes) of a report's jobs. */
export function totalIos(r: FioReport | JobStats): number {
  const jobs = 'jobs' in r ? r.jobs : [r];
  return jobs.reduce((s, j) => s + j.read.totalIos + j.write.totalIos, 0);
}

/**
 * Real fio's CPU time from its JSON (each job entry's `usr_cpu` + `sys_cpu`, percent of its
 * `job_runtime`), ns, summed over the entries (clones); null when the fields are missing.
 * This is the job processes' time; fio's parent (status) process is not counted.
 */
export function fioJsonCpuNs(raw: unknown): number | null {
  const jobs = (raw as { jobs?: unknown } | null)?.jobs;
  if (!Array.isArray(jobs) || jobs.length === 0) return null;
  let ns = 0;
  for (const j of jobs as Record<string, unknown>[]) {
    const usr = Number(j['usr_cpu']);
    const sys = Number(j['sys_cpu']);
    const ms = Number(j['job_runtime']);
    if (![usr, sys, ms].every(Number.isFinite)) return null;
    ns += ((usr + sys) / 100) * ms * 1e6;
  }
  return ns;
}

/** Our CPU per I/O and fio's, for one compared run. */
export interface CpuPerIo {
  /** Every process of the stack, its time over the run. */
  shares: CpuShare[];
  /** Sum of the shares that could be read, ns. */
  totalNs: number;
  ios: number;
  /** totalNs / ios (0 when no I/O). */
  perIoNs: number;
  /** Real fio's CPU per I/O in the same run, ns; undefined without a baseline. */
  fioPerIoNs?: number;
  /** 1-minute load average at the end of the run (os.loadavg()[0]). */
  loadAvg: number;
}

/** Build the CPU-per-I/O summary of a run. */
export function cpuPerIo(shares: CpuShare[], ios: number, loadAvg: number, fio?: { cpuNs: number | null; ios: number }): CpuPerIo {
  const totalNs = shares.reduce((s, x) => s + (x.cpuNs ?? 0), 0);
  const out: CpuPerIo = { shares, totalNs, ios, perIoNs: ios > 0 ? totalNs / ios : 0, loadAvg };
  if (fio && fio.cpuNs !== null && fio.ios > 0) out.fioPerIoNs = fio.cpuNs / fio.ios;
  return out;
}

/** One line: `cpu per I/O: 21.3 us (controller 6.1, blockdev 4.0, fs 0.0, client 11.2; 145k I/Os), real fio 3.9 us (5.46x); load 1.2`. */
export function formatCpuPerIo(c: CpuPerIo): string {
  const us = (ns: number): string => (ns / 1000).toFixed(ns >= 100_000 ? 0 : ns >= 10_000 ? 1 : 2);
  const parts = c.shares.map((s) => `${s.name} ${s.cpuNs === null ? '?' : c.ios > 0 ? us(s.cpuNs / c.ios) : '-'}`);
  const fio = c.fioPerIoNs !== undefined ? `, real fio ${us(c.fioPerIoNs)} us (${(c.perIoNs / c.fioPerIoNs).toFixed(2)}x)` : '';
  return `cpu per I/O: ${us(c.perIoNs)} us (${parts.join(', ')}; ${c.ios} I/Os)${fio}; load ${c.loadAvg.toFixed(2)}\n`;
}

/**
 * The DESIGN §6 record of a compared run's CPU per I/O (metric `cpu_per_io_ns`, direction
 * `all`, baseline real fio's), with each process's share (`ns_NAME`, ns per I/O; absent when
 * it could not be read), the I/O count and the load average in `params`; null without a fio
 * figure.
 */
export function cpuRecord(c: CpuPerIo, params: CompareParams): FioBenchRecord | null {
  if (c.fioPerIoNs === undefined) return null;
  const per: Record<`ns_${string}`, number> = {};
  for (const s of c.shares) if (s.cpuNs !== null && c.ios > 0) per[`ns_${s.name}`] = s.cpuNs / c.ios;
  return {
    bench: 'fio', metric: 'cpu_per_io_ns', value: c.perIoNs, unit: 'ns', baseline: c.fioPerIoNs,
    ratio: c.fioPerIoNs > 0 ? c.perIoNs / c.fioPerIoNs : null,
    params: { profile: params.profile, target: params.target, direction: 'all', ...per, ios: c.ios, loadAvg: c.loadAvg },
  };
}

/**
 * `fractos fio PROFILE --target mount [--dax] [--compare]`: real fio (the profile as is: its
 * engine, direct or buffered) on a file under a `fractos mount` of a stack started here
 * (Controller + blockdev + FS on a scratch device file under /var/tmp); with --compare, in the
 * same run, the two baselines of issue #9: ext4 made with mkfs.ext4 on a loop device
 * (losetup --direct-io=on) of the same size, and the FUSE floor: libfuse's own passthrough_ll
 * example (Debian fuse3 3.14's example/, built by bench/build-passthrough-ll.sh) mounted over
 * that ext4. Records (DESIGN §6): the mount's figures against each baseline, ratio = mount /
 * baseline (for latencies > 1 is slower). Root only (losetup, mount).
 *
 * `fractos fio metadata --target mount [--files N] [--compare]`: create, stat, rename and
 * unlink of N (default 10,000) empty files through the mount, files per second per phase,
 * against ext4 (and passthrough_ll) in the same run.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { open, rename, stat, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { FractosError } from '../libfractos/errors.js';
import {
  CpuMeter, compareRecords, cpuPerIo, cpuRecord, fioJsonCpuNs, formatCompareTable, formatCpuPerIo, formatTextReport, loadJobFile, runRealFio, totalIos,
  type CpuPerIo, type CpuProc, type FioBenchRecord, type FioReport,
} from '../bench/fio/index.js';
import { loadavg } from 'node:os';
import { fuseMountAt, fusermountUnmount } from '../fs-mount/mountpoint.js';
import { spawnFractos, type Spawned } from '../testbed/spawn.js';
import { REPO_ROOT } from '../testbed/paths.js';

/** Where the passthrough_ll binary is looked for (`$FRACTOS_PASSTHROUGH_LL` first). */
export const PASSTHROUGH_LL_DEFAULT = '/var/tmp/fractos-fuse3-src/passthrough_ll';

export interface MountFioOptions {
  runtimeMs?: number;
  compare?: boolean;
  dax?: boolean;
  /**
   * Mount with --exclusive (long kernel caches: the mount is the only client of the stack
   * started here, docs/mount.md); false: the default 1 s caches of a shared FS.
   */
  exclusive?: boolean;
  json?: boolean;
  /** Replace every job's size, bytes (the file fio lays out through the mount first). */
  size?: number;
  /** metadata benchmark: files (default 10,000). */
  files?: number;
  /** Start Controller + blockdev + FS on `device` (the runner's startStack); returns its address and stop. */
  startStack: (device: string) => Promise<{ controller: string; procs: CpuProc[]; stop(): Promise<void> }>;
}

/** A file system under test: a folder to run in, and how to take it down. */
interface Target {
  name: string;
  dir: string;
  /** Its processes besides fio (for CPU per I/O): the stack and the mount, passthrough_ll. */
  procs: CpuProc[];
  down(): Promise<void>;
}

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw new FractosError('ENODEV', `${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new FractosError('EIO', `${cmd} ${args.join(' ')}: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout.trim();
}

function sparseFile(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
}

async function waitMounted(point: string, child: ChildProcess, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fuseMountAt(point)) {
    if (child.exitCode !== null) throw new FractosError('EIO', `passthrough_ll exited with ${child.exitCode}`);
    if (Date.now() > end) throw new FractosError('ETIMEDOUT', `passthrough_ll did not mount ${point}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The passthrough_ll binary: `$FRACTOS_PASSTHROUGH_LL`, the default path, else built by bench/build-passthrough-ll.sh. */
function passthroughLl(): string {
  const env = process.env.FRACTOS_PASSTHROUGH_LL;
  if (env) return env;
  if (existsSync(PASSTHROUGH_LL_DEFAULT)) return PASSTHROUGH_LL_DEFAULT;
  process.stderr.write('fio: building libfuse\'s passthrough_ll (apt-get source fuse3)\n');
  run('bash', [join(REPO_ROOT, 'bench', 'build-passthrough-ll.sh'), PASSTHROUGH_LL_DEFAULT]);
  return PASSTHROUGH_LL_DEFAULT;
}

/** ext4 on a loop device (direct I/O) of `bytes`, mounted in `scratch`. */
function ext4(scratch: string, bytes: number): Target {
  const img = join(scratch, 'ext4.img');
  sparseFile(img, bytes);
  const loop = run('losetup', ['--direct-io=on', '-f', '--show', img]);
  const dir = join(scratch, 'ext4');
  mkdirSync(dir);
  try {
    run('mkfs.ext4', ['-q', '-F', loop]);
    run('mount', [loop, dir]);
  } catch (e) {
    spawnSync('losetup', ['-d', loop]);
    throw e;
  }
  return {
    name: 'ext4', dir, procs: [],
    down: async () => {
      if (spawnSync('umount', [dir]).status !== 0) spawnSync('umount', ['-l', dir]);
      spawnSync('losetup', ['-d', loop]);
    },
  };
}

/** passthrough_ll (foreground, default options) mounted over `under`. */
async function passthrough(scratch: string, under: string): Promise<Target> {
  const dir = join(scratch, 'passthrough');
  mkdirSync(dir);
  const child = spawn(passthroughLl(), ['-f', '-o', `source=${under}`, dir], { stdio: 'ignore' });
  await waitMounted(dir, child);
  return {
    name: 'passthrough_ll', dir, procs: [{ name: 'passthrough_ll', pid: child.pid ?? -1 }],
    down: async () => {
      try {
        fusermountUnmount(dir);
      } catch {
        // already gone
      }
      if (child.exitCode === null) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await gone;
      }
    },
  };
}

/** `fractos mount` of a fresh stack on a scratch device of `bytes`. */
async function fractosMount(scratch: string, bytes: number, o: MountFioOptions): Promise<Target> {
  const dev = join(scratch, 'fractos.dev');
  sparseFile(dev, bytes);
  const stack = await o.startStack(dev);
  const dir = join(scratch, 'mount');
  mkdirSync(dir);
  let m: Spawned;
  try {
    m = await spawnFractos(['mount', dir, '--controller', stack.controller, ...(o.dax ? ['--dax'] : []), ...(o.exclusive ? ['--exclusive'] : [])], /^ready mount/, { timeoutMs: 60_000 });
  } catch (e) {
    await stack.stop();
    throw e;
  }
  return {
    name: `mount${o.dax ? ' --dax' : ''}${o.exclusive ? ' --exclusive' : ''}`, dir, procs: [...stack.procs, { name: 'mount', pid: m.child.pid ?? -1 }],
    down: async () => {
      await m.stop().catch(() => {});
      // The mount's own counts (native DAX reads, hand-off and service times) for the log.
      const counts = m.output().split('\n').find((l) => l.includes(' requests='));
      if (counts) process.stderr.write(`fio: ${counts.trim()}\n`);
      await stack.stop();
    },
  };
}

/**
 * One fio run of `profile` on `t` (file `fio.dat` in its folder, laid out by a run of its own
 * first), and its CPU per I/O: fio's own (its JSON) plus `t`'s processes over the measured run
 * (`fio` in the shares).
 */
async function fioOn(profile: string, t: Target, runtimeMs?: number, size?: number): Promise<{ report: FioReport; cpu: CpuPerIo }> {
  process.stderr.write(`fio: running ${basename(profile)} on ${t.name} (${t.dir})\n`);
  const filename = join(t.dir, 'fio.dat');
  // fio lays out fio.dat (writes it whole through t) before its first I/O: do that in a run
  // of its own (--create_only), so that the CPU measured next is the measured I/Os' only.
  await runRealFio(profile, { filename, size, extraArgs: ['--create_only=1'], jsonPlus: false });
  const meter = CpuMeter.start(t.procs);
  const r = await runRealFio(profile, { filename, runtimeMs, size });
  const shares = [...meter.stop(), { name: 'fio', pid: 0, cpuNs: fioJsonCpuNs(r.raw) }];
  return { report: r.report, cpu: cpuPerIo(shares, totalIos(r.report), loadavg()[0]!) };
}

/** Files per second of each metadata phase over `n` empty files in a fresh folder of `t`. */
async function metaOn(t: Target, n: number): Promise<Record<'create' | 'stat' | 'rename' | 'unlink', number>> {
  process.stderr.write(`fio: metadata (${n} files) on ${t.name}\n`);
  const d = join(t.dir, `meta-${t.name.replace(/\W+/g, '_')}`);
  mkdirSync(d);
  const rate = async (fn: (i: number) => Promise<unknown>): Promise<number> => {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) await fn(i);
    return n / (Number(process.hrtime.bigint() - t0) / 1e9);
  };
  const create = await rate(async (i) => (await open(join(d, `f${i}`), 'wx')).close());
  const st = await rate((i) => stat(join(d, `f${i}`)));
  const mv = await rate((i) => rename(join(d, `f${i}`), join(d, `g${i}`)));
  const rm = await rate((i) => unlink(join(d, `g${i}`)));
  rmSync(d, { recursive: true, force: true });
  return { create, stat: st, rename: mv, unlink: rm };
}

/**
 * Run the mount benchmark (see the module comment); prints the report. Errors: EPERM (not
 * root, with --compare), ENODEV (fio, losetup, mkfs.ext4, gcc missing), the stack's and fio's.
 */
export async function runMountFio(profile: string, o: MountFioOptions): Promise<void> {
  if (o.compare && process.getuid?.() !== 0) throw new FractosError('EPERM', '--target mount --compare needs root (losetup, mount)');
  const meta = profile === 'metadata';
  const jobs = meta ? [] : await loadJobFile(profile, { runtimeMs: o.runtimeMs });
  const region = meta ? 0 : (o.size ?? Math.max(...jobs.map((j) => j.size ?? 256 << 20)));
  const bytes = Math.max(1 << 30, 2 * region * Math.max(1, jobs.length) + (256 << 20));
  const scratch = mkdtempSync('/var/tmp/fractos-fio-mount-');
  const downs: Target[] = [];
  try {
    const targets: Target[] = [];
    const ours = await fractosMount(scratch, bytes, o);
    downs.push(ours);
    if (o.compare) {
      const e = ext4(scratch, bytes);
      downs.push(e);
      const p = await passthrough(scratch, e.dir);
      downs.unshift(p);
      targets.push(e, p);
    }
    if (meta) {
      const n = o.files ?? 10_000;
      const rows: string[] = [];
      const records: object[] = [];
      const mine = await metaOn(ours, n);
      rows.push(`${'phase'.padEnd(8)} ${ours.name.padStart(14)} ${targets.map((t) => `${t.name.padStart(14)} ${'ratio'.padStart(7)}`).join(' ')}`);
      const base: { t: Target; r: Awaited<ReturnType<typeof metaOn>> }[] = [];
      for (const t of targets) base.push({ t, r: await metaOn(t, n) });
      for (const phase of ['create', 'stat', 'rename', 'unlink'] as const) {
        rows.push(`${phase.padEnd(8)} ${mine[phase].toFixed(0).padStart(14)} ${base.map(({ r }) => `${r[phase].toFixed(0).padStart(14)} ${(mine[phase] / r[phase]).toFixed(3).padStart(7)}`).join(' ')}`);
        for (const { t, r } of base) records.push({ bench: 'mount-metadata', metric: `${phase}_per_s`, value: mine[phase], unit: 'files/s', baseline: r[phase], ratio: mine[phase] / r[phase], params: { files: n, target: ours.name, baselineTarget: t.name } });
      }
      process.stdout.write(o.json ? JSON.stringify(records, null, 2) + '\n' : `metadata: ${n} files, files per second\n${rows.join('\n')}\n`);
      return;
    }
    const { report: mine, cpu } = await fioOn(profile, ours, o.runtimeMs, o.size);
    if (!o.compare) {
      process.stdout.write(formatTextReport(mine) + formatCpuPerIo(cpu));
      return;
    }
    let cpuText = `${ours.name}: ${formatCpuPerIo(cpu)}`;
    const records: FioBenchRecord[] = [];
    for (const t of targets) {
      // A baseline that fails is reported and left out: libfuse 3.14 hands passthrough_ll
      // O_DIRECT writes in a buffer that is not page-aligned, which ext4 refuses (EINVAL;
      // fixed upstream in 3.17.1), so direct-write profiles have no FUSE floor here.
      let r: FioReport;
      let baseCpu: CpuPerIo;
      try {
        const b = await fioOn(profile, t, o.runtimeMs, o.size);
        r = b.report;
        cpuText += `${t.name}: ${formatCpuPerIo(b.cpu)}`;
        baseCpu = b.cpu;
      } catch (e) {
        process.stderr.write(`fio: ${t.name} failed, left out: ${(e as Error).message.split('\n')[0]}\n`);
        continue;
      }
      const params = { profile: basename(profile).replace(/\.fio$/, ''), target: `${ours.name} vs ${t.name}` };
      records.push(...compareRecords(mine, r, params));
      const rec = cpuRecord({ ...cpu, fioPerIoNs: baseCpu.perIoNs }, params);
      if (rec) records.push(rec);
    }
    process.stdout.write(o.json ? JSON.stringify(records, null, 2) + '\n' : formatCompareTable(records).replace(/\bfio\b/, 'base') + cpuText);
  } finally {
    for (const t of downs) await t.down().catch(() => {});
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Subcommands `blockdev`, `fs` (the storage services) and `fio` (the fio-compatible runner). */
import type { Command } from 'commander';
import { closeSync, existsSync, fstatSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { basename, join } from 'node:path';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { assertDeviceFree, claimDevice } from '../blockdev-adaptor/device-claim.js';
import { readAdminSecret } from '../blockdev-adaptor/admin-secret.js';
import { ensureClusterSecretFile } from '../controller/index.js';
import { adminClaim, adminRelease, volumeCreate, type VolumeAdmin } from '../blockdev-adaptor/client.js';
import { FsService } from '../fs-service/service.js';
import { FS_ROOTS, FsClient } from '../fs-service/client.js';
import { OpenMode } from '../fs-service/schema.js';
import { connect, FractosError, type Process } from '../libfractos/index.js';
import {
  DEFAULT_FIO_FILENAME, parseSize, compareRecords, formatCompareTable, formatTextReport, loadJobFile, runJobs, runRealFio, toFioJson,
  CpuMeter, cpuPerIo, cpuRecord, fioJsonCpuNs, formatCpuPerIo, totalIos,
  type CpuProc, type CpuShare, type FioJob, type FioReport, type IoTarget,
} from '../bench/fio/index.js';
import { loadavg } from 'node:os';
import { RequestTarget, type TargetExtent } from '../bench/fio/targets.js';
import { spawnFractos, type Spawned } from '../testbed/spawn.js';
import { cleanupOnSignals, removeOnExit, removeTempDir, tempDir } from '../testbed/scratch.js';
import { DEFAULT_CONTROLLER } from './core.js';
import { startService } from './start-service.js';
import { RM_HELP, registerWithRm } from './rm.js';
import type { KeptRegistration } from '../rm/index.js';
import { die, log } from './log.js';
import { runMountFio } from './fio-mount.js';

const TARGETS = ['blockdev', 'fs', 'dax', 'mount'] as const;
type TargetKind = (typeof TARGETS)[number];

/** A single-host stack started as child processes: Controller, blockdev, FS. */
interface Stack {
  controller: string;
  /** The blockdev's admin secret (its `--admin-secret-file`, in the stack's scratch folder). */
  adminSecret: Buffer;
  /** The stack's processes (Controller, blockdev, FS), for CPU per I/O. */
  procs: CpuProc[];
  stop(): Promise<void>;
}

/** `withFs` false: Controller + blockdev only (the blockdev target claims the volume administration itself). */
async function startStack(device: string, queueDepth: number, withFs: boolean): Promise<Stack> {
  const dir = tempDir('fractos-fio-stack-');
  const addr = `unix:${join(dir, 'c.sock')}`;
  const procs: Spawned[] = [];
  const stop = async (): Promise<void> => {
    for (const p of procs.reverse()) await p.stop().catch(() => {});
    removeTempDir(dir);
  };
  // The volume administration only for this stack's FS or runner.
  const secretFile = join(dir, 'admin.secret');
  try {
    ensureClusterSecretFile(secretFile);
    procs.push(await spawnFractos(['controller', '--id', '1', '--state-dir', join(dir, 'state'), '--listen', addr], /^controller \d+ epoch/));
    procs.push(await spawnFractos(['blockdev', '--device', device, '--controller', addr, '--format', '--queue-depth', String(queueDepth), '--admin-secret-file', secretFile], /^ready blockdev/, { timeoutMs: 60_000 }));
    if (withFs) procs.push(await spawnFractos(['fs', '--controller', addr, '--admin-secret-file', secretFile], /^ready fs/, { timeoutMs: 60_000 }));
  } catch (err) {
    await stop();
    throw err;
  }
  const names = ['controller', 'blockdev', 'fs'];
  return { controller: addr, adminSecret: readAdminSecret(secretFile), procs: procs.map((p, i) => ({ name: names[i]!, pid: p.child.pid ?? -1 })), stop };
}

/**
 * Make `device` usable by a fresh stack: create a regular file of `size` bytes if needed, and
 * wipe the volume table, under the device's claim. A file created here for the job file's
 * default name (no --device) is scratch: removed when the runner exits. Errors: EBUSY `DEVICE
 * is in use by blockdev pid N` (a running blockdev uses it: nothing is written), claimDevice's.
 */
function prepareDevice(device: string, size: number, userGiven: boolean): void {
  if (!existsSync(device)) {
    closeSync(openSync(device, 'wx'));
    if (!userGiven) removeOnExit(device);
  }
  const claim = claimDevice(device);
  try {
    const fd = openSync(device, 'r+');
    try {
      const st = fstatSync(fd);
      if (st.isFile() && st.size < size) ftruncateSync(fd, size);
      // The runner owns the device: a fresh volume table every run (write profiles overwrite it anyway).
      writeSync(fd, Buffer.alloc(8192), 0, 8192, 0);
    } finally {
      closeSync(fd);
    }
  } finally {
    claim.release();
  }
}

/**
 * The blockdev's volume administration for the blockdev target, claimed once per run and
 * given back at cleanup. Raw volumes need it: it is free only on a stack without an FS.
 * `secret`: the blockdev's admin secret (the runner's own stack has one).
 */
function adminFor(p: Process, cleanups: (() => Promise<void>)[], secret?: Buffer): () => Promise<VolumeAdmin> {
  let admin: Promise<VolumeAdmin> | null = null;
  return () =>
    (admin ??= adminClaim(p, 'blockdev', 5_000, secret).then(
      (a) => {
        cleanups.push(() => adminRelease(p, a));
        return a;
      },
      (e: FractosError) => {
        if (e.code !== 'EBUSY') throw e;
        throw new FractosError('EBUSY', `--target blockdev needs the blockdev's volume administration, which another Process (the FS) holds: use --target fs or dax on this stack, or let the runner start its own (no --controller)`);
      },
    ));
}

async function targetFor(p: Process, kind: TargetKind, job: FioJob, region: number, fs: FsClient | null, admin: () => Promise<VolumeAdmin>, cleanups: (() => Promise<void>)[]): Promise<IoTarget> {
  const slots = job.iodepth * job.numjobs;
  let extents: TargetExtent[];
  if (kind === 'blockdev') {
    const v = await volumeCreate(p, (await admin()).create, region);
    extents = [{ fileOffset: 0, length: v.size, read: v.read, write: v.write }];
  } else {
    const path = `/fio/${job.name}`;
    await fs!.create(path).catch((e: FractosError) => {
      if (e.code !== 'EEXIST') throw e;
    });
    await fs!.truncate(path, region);
    const mode = job.rw.includes('write') || job.rw === 'rw' || job.rw === 'randrw' ? OpenMode.RW : OpenMode.READ;
    const f = await fs!.open(path, { mode, dax: kind === 'dax' });
    cleanups.push(() => fs!.close(f, true));
    extents = kind === 'dax' ? f.extents : [{ fileOffset: 0, length: region, read: f.read, write: f.write }];
  }
  const t = await RequestTarget.create(p, extents, { slots, bs: job.bs });
  cleanups.unshift(() => t.close());
  return t;
}

interface FioOpts {
  target: string;
  device?: string;
  controller?: string;
  runtime?: string;
  json?: boolean;
  compare?: boolean;
  fs: string;
  adminSecretFile?: string;
  dax?: boolean;
  exclusive?: boolean;
  /** The fio Process polls for its answers (connect poll: true; docs/queues.md "Spinner budget"). */
  poll?: boolean;
  files?: string;
  size?: string;
}

async function runFio(profile: string, o: FioOpts): Promise<void> {
  if (!TARGETS.includes(o.target as TargetKind)) throw new FractosError('EINVAL', `--target must be one of ${TARGETS.join(', ')}, got '${o.target}'`);
  const kind = o.target as TargetKind;
  const runtimeMs = o.runtime !== undefined ? Number(o.runtime) * 1000 : undefined;
  if (runtimeMs !== undefined && !(runtimeMs > 0)) throw new FractosError('EINVAL', `--runtime must be > 0 seconds`);
  if (kind === 'mount') {
    // Real fio through a `fractos mount`, against ext4 and passthrough_ll with --compare (cli/fio-mount.ts).
    const startMountStack = async (device: string): Promise<Stack> => startStack(device, 64, true);
    return runMountFio(profile, { runtimeMs, compare: o.compare, dax: o.dax, exclusive: o.exclusive !== false, json: o.json, files: o.files !== undefined ? Number(o.files) : undefined, size: o.size !== undefined ? parseSize(o.size) : undefined, startStack: startMountStack });
  }
  const jobs = await loadJobFile(profile, { device: o.device, runtimeMs });
  const device = o.device ?? jobs[0]?.filename ?? DEFAULT_FIO_FILENAME;
  const region = Math.max(...jobs.map((j) => j.size ?? 256 << 20));
  const depth = jobs.reduce((s, j) => s + j.iodepth * j.numjobs, 0);
  let stack: Stack | null = null;
  // Real fio must never run on a device a blockdev uses: refuse before running anything.
  if (o.controller && o.compare) assertDeviceFree(device);
  if (!o.controller) {
    prepareDevice(device, 2 * region * jobs.length + (64 << 20), o.device !== undefined);
    process.stderr.write(`fio: starting controller + blockdev (${device})${kind !== 'blockdev' ? ' + fs' : ''}\n`);
    stack = await startStack(device, Math.max(32, Math.min(1024, depth)), kind !== 'blockdev');
  }
  const cleanups: (() => Promise<void>)[] = [];
  let ours: FioReport;
  let shares: CpuShare[];
  let p: Process | null = null;
  try {
    p = await connect(o.controller ?? stack!.controller, { name: 'fio', poll: o.poll === true });
    const fs = kind === 'blockdev' ? null : await FsClient.connect(p, o.fs);
    const targets = new Map<FioJob, IoTarget>();
    const admin = adminFor(p, cleanups, stack?.adminSecret ?? (o.adminSecretFile !== undefined ? readAdminSecret(o.adminSecretFile) : undefined));
    for (const j of jobs) targets.set(j, await targetFor(p, kind, j, j.size ?? region, fs, admin, cleanups));
    process.stderr.write(`fio: running ${basename(profile)} on target ${kind}\n`);
    // CPU per I/O: every process of the stack (a running stack's are not known: the client only).
    const meter = CpuMeter.start([...(stack?.procs ?? []), { name: 'client', pid: 0 }]);
    ours = await runJobs(jobs, (j) => targets.get(j)!, {
      runtimeMs,
      onProgress: (pr) => process.stderr.write(`fio: ${pr.job} ${(pr.elapsedMs / 1000).toFixed(1)} s, ${Math.round(pr.intervalIops)} IOPS\n`),
    });
    shares = meter.stop();
  } finally {
    for (const c of cleanups) await c().catch(() => {});
    await p?.close();
    await stack?.stop();
  }
  if (!o.compare) {
    const cpu = formatCpuPerIo(cpuPerIo(shares, totalIos(ours), loadavg()[0]!));
    process.stdout.write(o.json ? JSON.stringify(toFioJson(ours), null, 2) + '\n' : formatTextReport(ours) + cpu);
    if (o.json) process.stderr.write(cpu);
    return;
  }
  process.stderr.write(`fio: running real fio on ${device}\n`);
  const real = await runRealFio(profile, { filename: device, runtimeMs: runtimeMs ?? jobs[0]?.runtimeMs });
  const params = { profile: basename(profile).replace(/\.fio$/, ''), target: kind };
  const records = compareRecords(ours, real.report, params);
  const cpu = cpuPerIo(shares, totalIos(ours), loadavg()[0]!, { cpuNs: fioJsonCpuNs(real.raw), ios: totalIos(real.report) });
  const rec = cpuRecord(cpu, params);
  if (rec) records.push(rec);
  if (o.json) {
    process.stdout.write(JSON.stringify(records, null, 2) + '\n');
    return;
  }
  process.stdout.write(`=== FractOS (${kind}) ===\n${formatTextReport(ours)}\n=== real fio ===\n${formatTextReport(real.report)}\n${formatCompareTable(records)}${formatCpuPerIo(cpu)}`);
}

export function register(program: Command): void {
  program
    .command('blockdev')
    .description('run the block-device adaptor until killed (publishes NAME.admin_claim: volume administration for one owner, the FS)')
    .requiredOption('--device <path>', 'block device (/dev/loopN) or regular file, opened with O_DIRECT')
    .option('--controller <addr>', 'Controller address', DEFAULT_CONTROLLER)
    .option('--queue-depth <n>', 'io_uring queue depth', '64')
    .option('--name <name>', 'bootstrap prefix', 'blockdev')
    .option('--format', 'format the device if it has no volume table')
    .option('--no-zero', 'do not zero new volumes')
    .option('--admin-secret-file <file>', 'volume administration only for a Process that knows this secret (the FS with the same option); without it any local Process may claim it')
    .action(async (o: { device: string; controller: string; queueDepth: string; name: string; format?: boolean; zero: boolean; adminSecretFile?: string }) => {
      try {
        const adminSecret = o.adminSecretFile !== undefined ? readAdminSecret(o.adminSecretFile) : undefined;
        const s = await startService('blockdev', () => BlockdevService.start({
          device: o.device, controller: o.controller, queueDepth: Number(o.queueDepth), name: o.name, format: !!o.format, zeroOnCreate: o.zero, adminSecret, log,
        }), (s) => ({ proc: s.proc, close: () => s.close(), onLost: () => s.backend.close() }));
        if (!s) return;
        process.stdout.write(`ready blockdev name=${s.name} device=${o.device} size=${s.backend.size} blockSize=${s.backend.blockSize} volumes=${s.table.list().length}${s.formatted ? ' formatted' : ''}\n`);
      } catch (err) {
        die(err);
      }
    });

  program
    .command('fs')
    .description('run the FS service until killed (publishes NAME.create, .open, .stat, .list, .delete, .truncate and the inode Requests NAME.lookup, .getattr, ... of fs-service/contract.ts)')
    .option('--controller <addr>', 'Controller address', DEFAULT_CONTROLLER)
    .option('--blockdev <name>', 'bootstrap prefix of the blockdev', 'blockdev')
    .option('--name <name>', 'bootstrap prefix', 'fs')
    .option('--cache-blocks <n>', 'LRU block cache capacity, 4 KiB blocks', '16384')
    .option('--no-reclaim', 'at start, keep volumes that no file uses (default: delete them: the FS owns its blockdev)')
    .option('--capacity <bytes>', 'device capacity statfs reports (the blockdev does not tell; default: the allocated bytes, none free)', '0')
    .option('--admin-secret-file <file>', 'the blockdev\'s admin secret (its --admin-secret-file), needed to claim its volume administration')
    .option('--rm <name>', RM_HELP)
    .action(async (o: { controller: string; blockdev: string; name: string; cacheBlocks: string; reclaim: boolean; capacity: string; adminSecretFile?: string; rm?: string }) => {
      try {
        const adminSecret = o.adminSecretFile !== undefined ? readAdminSecret(o.adminSecretFile) : undefined;
        let reg: KeptRegistration | undefined;
        const s = await startService('fs', async (signal) => {
          const fs = await FsService.start({
            controller: o.controller, blockdev: o.blockdev, name: o.name, cacheBlocks: Number(o.cacheBlocks), reclaim: o.reclaim, adminSecret, signal, log,
          });
          try {
            const requests: Record<string, number> = {};
            for (const op of FS_ROOTS) requests[op] = await fs.proc.kvGet(`${o.name}.${op}`);
            reg = registerWithRm(fs.proc, o.rm, { kind: 'fs', name: o.name, requests });
          } catch (err) {
            await fs.close().catch(() => {});
            throw err;
          }
          return fs;
        }, (s) => ({ proc: s.proc, close: () => (reg?.close() ?? Promise.resolve()).then(() => s.close()) }));
        if (!s) return;
        process.stdout.write(`ready fs name=${s.name} files=${s.files}\n`);
      } catch (err) {
        die(err);
      }
    });

  program
    .command('fio')
    .description('run a fio job file against FractOS (blockdev volume, FS mediated, or DAX)')
    .argument('<profile>', 'fio job file (fio-profiles/*.fio)')
    .option('--target <kind>', 'blockdev | fs | dax | mount (real fio through `fractos mount`; PROFILE `metadata`: create/stat/rename/unlink)', 'dax')
    .option('--dax', 'with --target mount: mount with --dax')
    .option('--no-exclusive', 'with --target mount: mount without --exclusive (1 s kernel caches, as for a shared FS; the runner\'s stack is its own, so --exclusive by default)')
    .option('--files <n>', 'with --target mount and PROFILE metadata: files (default 10000)')
    .option('--size <bytes>', 'with --target mount: every job\'s size (fio suffixes: 64m)')
    .option('--device <path>', 'device or file (overrides the job filename)')
    .option('--controller <addr>', 'use a running stack (default: start Controller + blockdev + fs here)')
    .option('--fs <name>', 'FS bootstrap prefix', 'fs')
    .option('--runtime <s>', 'override the runtime, seconds')
    .option('--json', 'fio JSON (or, with --compare, DESIGN §6 records)')
    .option('--compare', 'also run real fio on the same device and compare')
    .option('--poll', 'the fio Process polls for its completions (connect poll: true, like fio\'s hipri); the Controller spins after its activity')
    .option('--admin-secret-file <file>', 'with --controller and --target blockdev: the blockdev\'s admin secret (its --admin-secret-file), to claim its volume administration')
    .action(async (profile: string, o: FioOpts) => {
      cleanupOnSignals('fractos fio');
      try {
        await runFio(profile, o);
        process.exit(0);
      } catch (err) {
        die(err);
      }
    });
}

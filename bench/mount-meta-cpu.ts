/**
 * Metadata phases through `fractos mount` with the CPU of every Process of the stack, per file:
 * `node dist/bench/mount-meta-cpu.js [FILES] [MOUNT ARGS...]` (root: FUSE). Starts Controller +
 * blockdev + FS on a 1 GiB scratch device file (as `fractos fio --target mount` does), mounts
 * the FS with MOUNT ARGS (e.g. `--exclusive`), then creates (open O_EXCL + close), stats,
 * renames and unlinks FILES (default 1000) empty files in one directory, one at a time. Prints
 * per phase: files/s, wall time per file (us), CPU per file (us, user + system from
 * /proc/PID/stat) of the Controller, blockdev, FS and mount Processes, and of this one.
 * `FRACTOS_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR"` profiles the stack's Processes too.
 * For A/B pairs: run it from two builds in turn (docs/mount.md "Current figures").
 */
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { open, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { ensureClusterSecretFile } from '../controller/peer-auth.js';
import { removeTempDir, spawnFractos, tempDir, type Spawned } from '../testbed/spawn.js';

/** CPU seconds (user + system) of `pid` so far. */
function cpuOf(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 1000);
  const mountArgs = process.argv.slice(3);
  const dir = tempDir('mount-meta-cpu-');
  const addr = `unix:${join(dir, 'c.sock')}`;
  const dev = join(dir, 'dev');
  const fd = openSync(dev, 'w');
  ftruncateSync(fd, 1 << 30);
  closeSync(fd);
  const secret = join(dir, 'admin.secret');
  ensureClusterSecretFile(secret);
  const procs: [string, Spawned][] = [];
  try {
    procs.push(['ctl', await spawnFractos(['controller', '--id', '1', '--state-dir', join(dir, 'state'), '--listen', addr], /^controller \d+ epoch/)]);
    procs.push(['bd', await spawnFractos(['blockdev', '--device', dev, '--controller', addr, '--format', '--queue-depth', '64', '--admin-secret-file', secret], /^ready blockdev/, { timeoutMs: 60_000 })]);
    procs.push(['fs', await spawnFractos(['fs', '--controller', addr, '--admin-secret-file', secret], /^ready fs/, { timeoutMs: 60_000 })]);
    const mp = join(dir, 'mnt');
    mkdirSync(mp);
    procs.push(['mount', await spawnFractos(['mount', mp, '--controller', addr, ...mountArgs], /^ready mount/, { timeoutMs: 60_000 })]);
    const cpu = (): number[] => procs.map(([, p]) => cpuOf(p.child.pid!));
    const self = (): number => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1e6;
    };
    const d = join(mp, 'd');
    mkdirSync(d);
    const phase = async (name: string, fn: (i: number) => Promise<unknown>): Promise<void> => {
      const c0 = cpu();
      const s0 = self();
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) await fn(i);
      const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
      const c1 = cpu();
      const per = procs.map(([k], i) => `${k} ${(((c1[i]! - c0[i]!) * 1e6) / n).toFixed(0)}`).join(', ');
      process.stdout.write(`${name.padEnd(7)} ${((n / wallMs) * 1000).toFixed(0).padStart(6)}/s, wall ${((wallMs * 1000) / n).toFixed(0)} us/file, CPU us/file: ${per}, runner ${(((self() - s0) * 1e6) / n).toFixed(0)}\n`);
    };
    await phase('create', async (i) => (await open(join(d, `f${i}`), 'wx')).close());
    await phase('stat', (i) => stat(join(d, `f${i}`)));
    await phase('rename', (i) => rename(join(d, `f${i}`), join(d, `g${i}`)));
    await phase('unlink', (i) => unlink(join(d, `g${i}`)));
  } finally {
    for (const [, p] of procs.reverse()) await p.stop().catch(() => {});
    removeTempDir(dir);
  }
}

await main();

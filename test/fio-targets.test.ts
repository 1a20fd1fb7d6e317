/**
 * fio targets over FractOS Requests (bench/fio/targets.ts): the workload engine drives a
 * blockdev volume, a mediated FS file and a DAX open; data written through a target reads
 * back; a revoked DAX target fails; and `fractos fio --target dax` runs a whole stack.
 */
import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, FractosError, type Process } from '../libfractos/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, volumeCreate } from '../blockdev-adaptor/client.js';
import { FsService } from '../fs-service/service.js';
import { FsClient } from '../fs-service/client.js';
import { parseJobFile, runJob } from '../bench/fio/index.js';
import { RequestTarget } from '../bench/fio/targets.js';
import { deviceDir } from './helpers/devices.js';
import { FRACTOS_BIN, REPO_ROOT, tempDir } from './helpers/spawn.js';

const devices = await deviceDir('fractos-fiot', 'fio-targets.test');
const { dir, vtest } = devices;

const devFile = (name: string, size = 64 << 20): string => devices.devFile(size, name);

const job = (rw: string, iodepth: number, bs = '4k'): string => `[global]\nsize=4m\nruntime=300ms\ntime_based\n[j]\nrw=${rw}\nbs=${bs}\niodepth=${iodepth}\n`;
/** A job of a fixed count of I/Os (512 KiB in 4 KiB: 128), whatever the machine's load (a time_based 300 ms job did only 1 read and 7 writes on a loaded machine). */
const IOS = 128;
const countJob = `[j]\nrw=randrw\nbs=4k\niodepth=8\nsize=${IOS * 4}k\n`;

async function targetsRun(t: ExecutionContext, native: boolean): Promise<void> {
  const d = tempDir();
  const addr = `unix:${join(d, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') });
  const bd = await BlockdevService.start({ device: devFile(native ? 'a.img' : 'a0.img'), controller: addr, format: true, native });
  const fsv = await FsService.start({ controller: addr });
  // The FS owns the volume administration of `blockdev`: raw volumes come from a second blockdev.
  const raw = await BlockdevService.start({ device: devFile(native ? 'b.img' : 'b0.img'), controller: addr, format: true, name: 'raw', native });
  let p: Process | null = null;
  try {
    p = await connect(addr, { name: 'fio' });
    const fs = await FsClient.connect(p);
    const v = await volumeCreate(p, (await adminClaim(p, 'raw', 5000)).create, 4 << 20);
    await fs.create('/f');
    await fs.truncate('/f', 4 << 20);
    const med = await fs.open('/f');
    const dax = await fs.open('/f', { dax: true });
    const targets = {
      blockdev: await RequestTarget.create(p, [{ fileOffset: 0, length: v.size, read: v.read, write: v.write }], { slots: 8, bs: 4096 }),
      fs: await RequestTarget.create(p, [{ fileOffset: 0, length: 4 << 20, read: med.read, write: med.write }], { slots: 8, bs: 4096 }),
      dax: await RequestTarget.create(p, dax.extents, { slots: 8, bs: 4096 }),
    };
    for (const [name, tg] of Object.entries(targets)) {
      t.is(tg.size, 4 << 20, name);
      const before = (name === 'blockdev' ? raw : bd).counts.native;
      const s = await runJob(parseJobFile(countJob)[0]!, tg);
      t.is(s.read.totalIos + s.write.totalIos, IOS, name);
      t.true(s.read.totalIos > 10 && s.write.totalIos > 5, `${name}: ${s.read.totalIos} reads, ${s.write.totalIos} writes`);
      t.true(s.read.clat.percentiles['50.000000']! > 0);
      const served = (name === 'blockdev' ? raw : bd).counts.native - before;
      // The raw volume and the DAX open are served by the native I/O loop (all but the first
      // use of each region); the mediated FS goes through the FS's staging memory.
      if (native && name !== 'fs') t.true(served > (s.read.totalIos + s.write.totalIos) / 2, `${name}: ${served} ops served natively`);
      if (!native) t.is(served, 0);
    }
    // Data path check through a target's own buffers: DAX write, mediated read.
    const w = targets.dax;
    w.bytes.fill(0x42); // whichever slot the write takes
    await new Promise<void>((res, rej) => w.write(8192, 4096, (e) => (e ? rej(e) : res())));
    await fs.close(dax);
    const r = targets.fs;
    await new Promise<void>((res, rej) => r.read(8192, 4096, (e) => (e ? rej(e) : res())));
    const slotBytes = r.bytes;
    t.true([...Array(8).keys()].some((i) => slotBytes.subarray(i * 4096, i * 4096 + 4096).every((b) => b === 0x42)));
    // After close, the DAX target's Requests are revoked: the job fails with EREVOKED.
    const err = await t.throwsAsync(runJob(parseJobFile(job('randread', 4))[0]!, targets.dax));
    t.is((err as FractosError).code, 'EREVOKED');
    for (const tg of Object.values(targets)) await tg.close();
  } finally {
    await p?.close();
    await fsv.close();
    await raw.close();
    await bd.close();
    await c.close();
  }
}

vtest('blockdev, fs and dax targets run fio jobs; written data reads back; revoked DAX fails; with the native I/O loop and without', async (t) => {
  await targetsRun(t, true);
  await targetsRun(t, false); // FRACTOS_BLOCKDEV_NATIVE=0's path
});

vtest('fractos fio --target dax starts a whole stack, prints fio text and JSON', async (t) => {
  const profile = join(dir, 'p.fio');
  writeFileSync(profile, job('randread', 4));
  const device = devFile('fio.img');
  const run = (args: string[]): Promise<{ out: string; err: string; code: number }> =>
    new Promise((res) => execFile(process.execPath, [FRACTOS_BIN, 'fio', profile, ...args], { cwd: REPO_ROOT, env: { ...process.env, FRACTOS_LOG: 'warn' } }, (e, out, err) => res({ out, err, code: e ? Number((e as { code?: number }).code ?? 1) : 0 })));
  const a = await run(['--target', 'dax', '--device', device]);
  t.is(a.code, 0, a.err);
  t.regex(a.out, /read: IOPS=/);
  t.regex(a.out, /clat percentiles/);
  // CPU per I/O of every process of the stack (bench/fio/cpu.ts): all four read.
  t.regex(a.out, /^cpu per I\/O: [\d.]+ us \(controller [\d.]+, blockdev [\d.]+, fs [\d.]+, client [\d.]+; [1-9]\d* I\/Os\); load [\d.]+$/m);
  const b = await run(['--target', 'fs', '--device', device, '--json']);
  t.is(b.code, 0, b.err);
  const j = JSON.parse(b.out) as { jobs: { read: { iops: number; clat_ns: { percentile: Record<string, number> } } }[] };
  t.true(j.jobs[0]!.read.iops > 0);
  t.true(j.jobs[0]!.read.clat_ns.percentile['50.000000']! > 0);
  t.regex(b.err, /^cpu per I\/O: /m);
  const bad = await run(['--target', 'nfs', '--device', device]);
  t.not(bad.code, 0);
  t.regex(bad.err, /--target must be one of/);
});

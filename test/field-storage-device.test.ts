/**
 * Issue #7 item 1: a running blockdev holds an exclusive claim on its device. The fio runner
 * (`fractos fio --device`, with and without `--compare`), real fio through `runRealFio`, a
 * second blockdev and `fractos blockdev --format` refuse it with EBUSY naming the holder's
 * pid, and write nothing to it; the claim goes away with the blockdev (also on kill -9).
 */
import { type ExecutionContext } from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { assertDeviceFree, claimDevice, deviceHolder } from '../blockdev-adaptor/device-claim.js';
import { runRealFio } from '../bench/fio/index.js';
import { deviceDir } from './helpers/devices.js';
import { FRACTOS_BIN, REPO_ROOT, spawnFractos, tempDir } from './helpers/spawn.js';
import { expectCode as code } from './helpers/errors.js';

const devices = await deviceDir('fractos-fdev', 'field-storage-device.test');
const { dir, vtest } = devices;

function fractos(args: string[]): Promise<{ out: string; err: string; code: number }> {
  return new Promise((res) =>
    execFile(process.execPath, [FRACTOS_BIN, ...args], { cwd: REPO_ROOT, env: { ...process.env, FRACTOS_LOG: 'warn' } }, (e, out, err) =>
      res({ out, err, code: e ? Number((e as { code?: number }).code ?? 1) : 0 }),
    ),
  );
}

function head(path: string): string {
  return createHash('sha256').update(readFileSync(path).subarray(0, 2 << 20)).digest('hex');
}

const profile = (): string => {
  const p = join(dir, 'w.fio');
  writeFileSync(p, '[global]\nioengine=io_uring\ndirect=1\nsize=4m\nruntime=200ms\ntime_based\n[w]\nrw=randwrite\nbs=4k\niodepth=1\n');
  return p;
};

async function controller(): Promise<{ c: Controller; addr: string }> {
  const d = tempDir();
  const addr = `unix:${join(d, 'c.sock')}`;
  return { c: await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') }), addr };
}

vtest('a running blockdev\'s file is refused by fio, real fio, --format and a second blockdev (EBUSY with its pid)', async (t) => {
  const device = devices.devFile(64 << 20);
  const { c, addr } = await controller();
  const bd = await spawnFractos(['blockdev', '--device', device, '--controller', addr, '--format'], /^ready blockdev/);
  try {
    const pid = bd.child.pid!;
    const busy = new RegExp(`EBUSY: ${device.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use by blockdev pid ${pid}`);
    t.deepEqual(deviceHolder(device), { pid, role: 'blockdev' });
    const before = head(device);

    const fio = await fractos(['fio', profile(), '--target', 'fs', '--device', device]);
    t.not(fio.code, 0);
    t.regex(fio.err, busy);
    const cmp = await fractos(['fio', profile(), '--target', 'dax', '--device', device, '--controller', addr, '--compare']);
    t.not(cmp.code, 0);
    t.regex(cmp.err, busy);
    const second = await fractos(['blockdev', '--device', device, '--controller', addr, '--format', '--name', 'second']);
    t.not(second.code, 0);
    t.regex(second.err, busy);
    await t.throwsAsync(BlockdevService.start({ device, controller: addr, format: true, name: 'third' }), { message: busy });
    await t.throwsAsync(runRealFio(profile(), { filename: device, runtimeMs: 200 }), { message: busy });
    t.throws(() => claimDevice(device), { message: busy });
    t.is(head(device), before, 'nothing was written to the claimed device');

    // kill -9: the kernel drops the claim with the process.
    await bd.kill9();
    t.is(deviceHolder(device), null);
    t.notThrows(() => assertDeviceFree(device));
  } finally {
    await bd.stop();
    await c.close();
  }
});

function loop(t: ExecutionContext, size: number): { dev: string; detach: () => void } | null {
  try {
    const dev = execFileSync('losetup', ['--find', '--show', devices.devFile(size)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    return { dev, detach: () => execFileSync('losetup', ['-d', dev]) };
  } catch (e) {
    t.log(`no loop device (${(e as Error).message.split('\n')[0]}): the block-device case is not run`);
    return null;
  }
}

vtest('a block device is claimed with O_EXCL and flock: a second blockdev and real fio are refused; close releases it', async (t) => {
  const l = loop(t, 32 << 20);
  if (!l) return t.pass();
  const { c, addr } = await controller();
  try {
    const bd = await BlockdevService.start({ device: l.dev, controller: addr, format: true });
    const busy = new RegExp(`EBUSY: ${l.dev} is in use by .* pid ${process.pid}`);
    try {
      t.is(deviceHolder(l.dev)?.pid, process.pid);
      await t.throwsAsync(BlockdevService.start({ device: l.dev, controller: addr, format: true, name: 'second' }), { message: busy });
      await t.throwsAsync(runRealFio(profile(), { filename: l.dev, runtimeMs: 200 }), { message: busy });
      await code(t, Promise.resolve().then(() => claimDevice(l.dev)), 'EBUSY');
    } finally {
      await bd.close();
    }
    t.is(deviceHolder(l.dev), null);
    claimDevice(l.dev).release();
  } finally {
    await c.close();
    l.detach();
  }
});

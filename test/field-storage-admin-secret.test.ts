/**
 * Review of issue #7, gap 6: the volume administration went to whoever claimed first after
 * the FS restarts. With an admin secret (`--admin-secret-file`, BlockdevOptions.adminSecret)
 * the blockdev answers admin_claim only with the secret's proof (EPERM otherwise); the FS
 * with the same secret claims it, and reclaims it after a restart. Without one, the blockdev
 * warns at start that any local Process can claim it.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect } from '../libfractos/index.js';
import { readAdminSecret } from '../blockdev-adaptor/admin-secret.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, adminRelease } from '../blockdev-adaptor/client.js';
import { FsService } from '../fs-service/service.js';
import { FsClient } from '../fs-service/client.js';
import { run } from './helpers/cli.js';
import { deviceDir } from './helpers/devices.js';
import { FRACTOS_BIN, REPO_ROOT, spawnFractos, tempDir } from './helpers/spawn.js';
import { codeOf, expectCode as code } from './helpers/errors.js';
import { waitFor } from './helpers/stall.js';
import test from 'ava';

const devices = await deviceDir('fractos-fsec', 'field-storage-admin-secret.test');
const { vtest } = devices;

async function controller(): Promise<{ c: Controller; addr: string; dir: string }> {
  const dir = tempDir();
  const addr = `unix:${join(dir, 'c.sock')}`;
  return { c: await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'state') }), addr, dir };
}

vtest('admin secret: no or a wrong proof is EPERM, the right one claims; the FS with it restarts and reclaims', async (t) => {
  const { c, addr, dir } = await controller();
  writeFileSync(join(dir, 'admin.secret'), `${randomBytes(32).toString('hex')}\n`);
  const secret = readAdminSecret(join(dir, 'admin.secret'));
  const bd = await BlockdevService.start({ device: devices.devFile(64 << 20), controller: addr, format: true, queueDepth: 16, adminSecret: secret });
  const mallory = await connect(addr, { name: 'mallory' });
  let fs: FsService | null = null;
  try {
    // Nobody holds it, yet a claim without the secret (or with another) is refused, not retried.
    await code(t, adminClaim(mallory, 'blockdev', 0), 'EPERM');
    await code(t, adminClaim(mallory, 'blockdev', 2000, randomBytes(32)), 'EPERM');
    await code(t, adminClaim(mallory, 'blockdev', 0, Buffer.concat([secret, Buffer.from('x')])), 'EPERM');
    t.false(bd.adminHeld);
    // An FS without the secret cannot start on it.
    t.is(await codeOf(FsService.start({ controller: addr, name: 'fs-nosecret' })), 'EPERM');
    t.false(bd.adminHeld);
    // The right secret claims (and gives it back).
    const owner = await connect(addr, { name: 'owner' });
    const admin = await adminClaim(owner, 'blockdev', 0, secret);
    t.true(bd.adminHeld);
    await adminRelease(owner, admin);
    await owner.close();
    await waitFor(() => !bd.adminHeld, 10_000, 'the claim to be released');

    // The FS with the secret, a file, a restart: the same FS reclaims and finds its file; mallory still cannot claim meanwhile.
    fs = await FsService.start({ controller: addr, adminSecret: secret });
    const client = await FsClient.connect(mallory);
    await client.create('/kept');
    await fs.close();
    fs = null;
    await code(t, adminClaim(mallory, 'blockdev', 1000), 'EPERM');
    fs = await FsService.start({ controller: addr, adminSecret: secret });
    t.true(bd.adminHeld);
    t.is((await (await FsClient.connect(mallory)).stat('/kept')).size, 0);
  } finally {
    await mallory.close().catch(() => {});
    await fs?.close();
    await bd.close();
    await c.close();
  }
});

test('readAdminSecret: a short or missing file is EINVAL', (t) => {
  const dir = tempDir();
  writeFileSync(join(dir, 'short'), 'abc\n');
  t.throws(() => readAdminSecret(join(dir, 'short')), { message: /^EINVAL.*16/ });
  t.throws(() => readAdminSecret(join(dir, 'missing')), { message: /^EINVAL.*missing/ });
});

vtest('fractos blockdev/fs --admin-secret-file: the FS without it is refused (EPERM), with it ready; no secret warns', async (t) => {
  const { c, addr, dir } = await controller();
  const file = join(dir, 'admin.secret');
  writeFileSync(file, randomBytes(24).toString('base64'));
  const device = devices.devFile(64 << 20);
  const procs: Awaited<ReturnType<typeof spawnFractos>>[] = [];
  try {
    const bd = await spawnFractos(['blockdev', '--device', device, '--format', '--controller', addr, '--admin-secret-file', file], /^ready blockdev/, { timeoutMs: 60_000 });
    procs.push(bd);
    // stdout and stderr are two pipes: the warning, written before the ready line, may be
    // read after it. All of the output is in once the process has exited and both are closed.
    const bdOutputEnd = new Promise((r) => bd.child.once('close', r));
    const denied = run([FRACTOS_BIN, 'fs', '--controller', addr]);
    const r = await denied.exit;
    t.is(r.code, 1, denied.out());
    t.regex(denied.out(), /EPERM.*admin secret/, denied.out());
    const fs = await spawnFractos(['fs', '--controller', addr, '--admin-secret-file', file], /^ready fs/, { timeoutMs: 60_000 });
    procs.push(fs);
    await fs.stop();
    await bd.stop();
    await bdOutputEnd;
    t.notRegex(bd.output(), /any local Process can claim/);
    const open = await spawnFractos(['blockdev', '--device', device, '--controller', addr, '--name', 'open'], /^ready blockdev/, { timeoutMs: 60_000 });
    procs.push(open);
    // the warning precedes the ready line on the other pipe (stderr): awaited, not sampled
    await waitFor(() => /no admin secret.*any local Process can claim/.test(open.output()), 20_000, 'the no-secret warning on stderr');
  } finally {
    for (const p of procs) await p.kill9().catch(() => {});
    await c.close();
  }
});

vtest('fractos fio --controller --target blockdev --admin-secret-file: claims a secret-guarded blockdev; without the file EPERM', async (t) => {
  const { c, addr, dir } = await controller();
  const file = join(dir, 'admin.secret');
  writeFileSync(file, randomBytes(24).toString('base64'));
  const device = devices.devFile(640 << 20);
  const profile = join(REPO_ROOT, 'fio-profiles', 'randread-4k-qd1.fio');
  const bd = await spawnFractos(['blockdev', '--device', device, '--format', '--controller', addr, '--admin-secret-file', file], /^ready blockdev/, { timeoutMs: 60_000 });
  try {
    const denied = run([FRACTOS_BIN, 'fio', profile, '--target', 'blockdev', '--controller', addr, '--runtime', '0.3']);
    const d = await denied.exit;
    t.is(d.code, 1, denied.out());
    t.regex(denied.out(), /EPERM/, denied.out());
    const ok = run([FRACTOS_BIN, 'fio', profile, '--target', 'blockdev', '--controller', addr, '--runtime', '0.3', '--admin-secret-file', file]);
    const r = await ok.exit;
    t.is(r.code, 0, ok.out());
    t.regex(ok.out(), /IOPS/i, ok.out());
  } finally {
    await bd.kill9().catch(() => {});
    await c.close();
  }
});

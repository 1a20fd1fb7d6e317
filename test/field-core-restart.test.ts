/**
 * Review of issue #7, items 1 and 10: the services that publish bootstrap names (blockdev,
 * fs, gpu) still start again after a kill -9, now that a name belongs to its publisher (the
 * new run republishes names its old run held, right after that run died); and SIGHUP stops
 * a service like SIGTERM. Real `fractos` processes against a real Controller process.
 */
import { join } from 'node:path';
import { FsClient } from '../fs-service/client.js';
import { GpuContext } from '../gpu-adaptor/client.js';
import { connect } from '../libfractos/index.js';
import { deviceDir } from './helpers/devices.js';
import { removeTempDir, spawnFractos, tempDir, type Spawned } from './helpers/spawn.js';

const devices = await deviceDir('fractos-restart', 'field-core-restart.test');

devices.vtest('blockdev, fs and gpu start again right after kill -9 and serve; gpu stops on SIGHUP', async (t) => {
  const dir = tempDir('fractos-restart-');
  const addr = `unix:${join(dir, 'c.sock')}`;
  const live: Spawned[] = [];
  t.teardown(async () => {
    for (const x of live.reverse()) await x.kill9();
    removeTempDir(dir);
  });
  const start = async (args: string[], ready: RegExp): Promise<Spawned> => {
    const s = await spawnFractos([...args, '--controller', addr], ready, { timeoutMs: 60_000 });
    live.push(s);
    return s;
  };
  const c = await spawnFractos(['controller', '--id', '1', '--state-dir', join(dir, 'state'), '--listen', addr], /^controller \d+ epoch/);
  live.push(c);
  const dev = devices.devFile(64 << 20);
  const bd = await start(['blockdev', '--device', dev, '--format'], /^ready blockdev/);
  let fs = await start(['fs'], /^ready fs/);
  let gpu = await start(['gpu', '--backend', 'cpu'], /^ready gpu/);
  const app = await connect(addr, { name: 'app' });
  t.teardown(() => app.close());
  await (await FsClient.connect(app)).create('/kept');

  // gpu: kill -9, start again at once: gpu.init is republished and answers.
  await gpu.kill9();
  gpu = await start(['gpu', '--backend', 'cpu'], /^ready gpu/);
  const ctx = await GpuContext.open(app, 'gpu', { timeoutMs: 10_000 });
  t.is(ctx.backend, 'cpu');
  await ctx.cleanup();

  // fs: kill -9, start again: its Requests are republished, the file is there.
  await fs.kill9();
  fs = await start(['fs'], /^ready fs/);
  t.is((await (await FsClient.connect(app)).stat('/kept')).size, 0);

  // blockdev and fs: both again (admin_claim republished by the new blockdev).
  await fs.kill9();
  await bd.kill9();
  await start(['blockdev', '--device', dev], /^ready blockdev/);
  await start(['fs'], /^ready fs/);
  const fsc = await FsClient.connect(app);
  t.is((await fsc.stat('/kept')).size, 0);
  await fsc.create('/new');

  // SIGHUP is a requested stop.
  const exited = new Promise<number | null>((r) => gpu.child.once('close', (code) => r(code))); // exited, output read
  gpu.child.kill('SIGHUP');
  t.is(await exited, 0, gpu.output());
  t.regex(gpu.output(), /^gpu: stopped on SIGHUP$/m);
});

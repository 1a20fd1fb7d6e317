/**
 * Issue #7 item 3: how the `fractos` services end. A requested stop (SIGINT, SIGTERM) exits
 * 0 with one line `NAME: stopped on SIGNAL` and no "controller channel closed" warning
 * (controller, blockdev, fs, gpu, facever serve); only a real loss of the Controller exits 1
 * with that warning. Real `node bin/fractos.js` processes against a real Controller process.
 */
import type { ExecutionContext } from 'ava';
import { join } from 'node:path';
import { datasetForTests, isOrlDir } from '../facever-app/dataset.js';
import { run } from './helpers/cli.js';
import { deviceDir } from './helpers/devices.js';
import { FRACTOS_BIN, removeTempDir, spawnFractos, tempDir, type Spawned } from './helpers/spawn.js';

const devices = await deviceDir('fractos-life', 'field-cli-lifecycle.test');

interface Ended {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Wait for `x` to exit and its output to be read to the end (at most `ms`, then SIGKILL and report). */
function ended(x: Spawned, ms = 15_000): Promise<Ended> {
  const t = setTimeout(() => x.child.kill('SIGKILL'), ms);
  return x.ended.finally(() => clearTimeout(t));
}

async function controller(dir: string): Promise<{ c: Spawned; addr: string }> {
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await spawnFractos(['controller', '--id', '1', '--state-dir', join(dir, 'state'), '--listen', addr], /^controller \d+ epoch/);
  return { c, addr };
}

type Services = Record<'blockdev' | 'fs' | 'gpu', Spawned>;

/** A Controller, blockdev, fs and gpu (cpu) as processes; all killed and their folder removed after the test. */
async function stack(t: ExecutionContext): Promise<{ c: Spawned; s: Services; addr: string }> {
  const dir = tempDir('fractos-life-');
  t.teardown(() => removeTempDir(dir));
  const { c, addr } = await controller(dir);
  const s = await services(addr);
  t.teardown(async () => {
    for (const x of [s.gpu, s.fs, s.blockdev, c]) await x.kill9();
  });
  return { c, s, addr };
}

async function services(addr: string): Promise<Services> {
  const blockdev = await spawnFractos(['blockdev', '--device', devices.devFile(64 << 20), '--format', '--controller', addr], /^ready blockdev/, { timeoutMs: 60_000 });
  const fs = await spawnFractos(['fs', '--controller', addr], /^ready fs/, { timeoutMs: 60_000 });
  const gpu = await spawnFractos(['gpu', '--backend', 'cpu', '--controller', addr], /^ready gpu/, { timeoutMs: 60_000 });
  return { blockdev, fs, gpu };
}

devices.vtest('SIGINT / SIGTERM: each service (facever serve too) exits 0 with one "stopped on" line, no controller-loss warning', async (t) => {
  const { c, s, addr } = await stack(t);
  const requested = async (name: string, x: Spawned, sig: NodeJS.Signals): Promise<void> => {
    const e = ended(x);
    x.child.kill(sig);
    const r = await e;
    const out = x.output();
    t.deepEqual(r, { code: 0, signal: null }, `${name} on ${sig}:\n${out}`);
    t.regex(out, new RegExp(`^${name}: stopped on ${sig}$`, 'm'), out);
    t.notRegex(out, /controller channel closed/, out);
  };
  // facever serve needs the enrolled faces
  const dataset = datasetForTests();
  if (isOrlDir(dataset)) {
    const enroll = run([FRACTOS_BIN, 'facever', 'enroll', '--dataset', dataset, '--controller', addr]);
    t.is((await enroll.exit).code, 0, enroll.out());
    const serve = await spawnFractos(['facever', 'serve', '--port', '0', '--design', 'chain', '--controller', addr], /^ready facever/, { timeoutMs: 60_000 });
    t.teardown(() => serve.kill9());
    await requested('facever', serve, 'SIGINT');
  } else t.log(`facever serve not checked: no ORL faces at ${dataset}`);
  const plan: [keyof typeof s, NodeJS.Signals][] = [['gpu', 'SIGINT'], ['fs', 'SIGTERM'], ['blockdev', 'SIGINT']];
  for (const [name, sig] of plan) await requested(name, s[name], sig);
  const e = ended(c);
  c.child.kill('SIGINT');
  t.deepEqual(await e, { code: 0, signal: null }, c.output());
  t.regex(c.output(), /^controller: stopped on SIGINT$/m);
});

devices.vtest('losing the Controller (kill -9) is an error: each service exits 1 with the warning', async (t) => {
  const { c, s } = await stack(t);
  const exits = Object.entries(s).map(async ([name, x]) => ({ name, x, r: await ended(x) }));
  await c.kill9();
  for (const { name, x, r } of await Promise.all(exits)) {
    t.deepEqual(r, { code: 1, signal: null }, `${name}:\n${x.output()}`);
    t.regex(x.output(), /controller channel closed; exiting/, `${name}:\n${x.output()}`);
    t.notRegex(x.output(), /stopped on/, name);
  }
});

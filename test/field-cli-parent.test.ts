/**
 * A `fractos` command killed with -9 leaves no children behind: every child spawned through
 * testbed/spawn.ts watches its parent (cli/parent.ts) and stops as on SIGTERM (closing what
 * it holds: the Controller removes its socket) once the parent is gone.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { watchParent, PARENT_PID_ENV } from '../cli/parent.js';
import { alive, run, until } from './helpers/cli.js';
import { REPO_ROOT, removeTempDir, tempDir } from './helpers/spawn.js';

test('a child of a parent killed with SIGKILL stops by itself and cleans up', async (t) => {
  const dir = tempDir('fractos-parent-');
  t.teardown(() => removeTempDir(dir));
  const sock = join(dir, 'c.sock');
  const spawnJs = pathToFileURL(join(REPO_ROOT, 'dist', 'testbed', 'spawn.js')).href;
  // The parent: spawns a Controller as the demo and the runners do, prints its pid, waits.
  const script = `
    import { spawnFractos } from ${JSON.stringify(spawnJs)};
    const c = await spawnFractos(['controller', '--id', '1', '--state-dir', ${JSON.stringify(join(dir, 'state'))}, '--listen', 'unix:${sock}'], /^controller \\d+ epoch/);
    console.log('child ' + c.child.pid);
    setInterval(() => {}, 1000);
  `;
  const parent = run(['--input-type=module', '-e', script]);
  const m = await parent.waitFor(/child (\d+)/, 30_000);
  const childPid = Number(m[1]);
  t.teardown(() => { try { process.kill(childPid, 'SIGKILL'); } catch { /* gone */ } });
  t.true(alive(childPid));
  t.true(existsSync(sock));
  parent.child.kill('SIGKILL');
  await parent.exit;
  t.true(await until(() => !alive(childPid), 10_000), `controller pid ${childPid} still running after its parent was killed`);
  t.false(existsSync(sock), 'the Controller stopped cleanly (socket removed)');
});

test('watchParent: only with FRACTOS_PARENT_PID naming the actual parent; stops once it changes', async (t) => {
  t.is(watchParent({}, () => 1234, () => t.fail()), null);
  t.is(watchParent({ [PARENT_PID_ENV]: 'x' }, () => 1234, () => t.fail()), null);
  t.is(watchParent({ [PARENT_PID_ENV]: '999' }, () => 1234, () => t.fail()), null, 'spawned through a wrapper: not watched');
  let ppid = 1234;
  let stopped = 0;
  const timer = watchParent({ [PARENT_PID_ENV]: '1234' }, () => ppid, () => stopped++);
  t.truthy(timer);
  await new Promise((r) => setTimeout(r, 700));
  t.is(stopped, 0);
  ppid = 1;
  t.true(await until(() => stopped === 1, 3000));
  await new Promise((r) => setTimeout(r, 700));
  t.is(stopped, 1, 'stops once');
});

/**
 * The README's libfractos example (examples/echo.ts) runs as a user runs it: `node
 * dist/examples/echo.js ADDR` against a Controller prints 42 and exits 0 by itself (its
 * Processes close), and without a Controller it fails with a typed error, exit 1.
 */
import test from 'ava';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { run } from './helpers/cli.js';
import { REPO_ROOT, removeTempDir, tempDir } from './helpers/spawn.js';

const ECHO = join(REPO_ROOT, 'dist', 'examples', 'echo.js');

test('examples/echo: prints 42 and exits 0 on its own', async (t) => {
  const dir = tempDir('fractos-example-');
  t.teardown(() => removeTempDir(dir));
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'state') });
  t.teardown(() => c.close());
  const r = run([ECHO, addr]);
  const timer = setTimeout(() => r.child.kill('SIGKILL'), 20_000);
  const e = await r.exit;
  clearTimeout(timer);
  t.deepEqual(e, { code: 0, signal: null }, r.out());
  t.is(r.out().trim(), '42');
});

test('examples/echo: no Controller is a typed error, exit 1', async (t) => {
  const dir = tempDir('fractos-example-');
  t.teardown(() => removeTempDir(dir));
  const r = run([ECHO, `unix:${join(dir, 'none.sock')}`]);
  const e = await r.exit;
  t.is(e.code, 1, r.out());
  t.regex(r.out(), /E[A-Z]+/);
});

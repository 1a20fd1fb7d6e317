/**
 * Issue #7 (review): a subcommand group whose module fails to load (ERR_MODULE_NOT_FOUND
 * from a missing dependency) fails the command loudly instead of vanishing from `fractos`;
 * bin/fractos.js says "not built" only when dist/cli/main.js is absent.
 */
import test from 'ava';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildProgram, GROUPS } from '../cli/commands.js';
import { FractosError } from '../libfractos/errors.js';
import { run } from './helpers/cli.js';
import { FRACTOS_BIN, removeTempDir, tempDir } from './helpers/spawn.js';

test('loader: every group registers its subcommands', async (t) => {
  const names = (await buildProgram()).commands.map((c) => c.name());
  for (const n of ['controller', 'stats', 'bench', 'blockdev', 'fs', 'fio', 'gpu', 'facever', 'demo', 'rm', 'mount', 'cluster', 'dashboard']) t.true(names.includes(n), `${n} missing: ${names.join(', ')}`);
});

test('--help marks required options (commander requiredOption) in every subcommand, and only those', async (t) => {
  const program = await buildProgram();
  const blockdev = program.commands.find((c) => c.name() === 'blockdev')!;
  const help = blockdev.helpInformation().replace(/\s+/g, ' ');
  t.regex(help, /--device <path> [^-]*\(required\)/);
  t.notRegex(help, /--controller <addr> [^-]*\(required\)/);
  const serve = program.commands.find((c) => c.name() === 'facever')!.commands.find((c) => c.name() === 'serve')!;
  t.regex(serve.helpInformation().replace(/\s+/g, ' '), /--port <n> [^-]*\(required\)/);
});

test('loader: a group whose import fails (ERR_MODULE_NOT_FOUND) is an ENODEV naming the group and the cause, never a silent drop', async (t) => {
  const missing = Object.assign(new Error("Cannot find package 'lru-cache' imported from fs-service/cache.js"), { code: 'ERR_MODULE_NOT_FOUND' });
  for (const spec of GROUPS) {
    const err = await t.throwsAsync(buildProgram((s) => (s === spec ? Promise.reject(missing) : import(`../cli/${s.slice(2)}`))));
    t.true(err instanceof FractosError);
    t.is((err as FractosError).code, 'ENODEV');
    t.is(err!.message, `ENODEV: cannot load the fractos commands of ${spec}: ERR_MODULE_NOT_FOUND: Cannot find package 'lru-cache' imported from fs-service/cache.js`);
    t.is((err as Error & { cause?: unknown }).cause, missing);
  }
});

test('loader: a module without register() is EINVAL', async (t) => {
  const err = await t.throwsAsync(buildProgram((s) => (s === './gpu.js' ? Promise.resolve({}) : import(`../cli/${s.slice(2)}`))));
  t.is((err as FractosError).code, 'EINVAL');
});

test('bin/fractos.js: "not built" only without dist/cli/main.js; a missing dependency of the CLI propagates', async (t) => {
  const root = tempDir('fractos-bin-');
  t.teardown(() => removeTempDir(root));
  mkdirSync(join(root, 'bin'));
  copyFileSync(FRACTOS_BIN, join(root, 'bin', 'fractos.js'));
  writeFileSync(join(root, 'package.json'), '{"type":"module"}');
  const a = run([join(root, 'bin', 'fractos.js'), '--help'], {}, root);
  t.is((await a.exit).code, 1);
  t.regex(a.out(), /not built yet/);
  mkdirSync(join(root, 'dist', 'cli'), { recursive: true });
  writeFileSync(join(root, 'dist', 'cli', 'main.js'), "import 'fractos-no-such-package';\n");
  const b = run([join(root, 'bin', 'fractos.js'), '--help'], {}, root);
  t.is((await b.exit).code, 1);
  t.notRegex(b.out(), /not built yet/);
  t.regex(b.out(), /fractos-no-such-package/);
  t.regex(b.out(), /ERR_MODULE_NOT_FOUND/);
});

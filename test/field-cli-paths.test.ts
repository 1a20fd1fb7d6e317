/**
 * Issue #7 items 6 and 9: user-given paths are resolved against the working directory.
 * - The ORL dataset: `--dataset X` / `FRACTOS_DATASET=X` against cwd, the default next to
 *   the checkout, no hidden absolute fallback, ENOENT naming the path tried.
 * - `facever bench` writes files only with `--out DIR` (against cwd), nothing otherwise.
 */
import test from 'ava';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { datasetForTests, isOrlDir, resolveDataset, siblingCandidates } from '../facever-app/dataset.js';
import { FractosError } from '../libfractos/errors.js';
import { run } from './helpers/cli.js';
import { deviceDir } from './helpers/devices.js';
import { FRACTOS_BIN, REPO_ROOT, removeTempDir, tempDir } from './helpers/spawn.js';

/** A fake ORL folder (s1/1.pgm only: the layout check) under `dir`. */
function fakeOrl(dir: string): string {
  mkdirSync(join(dir, 's1'), { recursive: true });
  writeFileSync(join(dir, 's1', '1.pgm'), 'P5\n92 112\n255\n');
  return dir;
}

/** The message (without the `ENOENT: ` prefix) of the ENOENT FractosError `f` throws. */
function enoent(t: { true(v: boolean, m?: string): void; is(a: unknown, b: unknown): void }, f: () => unknown): string {
  try {
    f();
  } catch (e) {
    t.true(e instanceof FractosError, String(e));
    t.is((e as FractosError).code, 'ENOENT');
    return (e as Error).message.replace(/^ENOENT: /, '');
  }
  t.true(false, 'no error');
  return '';
}

test('dataset: --dataset and FRACTOS_DATASET are resolved against the working directory', (t) => {
  const home = tempDir('fractos-ds-');
  t.teardown(() => removeTempDir(home));
  const work = join(home, 'work', 'repo');
  mkdirSync(work, { recursive: true });
  const faces = fakeOrl(join(home, 'work', 'faces'));
  t.is(resolveDataset('../faces', { cwd: work, env: {}, root: '/nonexistent/repo' }), faces);
  t.is(resolveDataset(faces, { cwd: '/', env: {}, root: '/nonexistent/repo' }), faces);
  t.is(resolveDataset(undefined, { cwd: work, env: { FRACTOS_DATASET: '../faces' }, root: '/nonexistent/repo' }), faces);
  // --dataset wins over the environment
  t.is(resolveDataset('../faces', { cwd: work, env: { FRACTOS_DATASET: '/nope' }, root: '/nonexistent/repo' }), faces);
});

test('dataset: a missing one is ENOENT naming the absolute path tried and where it came from', (t) => {
  const home = tempDir('fractos-ds-');
  t.teardown(() => removeTempDir(home));
  t.is(enoent(t, () => resolveDataset('../shared/datasets/att-faces', { cwd: home, env: {}, root: home })),
    `dataset not found: ${join(home, '..', 'shared', 'datasets', 'att-faces')} (from --dataset ../shared/datasets/att-faces): no s1/1.pgm there (ORL layout s<N>/<k>.pgm)`);
  t.regex(enoent(t, () => resolveDataset(undefined, { cwd: home, env: { FRACTOS_DATASET: 'x' }, root: home })), new RegExp(`^dataset not found: ${join(home, 'x')} \\(from FRACTOS_DATASET=x\\)`));
  // A path given by the user that does not exist is an error even where a default exists:
  // no silent fallback to another folder.
  const root = join(home, 'a', 'repo');
  mkdirSync(root, { recursive: true });
  fakeOrl(join(home, 'a', 'shared', 'datasets', 'att-faces'));
  t.regex(enoent(t, () => resolveDataset('faces', { cwd: root, env: {}, root })), /from --dataset faces/);
});

test('dataset: the default is shared/datasets/att-faces next to the checkout (nearest ancestor), else ENOENT listing the places', (t) => {
  const home = tempDir('fractos-ds-');
  t.teardown(() => removeTempDir(home));
  const root = join(home, 'wt', 'cli');
  mkdirSync(root, { recursive: true });
  const msg = enoent(t, () => resolveDataset(undefined, { cwd: '/', env: {}, root }));
  t.true(msg.startsWith(`dataset not found: ${join(home, 'wt', 'shared', 'datasets', 'att-faces')}, ${join(home, 'shared', 'datasets', 'att-faces')}, `), msg);
  const far = fakeOrl(join(home, 'shared', 'datasets', 'att-faces'));
  t.is(resolveDataset(undefined, { cwd: '/', env: {}, root }), far);
  const near = fakeOrl(join(home, 'wt', 'shared', 'datasets', 'att-faces'));
  t.is(resolveDataset(undefined, { cwd: '/', env: {}, root }), near);
  t.is(siblingCandidates(root)[0], near);
});

test('dataset: the CLI resolves --dataset against its working directory and names the path on error', async (t) => {
  const home = tempDir('fractos-ds-');
  t.teardown(() => removeTempDir(home));
  const r = run([FRACTOS_BIN, 'facever', 'enroll', '--dataset', 'no-such-faces', '--controller', `unix:${join(home, 'none.sock')}`], {}, home);
  const e = await r.exit;
  t.is(e.code, 1);
  t.regex(r.out(), new RegExp(`dataset not found: ${join(home, 'no-such-faces')} \\(from --dataset no-such-faces\\)`));
});

const dataset = datasetForTests();
const devices = await deviceDir('fractos-paths', 'field-cli-paths.test');
const benchSkip = devices.reason || (isOrlDir(dataset) ? '' : `no ORL faces at ${dataset}`);
const benchTest = benchSkip ? test.skip : test;
const BENCH = ['facever', 'bench', '--placement', 'single', '--designs', 'chain', '--batches', '1', '--inflight', '1', '--reps', '1', '--warmup-ms', '0', '--backend', 'cpu'];

benchTest(`facever bench: no files without --out; --out DIR (relative) writes the plots under cwd/DIR${benchSkip ? ` [skipped: ${benchSkip}]` : ''}`, async (t) => {
  const cwd = tempDir('fractos-bench-cwd-');
  t.teardown(() => removeTempDir(cwd));
  const repoOut = join(REPO_ROOT, 'bench-out');
  const hadRepoOut = existsSync(repoOut);
  // the dataset given relative to cwd, as a user would
  const a = run([FRACTOS_BIN, ...BENCH, '--dataset', relative(cwd, dataset)], {}, cwd);
  t.is((await a.exit).code, 0, a.out());
  t.deepEqual(readdirSync(cwd), [], 'no files in the working directory');
  if (!hadRepoOut) t.false(existsSync(repoOut), 'no bench-out/ in the repository');
  t.notRegex(a.out(), /plots:/);

  const b = run([FRACTOS_BIN, ...BENCH, '--dataset', dataset, '--out', 'plots'], {}, cwd);
  t.is((await b.exit).code, 0, b.out());
  t.deepEqual(readdirSync(join(cwd, 'plots', 'single')).sort(), ['latency.svg', 'throughput.svg']);
  t.regex(b.out(), new RegExp(`plots: ${join(cwd, 'plots', 'single', 'latency.svg')}`));
  if (!hadRepoOut) t.false(existsSync(repoOut), 'no bench-out/ in the repository');
});

/**
 * Where the ORL faces are (the AT&T "ORL Database of Faces": 40 subjects s1..s40, 10 photos
 * each, `s<N>/<k>.pgm`, 92x112 8-bit PGM).
 *
 * - A path the user gives (`--dataset DIR`, `FRACTOS_DATASET=DIR`) is resolved against the
 *   current working directory, as a shell user expects.
 * - Without either, the default is `shared/datasets/att-faces` next to the checkout: the
 *   first `<ancestor>/shared/datasets/att-faces` going up from the repository root
 *   (`../shared/...`, then `../../shared/...`, ...).
 *
 * There is no other fallback; a dataset that is not there is a typed ENOENT naming the path
 * tried and where it came from.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { FractosError } from '../libfractos/errors.js';
import { REPO_ROOT } from '../testbed/paths.js';

/** The environment variable naming the dataset folder. */
export const DATASET_ENV = 'FRACTOS_DATASET';

/** True when `dir` has the ORL layout (at least `s1/1.pgm`). */
export function isOrlDir(dir: string): boolean {
  return existsSync(join(dir, 's1', '1.pgm'));
}

/** The `<ancestor>/shared/datasets/att-faces` candidates of `root`, nearest first. */
export function siblingCandidates(root = REPO_ROOT): string[] {
  const out: string[] = [];
  for (let d = dirname(root); ; d = dirname(d)) {
    out.push(join(d, 'shared', 'datasets', 'att-faces'));
    if (dirname(d) === d) return out;
  }
}

/** Options of `resolveDataset` (for tests; the CLI uses the process's own). */
export interface DatasetLookup {
  /** Folder user-given paths are relative to (default `process.cwd()`). */
  cwd?: string;
  /** Environment (default `process.env`). */
  env?: NodeJS.ProcessEnv;
  /** Repository root the default is searched from (default this checkout's). */
  root?: string;
}

/**
 * The absolute dataset folder for `given` (the `--dataset` value, or undefined). Order:
 * `given` (against cwd), else `$FRACTOS_DATASET` (against cwd), else the checkout's sibling
 * `shared/datasets/att-faces` (see the module comment).
 * @throws FractosError ENOENT `dataset not found: /abs/path (from --dataset X)` (or
 *   `(from FRACTOS_DATASET=X)`, or the list of default places tried).
 */
export function resolveDataset(given?: string, o: DatasetLookup = {}): string {
  const cwd = o.cwd ?? process.cwd();
  const env = o.env ?? process.env;
  const check = (value: string, from: string): string => {
    const abs = resolve(cwd, value);
    if (!isOrlDir(abs)) throw new FractosError('ENOENT', `dataset not found: ${abs} (from ${from}): no s1/1.pgm there (ORL layout s<N>/<k>.pgm)`);
    return abs;
  };
  if (given !== undefined && given !== '') return check(given, `--dataset ${given}`);
  const fromEnv = env[DATASET_ENV];
  if (fromEnv) return check(fromEnv, `${DATASET_ENV}=${fromEnv}`);
  const found = findDefaultDataset(o.root);
  if (found) return found;
  throw new FractosError('ENOENT', `dataset not found: ${siblingCandidates(o.root).join(', ')} (the default, shared/datasets/att-faces next to the checkout); pass --dataset DIR or set ${DATASET_ENV}`);
}

/** The default dataset folder (sibling `shared/datasets/att-faces`), or undefined when there is none. */
export function findDefaultDataset(root = REPO_ROOT): string | undefined {
  return siblingCandidates(root).find(isOrlDir);
}

/**
 * For tests and scripts that skip without faces: `$FRACTOS_DATASET` if set, else the
 * default folder, else the nearest candidate (absent: callers check `isOrlDir`).
 */
export function datasetForTests(): string {
  const env = process.env[DATASET_ENV];
  if (env) return resolve(env);
  return findDefaultDataset() ?? siblingCandidates()[0]!;
}

/**
 * The one loader of the native addons (native/NAME/, one binding.gyp each; shared compiler
 * flags in native/common.gypi). Every addon `NAME` builds `fractos_NAME.node`.
 *
 * Load order (fixed), the first path that exists decides:
 * 1. `$FRACTOS_NATIVE_DIR/fractos_NAME.node`, when that variable is set (a folder holding
 *    prebuilt addons, e.g. for an install without a compiler);
 * 2. the node-gyp build output `native/NAME/build/Release/fractos_NAME.node` of this checkout
 *    (the same path whether running from dist/ or from the sources); the native Controller
 *    (`controller`) builds in `controller/build/Release/` (controller/binding.gyp).
 * A path that exists but fails to load (wrong ABI, missing library) is not skipped: its error
 * is the cause. When nothing loads, `loadNative` throws `NativeUnavailableError` (code ENODEV)
 * with the addon name and the paths tried, on which tests skip precisely.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ERROR_CODES, FractosError, NativeUnavailableError, errorCodeFromErrno, type ErrorCode } from '../libfractos/errors.js';

/** Environment variable naming a folder of prebuilt addons, looked at first. */
export const NATIVE_DIR_ENV = 'FRACTOS_NATIVE_DIR';

const here = dirname(fileURLToPath(import.meta.url));
/** native/ of the source tree: this folder, or <root>/native when running from <root>/dist/native. */
const sourceDir = basename(dirname(here)) === 'dist' ? join(here, '..', '..', 'native') : here;
const require = createRequire(import.meta.url);
const loaded = new Map<string, { binding: unknown; path: string }>();

/** Addon names: a lower-case word (the folder under native/). */
const NAME_RE = /^[a-z][a-z0-9_]{0,31}$/;

/**
 * Paths looked at for addon `name`, in load order (see the module comment). Reads
 * `$FRACTOS_NATIVE_DIR` on each call. Errors: EINVAL for a name that is not a lower-case word.
 */
export function nativeCandidates(name: string): string[] {
  if (!NAME_RE.test(name)) throw new FractosError('EINVAL', `bad native addon name '${name}'`);
  const file = `fractos_${name}.node`;
  const out: string[] = [];
  const dir = process.env[NATIVE_DIR_ENV];
  if (dir) out.push(join(dir, file));
  const dirOf = name === 'controller' ? join(sourceDir, '..', 'controller') : join(sourceDir, name);
  out.push(join(dirOf, 'build', 'Release', file));
  return out;
}

/**
 * Load addon `name` ('shm', 'uring', 'gpu', 'controller') once per process; later calls return the same
 * binding. `T` is the shape of its exports (not checked at run time).
 * @returns the binding and the path it was loaded from (its folder holds any side files, e.g. lbp.ptx)
 * @throws NativeUnavailableError (ENODEV, with `addon` and `tried`) when no candidate exists
 *   or the first existing one fails to load; FractosError EINVAL for a bad name.
 */
export function loadNative<T>(name: string): { binding: T; path: string } {
  const hit = loaded.get(name);
  if (hit) return hit as { binding: T; path: string };
  const tried = nativeCandidates(name);
  const path = tried.find((p) => existsSync(p));
  if (!path) {
    throw new NativeUnavailableError(name, new Error(`not built (run: node native/build.mjs ${name})`), tried);
  }
  let binding: T;
  try {
    binding = require(path) as T;
  } catch (err) {
    throw new NativeUnavailableError(name, err, tried.slice(0, tried.indexOf(path) + 1));
  }
  const entry = { binding, path };
  loaded.set(name, entry);
  return entry;
}

const CODES: ReadonlySet<string> = new Set(ERROR_CODES);

/**
 * An error thrown by an addon, as a FractosError: a numeric `errno` (shm, uring: negative,
 * like io_uring results) goes through `errorCodeFromErrno`; a string `code` (gpu) is kept when
 * it is one of ERROR_CODES, else mapped as an errno name (unknown: EIO). FractosErrors and
 * errors with neither (a TypeError for a bad argument) are returned unchanged.
 * @param what prefix of the message (the call or path), optional
 */
export function nativeError(e: unknown, what?: string): unknown {
  if (e instanceof FractosError || !(e instanceof Error)) return e;
  const { errno, code } = e as Error & { errno?: unknown; code?: unknown };
  const message = what ? `${what}: ${e.message}` : e.message;
  if (typeof errno === 'number') return new FractosError(errorCodeFromErrno(errno), message);
  if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) {
    return new FractosError(CODES.has(code) ? (code as ErrorCode) : errorCodeFromErrno(code), message);
  }
  return e;
}

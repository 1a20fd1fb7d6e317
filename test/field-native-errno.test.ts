/**
 * Issue #7 (smaller things): one errno mapper (code <-> errno, libfractos/errors.ts), one
 * loader for the native addons (native/loader.ts) with one typed "native addon unavailable"
 * error, and one set of compiler flags (native/common.gypi) included by every addon.
 */
import test from 'ava';
import { copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ERROR_CODES, FRACTOS_ERRNO_BASE, FractosError, NativeUnavailableError, errnoFromCode, errnoFromError, errorCodeFromErrno, type ErrorCode,
} from '../libfractos/errors.js';
import { NATIVE_DIR_ENV, loadNative, nativeCandidates, nativeError } from '../native/loader.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const nativeDir = join(root, 'native');

test('every code survives code -> -errno -> code (EREVOKED is not EIO)', (t) => {
  for (const code of ERROR_CODES) {
    if (code === 'OK') continue;
    const n = errnoFromCode(code);
    t.true(n > 0, code);
    t.is(errorCodeFromErrno(-n), code, `${code} -> ${n}`);
    t.is(errorCodeFromErrno(n), code, `${code} -> +${n}`);
  }
  t.is(errnoFromCode('OK'), 0);
  const numbers = ERROR_CODES.map((c) => errnoFromCode(c));
  t.is(new Set(numbers).size, numbers.length, 'one errno per code');
});

test('codes that are Linux errnos keep their numbers; the others lie above MAX_ERRNO', (t) => {
  const linux = { EPERM: 1, ENOENT: 2, EIO: 5, EINVAL: 22, ENOSPC: 28, ERANGE: 34, ENOTSUP: 95, ETIMEDOUT: 110 } as const;
  for (const [code, n] of Object.entries(linux)) t.is(errnoFromCode(code as keyof typeof linux), n, code);
  for (const code of ['EBADCAP', 'EREVOKED', 'ETYPE', 'EARGSET', 'EDISCONNECTED', 'ENOTLOCAL', 'EFAULT', 'EPROTO'] as const) {
    t.true(errnoFromCode(code) >= FRACTOS_ERRNO_BASE && FRACTOS_ERRNO_BASE > 4095, code);
  }
});

test('kernel errnos and Node errno names map as before (aliases one way, unknown -> EIO)', (t) => {
  const cases: [number | string, ErrorCode, string?][] = [
    [-22, 'EINVAL'], [-13, 'EACCES'], [-30, 'EPERM', 'EROFS'], [-27, 'ERANGE', 'EFBIG'], [-38, 'ENOTSUP', 'ENOSYS'],
    [-6, 'ENODEV', 'ENXIO'], [-12, 'ENOSPC', 'ENOMEM'], [-9, 'EIO', 'EBADF: no code of its own'],
    [-14, 'EIO', 'a kernel EFAULT is not a failed served owner'], [-4095, 'EIO'], [-(FRACTOS_ERRNO_BASE + 5000), 'EIO'], [0, 'EIO'],
    ['ENOENT', 'ENOENT'], ['EACCES', 'EACCES'], ['EMFILE', 'EIO'], ['EREVOKED', 'EIO', 'only errno names, not FractOS codes'],
  ];
  for (const [errno, code, why] of cases) t.is(errorCodeFromErrno(errno), code, `${errno}${why ? ` (${why})` : ''}`);
});

test('errnoFromError: FractosError codes, Node errno names, anything else EIO', (t) => {
  t.is(errnoFromError(new FractosError('EREVOKED')), errnoFromCode('EREVOKED'));
  t.is(errnoFromError(Object.assign(new Error('x'), { code: 'ENOENT' })), 2);
  t.is(errnoFromError(new Error('x')), 5);
  t.is(errnoFromError(null), 5);
});

test('nativeError: errno numbers, error-code strings, other errors unchanged', (t) => {
  const e1 = nativeError(Object.assign(new Error('shm_open: No such file'), { errno: -2 }), 'open /x');
  t.true(e1 instanceof FractosError);
  t.is((e1 as FractosError).code, 'ENOENT');
  t.regex((e1 as Error).message, /open \/x: shm_open/);
  t.is((nativeError(Object.assign(new Error('launch'), { code: 'EFAULT' })) as FractosError).code, 'EFAULT');
  t.is((nativeError(Object.assign(new Error('x'), { code: 'EACCES' })) as FractosError).code, 'EACCES');
  const te = new TypeError('bad arg');
  t.is(nativeError(te), te);
  const fe = new FractosError('EBUSY');
  t.is(nativeError(fe), fe);
});

test.serial('loader: an addon that is nowhere is a NativeUnavailableError naming the addon and the paths tried', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fractos-fne-'));
  const saved = process.env[NATIVE_DIR_ENV];
  try {
    process.env[NATIVE_DIR_ENV] = dir;
    const err = t.throws(() => loadNative('nosuch'));
    t.true(err instanceof NativeUnavailableError);
    const e = err as NativeUnavailableError;
    t.is(e.code, 'ENODEV');
    t.is(e.addon, 'nosuch');
    t.deepEqual(e.tried, [join(dir, 'fractos_nosuch.node'), join(nativeDir, 'nosuch', 'build', 'Release', 'fractos_nosuch.node')]);
    t.regex(e.message, /native addon 'nosuch' unavailable: not built \(run: node native\/build\.mjs nosuch\)/);
    t.is((t.throws(() => loadNative('../x')) as FractosError).code, 'EINVAL');
  } finally {
    if (saved === undefined) delete process.env[NATIVE_DIR_ENV];
    else process.env[NATIVE_DIR_ENV] = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial('loader: $FRACTOS_NATIVE_DIR first; a file there that does not load is the cause, not skipped', (t) => {
  const built = join(nativeDir, 'shm', 'build', 'Release', 'fractos_shm.node');
  if (!existsSync(built)) return t.pass('shm addon not built');
  const dir = mkdtempSync(join(tmpdir(), 'fractos-fne-'));
  const saved = process.env[NATIVE_DIR_ENV];
  try {
    process.env[NATIVE_DIR_ENV] = dir;
    t.deepEqual(nativeCandidates('shm'), [join(dir, 'fractos_shm.node'), built]);
    // Not there: the build output.
    t.is(nativeCandidates('shm').find((p) => existsSync(p)), built);
    // A broken file there: not skipped, its load error is the cause.
    writeFileSync(join(dir, 'fractos_broken.node'), 'not an ELF file');
    const e = t.throws(() => loadNative('broken')) as NativeUnavailableError;
    t.true(e instanceof NativeUnavailableError);
    t.deepEqual(e.tried, [join(dir, 'fractos_broken.node')]);
    t.regex(e.message, /native addon 'broken' unavailable: .*fractos_broken\.node: /); // dlopen's error
    // A working copy there is the one loaded.
    copyFileSync(built, join(dir, 'fractos_shm.node'));
    const { binding, path } = loadNative<{ memfdCreate: unknown }>('shm');
    t.is(path, join(dir, 'fractos_shm.node'));
    t.is(typeof binding.memfdCreate, 'function');
    t.is(loadNative('shm').path, path, 'loaded once');
  } finally {
    if (saved === undefined) delete process.env[NATIVE_DIR_ENV];
    else process.env[NATIVE_DIR_ENV] = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every addon includes native/common.gypi, which sets -Wall -Wextra, C++20, NAPI_VERSION; none turns a warning off', (t) => {
  const common = readFileSync(join(nativeDir, 'common.gypi'), 'utf8');
  for (const flag of ["'-Wall'", "'-Wextra'", "'-std=c++20'", "'-fvisibility=hidden'", "'NAPI_VERSION=8'", "'-O2'"]) t.true(common.includes(flag), flag);
  t.regex(common, /'cflags!': \[[^\]]*'-Wno-unused-parameter'/, "node's -Wno-unused-parameter is removed");
  const addons = readdirSync(nativeDir).filter((n) => existsSync(join(nativeDir, n, 'binding.gyp')));
  t.deepEqual(addons.sort(), ['fuse', 'gpu', 'queue', 'shm', 'uring']);
  for (const name of addons) {
    const gyp = readFileSync(join(nativeDir, name, 'binding.gyp'), 'utf8').replace(/#.*$/gm, '');
    t.regex(gyp, /["']includes["']\s*:\s*\[\s*["']\.\.\/common\.gypi["']\s*\]/, `${name} includes ../common.gypi`);
    t.notRegex(gyp, /-Wno-|-w["']|NAPI_VERSION=|-std=/, `${name} neither silences warnings nor overrides the shared flags`);
  }
});

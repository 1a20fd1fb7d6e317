/**
 * Shared-memory regions (POSIX shm, `/dev/shm`) mapped as ArrayBuffers, through the
 * `fractos_shm` addon. The owner of a Memory object creates a region; its Controller
 * opens the same name, so both see the same bytes.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FractosError, NativeUnavailableError, errorCodeFromErrno } from '../../libfractos/errors.js';

interface ShmBinding {
  create(name: string, size: number): ArrayBuffer;
  open(name: string): ArrayBuffer;
  unlink(name: string): void;
  address(ab: ArrayBuffer): number;
}

let binding: ShmBinding | undefined;
let loadError: unknown;

function sourceDir(): string {
  // dist/native/shm -> native/shm, and native/shm when run from source.
  const here = dirname(fileURLToPath(import.meta.url));
  return here.includes(`${'/dist/'}`) ? join(here, '..', '..', '..', 'native', 'shm') : here;
}

/** Load the addon: $FRACTOS_NATIVE_DIR/fractos_shm.node first, then the build output. Throws NativeUnavailableError. */
export function loadShm(): ShmBinding {
  if (binding) return binding;
  if (loadError) throw new NativeUnavailableError('shm', loadError);
  const require = createRequire(import.meta.url);
  const candidates = [
    process.env.FRACTOS_NATIVE_DIR ? join(process.env.FRACTOS_NATIVE_DIR, 'fractos_shm.node') : '',
    join(sourceDir(), 'build', 'Release', 'fractos_shm.node'),
  ].filter(Boolean);
  for (const path of candidates) {
    try {
      binding = require(path) as ShmBinding;
      return binding;
    } catch (err) {
      loadError = err;
    }
  }
  throw new NativeUnavailableError('shm', loadError);
}

const NAME_RE = /^\/[A-Za-z0-9._-]{1,200}$/;

function check(name: string): void {
  if (!NAME_RE.test(name)) throw new FractosError('EINVAL', `bad shm region name '${name}'`);
}

function wrap(err: unknown): never {
  const e = err as { errno?: number; message?: string };
  if (typeof e.errno === 'number') throw new FractosError(errorCodeFromErrno(e.errno), e.message);
  throw err;
}

/** Create and map a new region of `size` bytes (zero-filled). Errors: EEXIST, EINVAL, ENOSPC, EPERM. */
export function shmCreate(name: string, size: number): ArrayBuffer {
  check(name);
  if (!Number.isSafeInteger(size) || size < 0) throw new FractosError('EINVAL', `bad region size ${size}`);
  try {
    return loadShm().create(name, size);
  } catch (err) {
    return wrap(err);
  }
}

/** Map an existing region whole. Errors: ENOENT, EINVAL, EPERM. */
export function shmOpen(name: string): ArrayBuffer {
  check(name);
  try {
    return loadShm().open(name);
  } catch (err) {
    return wrap(err);
  }
}

/** Remove a region's name; existing mappings stay valid until garbage-collected. */
export function shmUnlink(name: string): void {
  check(name);
  try {
    loadShm().unlink(name);
  } catch (err) {
    wrap(err);
  }
}

/** Address of a mapping (mod 2^53), for O_DIRECT alignment checks. */
export function shmAddress(ab: ArrayBuffer): number {
  return loadShm().address(ab);
}

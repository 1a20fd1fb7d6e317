#!/usr/bin/env node
// Builds every native addon (one folder with its own binding.gyp per addon) with node-gyp.
// fuse (libfuse3's low-level API, for `fractos mount`) is optional: without libfuse3-dev it
// fails to build and the mount command and its tests report ENODEV.
// An addon whose build fails is reported; the others still build. Exit status is non-zero
// only for addons marked required (all five: shm for the core, uring for the blockdev,
// gpu for the GPU adaptor, queue for the shared-memory queues and their tools, controller
// for the native Controller in controller/binding.gyp; the gpu addon builds without CUDA
// and reports ENODEV then).
// Compiler flags shared by all (C++20, -Wall -Wextra, NAPI_VERSION, -O2): native/common.gypi;
// warnings still print under --silent. Addons are loaded by native/loader.ts.
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const gyp = require.resolve('node-gyp/bin/node-gyp.js');
const required = new Set(['shm', 'uring', 'gpu', 'queue', 'controller']);
// --sanitize: build the named addons (default: controller) with AddressSanitizer and
// UBSan (no recovery) in a scratch copy, into <repo>/.sanitize/fractos_NAME.node, leaving
// the normal builds alone. Load them with FRACTOS_NATIVE_DIR=.sanitize and the runtimes
// preloaded (.ci/sanitize.sh does both).
const sanitize = process.argv.includes('--sanitize');
const only = process.argv.slice(2).filter((a) => a !== '--sanitize');
if (sanitize && only.length === 0) only.push('controller');
const repo = resolve(here, '..');
const SAN_FLAGS = '-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g';
// Build against the running Node's own headers (no download: the machine reaches only the
// npm registry). npm passes npm_config_nodedir; a plain `node native/build.mjs` finds them here.
const nodedir = process.env.npm_config_nodedir || resolve(process.execPath, '..', '..');
const gypArgs = existsSync(join(nodedir, 'include', 'node', 'node_api.h')) ? [`--nodedir=${nodedir}`] : [];
let failed = false;
// native/NAME for the addons, plus the native Controller in controller/ (its own binding.gyp).
const dirs = readdirSync(here).sort().map((name) => [name, join(here, name)]);
dirs.push(['controller', join(here, '..', 'controller')]);
for (const [name, dir] of dirs) {
  if (!existsSync(join(dir, 'binding.gyp'))) continue;
  if (only.length && !only.includes(name)) continue;
  process.stdout.write(`native: building ${name}${sanitize ? ' (sanitizers)' : ''}\n`);
  const r = sanitize ? buildSanitized(name, dir) : spawnSync(process.execPath, [gyp, 'rebuild', '--silent', ...gypArgs], { cwd: dir, stdio: 'inherit' });
  if (r.status !== 0) {
    process.stderr.write(`native: ${name} failed to build\n`);
    if (required.has(name)) failed = true;
  }
}
process.exit(failed ? 1 : 0);

/** Build `dir` with the sanitizers in a scratch copy; the addon lands in <repo>/.sanitize/. */
function buildSanitized(name, dir) {
  const scratch = mkdtempSync(join(tmpdir(), 'fractos-sanitize-'));
  try {
    const copy = join(scratch, relative(repo, dir));
    cpSync(dir, copy, { recursive: true, filter: (src) => !/[/\\]build$/.test(src) });
    mkdirSync(join(scratch, 'native'), { recursive: true });
    copyFileSync(join(here, 'common.gypi'), join(scratch, 'native', 'common.gypi'));
    cpSync(join(here, 'include'), join(scratch, 'native', 'include'), { recursive: true });
    const env = {
      ...process.env,
      CXXFLAGS: `${process.env.CXXFLAGS ?? ''} ${SAN_FLAGS}`,
      CFLAGS: `${process.env.CFLAGS ?? ''} ${SAN_FLAGS}`,
      LDFLAGS: `${process.env.LDFLAGS ?? ''} -fsanitize=address,undefined`,
      NODE_PATH: join(repo, 'node_modules'),
    };
    const r = spawnSync(process.execPath, [gyp, 'rebuild', '--silent', ...gypArgs], { cwd: copy, stdio: 'inherit', env });
    if (r.status === 0) {
      mkdirSync(join(repo, '.sanitize'), { recursive: true });
      copyFileSync(join(copy, 'build', 'Release', `fractos_${name}.node`), join(repo, '.sanitize', `fractos_${name}.node`));
    }
    return r;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

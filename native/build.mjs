#!/usr/bin/env node
// Builds every native addon (one folder with its own binding.gyp per addon) with node-gyp.
// fuse (libfuse3's low-level API, for `fractos mount`) is optional: without libfuse3-dev it
// fails to build and the mount command and its tests report ENODEV.
// An addon whose build fails is reported; the others still build. Exit status is non-zero
// only for addons marked required (all three: shm for the core, uring for the blockdev,
// gpu for the GPU adaptor; the gpu addon builds without CUDA and reports ENODEV then).
// Compiler flags shared by all (C++20, -Wall -Wextra, NAPI_VERSION, -O2): native/common.gypi;
// warnings still print under --silent. Addons are loaded by native/loader.ts.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const gyp = require.resolve('node-gyp/bin/node-gyp.js');
const required = new Set(['shm', 'uring', 'gpu']);
const only = process.argv.slice(2);
// Build against the running Node's own headers (no download: the machine reaches only the
// npm registry). npm passes npm_config_nodedir; a plain `node native/build.mjs` finds them here.
const nodedir = process.env.npm_config_nodedir || resolve(process.execPath, '..', '..');
const gypArgs = existsSync(join(nodedir, 'include', 'node', 'node_api.h')) ? [`--nodedir=${nodedir}`] : [];
let failed = false;
for (const name of readdirSync(here).sort()) {
  const dir = join(here, name);
  if (!existsSync(join(dir, 'binding.gyp'))) continue;
  if (only.length && !only.includes(name)) continue;
  process.stdout.write(`native: building ${name}\n`);
  const r = spawnSync(process.execPath, [gyp, 'rebuild', '--silent', ...gypArgs], { cwd: dir, stdio: 'inherit' });
  if (r.status !== 0) {
    process.stderr.write(`native: ${name} failed to build\n`);
    if (required.has(name)) failed = true;
  }
}
process.exit(failed ? 1 : 0);

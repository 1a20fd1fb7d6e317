#!/usr/bin/env node
// Builds every native addon (one folder with its own binding.gyp per addon) with node-gyp.
// An addon whose build fails is reported; the others still build. Exit status is non-zero
// only for addons marked required (shm: the core cannot run without shared Memory).
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const gyp = require.resolve('node-gyp/bin/node-gyp.js');
const required = new Set(['shm', 'uring', 'gpu']);
const only = process.argv.slice(2);
let failed = false;
for (const name of readdirSync(here).sort()) {
  const dir = join(here, name);
  if (!existsSync(join(dir, 'binding.gyp'))) continue;
  if (only.length && !only.includes(name)) continue;
  process.stdout.write(`native: building ${name}\n`);
  const r = spawnSync(process.execPath, [gyp, 'rebuild', '--silent'], { cwd: dir, stdio: 'inherit' });
  if (r.status !== 0) {
    process.stderr.write(`native: ${name} failed to build\n`);
    if (required.has(name)) failed = true;
  }
}
process.exit(failed ? 1 : 0);

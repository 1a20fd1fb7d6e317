#!/usr/bin/env node
// gyp action: compile kernels/lbp.cu to PTX for compute_90 (JIT-compiled by the driver on
// H100/H200 and newer). Usage: node scripts/build-ptx.mjs <out.ptx>
// Without nvcc it writes an EMPTY out.ptx and says so: the cuda backend then reports
// ENODEV "no PTX". If nvcc exists but fails, the build fails (a real error in lbp.cu).
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import process from 'node:process';
import { cudaConfig } from './cuda-config.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, '..', 'build', 'Release', 'lbp.ptx'));
const src = join(here, '..', 'kernels', 'lbp.cu');
mkdirSync(dirname(out), { recursive: true });
const { nvcc } = cudaConfig();
if (!nvcc) {
  writeFileSync(out, '');
  process.stdout.write('gpu: nvcc not found, cuda backend will report ENODEV (no PTX)\n');
  process.exit(0);
}
const args = ['-ptx', '-arch=compute_90', '-fmad=false', '-std=c++17', '-O3', '-o', out, src];
const r = spawnSync(nvcc, args, { stdio: 'inherit' });
if (r.status !== 0) {
  process.stderr.write(`gpu: ${nvcc} ${args.join(' ')} failed\n`);
  process.exit(1);
}

#!/usr/bin/env node
// Build-time CUDA discovery for binding.gyp (no linking: libcuda is dlopen'ed at run time).
//   node scripts/cuda-config.mjs include   -> the toolkit include dir holding cuda.h, or nothing
//   node scripts/cuda-config.mjs defines   -> FRACTOS_HAVE_CUDA_H=1 when cuda.h exists, or nothing
//   node scripts/cuda-config.mjs nvcc      -> path of nvcc, or nothing
// Search order: $CUDA_HOME, $CUDA_PATH, the directory of `nvcc` on PATH, /usr/local/cuda.
import { existsSync } from 'node:fs';
import process from 'node:process';
import { dirname, join, delimiter } from 'node:path';

function findNvcc() {
  for (const root of [process.env.CUDA_HOME, process.env.CUDA_PATH]) {
    if (root && existsSync(join(root, 'bin', 'nvcc'))) return join(root, 'bin', 'nvcc');
  }
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, 'nvcc'))) return join(dir, 'nvcc');
  }
  return existsSync('/usr/local/cuda/bin/nvcc') ? '/usr/local/cuda/bin/nvcc' : '';
}

export function cudaConfig() {
  const roots = [process.env.CUDA_HOME, process.env.CUDA_PATH];
  const nvcc = findNvcc();
  if (nvcc) roots.push(dirname(dirname(nvcc)));
  roots.push('/usr/local/cuda');
  const include = roots.filter(Boolean).map((r) => join(r, 'include')).find((d) => existsSync(join(d, 'cuda.h'))) ?? '';
  return { include, nvcc };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const c = cudaConfig();
  const what = process.argv[2];
  if (what === 'include' && c.include) process.stdout.write(`${c.include}\n`);
  else if (what === 'defines' && c.include) process.stdout.write('FRACTOS_HAVE_CUDA_H=1\n');
  else if (what === 'nvcc' && c.nvcc) process.stdout.write(`${c.nvcc}\n`);
}

/**
 * The C++ unit tests of the native Controller core (controller/src/test/core_test.cc): wire
 * goldens (the bytes of test/protocol.test.ts), the cid table (wrap at 2^32, ENOSPC, stale
 * cids), the fixed order of resolve, and the core behind a recording host (credits, error
 * order, cleanup). Built here with g++ under AddressSanitizer and UBSan (leaks included),
 * one compiler per CPU at a time, then run; skipped with the reason when no g++ is
 * installed. Also the host's fds beside frames (controller/src/test/host_fd_test.cc: the real
 * host around a test core, a raw unix client).
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from './helpers/spawn.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const src = join(root, 'controller', 'src');
const hasGxx = spawnSync('g++', ['--version']).status === 0;
const FLAGS = ['-std=c++20', '-Wall', '-Wextra', '-Werror', '-O0', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=undefined', `-I${join(root, 'native', 'include')}`];

const COMPILE_BOUND_MS = 600_000;

/** Compilers running now in this file, at most one per CPU (both tests together). */
const CPUS = Math.max(1, availableParallelism());
let running = 0;
const waiting: (() => void)[] = [];

async function gxx(args: string[]): Promise<{ status: number | null; stderr: string }> {
  while (running >= CPUS) await new Promise<void>((r) => waiting.push(r));
  running++;
  try {
    return await new Promise((resolve) => {
      const p = spawn('g++', args, { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      p.on('close', (status) => resolve({ status, stderr }));
    });
  } finally {
    running--;
    waiting.shift()?.();
  }
}

/** Compile `sources` (one compiler per CPU at a time), link them with `libs`, run the binary; every step asserted. */
async function buildAndRun(t: import('ava').ExecutionContext, sources: string[], name: string, libs: string[] = []): Promise<void> {
  const dir = tempDir();
  const objs = sources.map((s) => join(dir, basename(s, '.cc') + '.o'));
  // At most one compiler per CPU (gxx): a dozen at once starved the other test files' timers.
  const built = await Promise.all(sources.map((src, i) => gxx([...FLAGS, '-c', src, '-o', objs[i]!])));
  for (const b of built) t.is(b.status, 0, b.stderr);
  const exe = join(dir, name);
  const link = await gxx([...FLAGS, '-o', exe, ...objs, ...libs]);
  t.is(link.status, 0, link.stderr);
  const run = spawnSync(exe, [], { encoding: 'utf8', timeout: 60_000 });
  t.log(run.stdout.trim());
  t.is(run.status, 0, run.stderr + run.stdout);
}

(hasGxx ? test : test.skip)('native core: C++ unit tests (wire goldens, cid table, resolve order, credits) pass under ASan/UBSan', async (t) => {
  // ~30 s of compiling on an idle 2-core machine (the core's sources: 45 CPU-s): CPU work
  // that stretches with the load; over 5 min with a 10 % share of the CPUs. A hang bound only.
  t.timeout(COMPILE_BOUND_MS);
  // The core's sources: every src/*.cc that is not the host's (host_*.cc need N-API).
  const sources = readdirSync(src).filter((f) => f.endsWith('.cc') && !f.startsWith('host')).map((f) => join(src, f));
  sources.push(join(src, 'test', 'core_test.cc'));
  await buildAndRun(t, sources, 'core_test');
});

(hasGxx ? test : test.skip)('native host: fds beside frames (takeFd, sendWithFds, 8-fd bound, fds queued behind a backlog) pass under ASan/UBSan', async (t) => {
  t.timeout(COMPILE_BOUND_MS);
  // The real host (loop, conns, peers, queues; not the N-API addon) around the test core of host_fd_test.cc.
  const sources = ['host_loop.cc', 'host_conns.cc', 'host_peers.cc', 'host_queue.cc'].map((f) => join(src, f));
  sources.push(join(src, 'test', 'host_fd_test.cc'));
  await buildAndRun(t, sources, 'host_fd_test', ['-lcrypto', '-lpthread']);
});

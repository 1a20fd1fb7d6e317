// The queue library's C++ tests (native/queue/src/ring_test.cc: round trip, wrap-around,
// full ring, hostile producer and consumer, a producer killed -9 mid-write, seals, SCM_RIGHTS,
// idle CPU, the spinner budget: bounds, hostile holders, processes racing for slots), run as built by node-gyp and rebuilt with -fsanitize=address,undefined, plus the
// seeded random driver of the decoder's fuzz target for a fixed time (FRACTOS_FUZZ_SEED,
// default 1; `random` draws one; FRACTOS_QUEUE_FUZZ_MS, default 2000).
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { queueToolPath } from '../native/queue/index.js';
import { REPO_ROOT, removeTempDir, tempDir } from './helpers/spawn.js';

const SRC = join(REPO_ROOT, 'native', 'queue', 'src');
const SEED_ENV = process.env.FRACTOS_FUZZ_SEED ?? '1';
const SEED = SEED_ENV === 'random' ? randomBytes(4).readUInt32LE(0) : Number(SEED_ENV) >>> 0;
const FUZZ_S = Number(process.env.FRACTOS_QUEUE_FUZZ_MS ?? 2000) / 1000;

let plain = '';
let plainReason = '';
try {
  plain = queueToolPath('ring_test');
  if (!existsSync(plain)) plainReason = `${plain} not built (node native/build.mjs queue)`;
} catch (e) {
  plainReason = `queue addon unavailable: ${(e as Error).message}`;
}

/** Build ring_test with ASan+UBSan into a temp dir; '' and a reason when the toolchain cannot. */
function buildSanitized(): { bin: string; dir: string; reason: string } {
  const dir = tempDir('fractos-queue-asan-');
  const bin = join(dir, 'ring_test_asan');
  const cxx = process.env.CXX ?? 'g++';
  const r = spawnSync(cxx, ['-std=c++20', '-O1', '-g', '-Wall', '-Wextra', '-fsanitize=address,undefined',
    '-fno-sanitize-recover=all', '-fno-omit-frame-pointer', join(SRC, 'ring_test.cc'), '-o', bin], { encoding: 'utf8' });
  if (r.error) return { bin: '', dir, reason: `${cxx}: ${r.error.message}` };
  if (r.status !== 0) return { bin: '', dir, reason: `${cxx} -fsanitize=address,undefined failed: ${r.stderr.slice(0, 400)}` };
  return { bin, dir, reason: '' };
}
const asan = buildSanitized();
test.after.always(() => removeTempDir(asan.dir));

const ASAN_ENV = { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' };

function runAll(t: import('ava').ExecutionContext, bin: string, env?: NodeJS.ProcessEnv): void {
  const r = spawnSync(bin, ['all'], { encoding: 'utf8', env, timeout: 60_000 });
  t.log(r.stdout.trim());
  if (r.stderr.trim()) t.log(r.stderr.trim());
  t.is(r.status, 0, `ring_test exited ${r.status} (signal ${r.signal})`);
  t.notRegex(r.stderr, /runtime error|AddressSanitizer|LeakSanitizer/);
  t.notRegex(r.stdout, /^not ok/m);
  for (const name of ['roundtrip', 'wrap', 'full_backpressure', 'hostile_consumer', 'hostile_producer_side', 'cross_process_futex',
    'cross_process_eventfd', 'killed_mid_write', 'seals', 'scm_rights', 'idle_cpu', 'budget_basic', 'budget_hostile', 'budget_bound']) {
    t.regex(r.stdout, new RegExp(`^ok ${name}$`, 'm'));
  }
}

(plainReason ? test.skip : test)('ring library tests (node-gyp build)', (t) => {
  runAll(t, plain);
});

(asan.reason ? test.skip : test)('ring library tests under AddressSanitizer + UBSan', (t) => {
  runAll(t, asan.bin, ASAN_ENV);
});
if (asan.reason) console.log(`queue-ring: sanitizer tests skipped: ${asan.reason}`);

(asan.reason ? test.skip : test)(`decoder fuzz, seeded (seed ${SEED}, ${FUZZ_S} s, ASan+UBSan)`, (t) => {
  t.log(`reproduce: FRACTOS_FUZZ_SEED=${SEED} npx ava dist/test/queue-ring.test.js`);
  const out = execFileSync(asan.bin, ['fuzz', String(FUZZ_S), String(SEED)], { encoding: 'utf8', env: ASAN_ENV, timeout: 60_000 + FUZZ_S * 1000 });
  t.log(out.trim());
  t.regex(out, /no failure/);
});

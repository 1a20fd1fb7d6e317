/**
 * Issue #7 item 4: what a command or a test creates for itself is removed when it ends
 * (exit, Ctrl-C = SIGINT, SIGTERM), its child processes included; `fractos demo`
 * interrupted mid-way leaves nothing in the repository nor in the temp folder.
 */
import test from 'ava';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { isOrlDir, datasetForTests } from '../facever-app/dataset.js';
import { deviceDir } from './helpers/devices.js';
import { alive, run, until } from './helpers/cli.js';
import { FRACTOS_BIN, REPO_ROOT, removeTempDir, tempDir } from './helpers/spawn.js';

const SCRATCH = join(REPO_ROOT, 'dist', 'testbed', 'scratch.js');

// A script that makes a tempDir with a file in it and a tracked child (sleeping), prints
// both, then either exits by itself or waits for a signal.
const SCRIPT = `
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
const { tempDir, trackChild, cleanupOnSignals, sweepOnTermination } = await import(process.argv[2]);
const mode = process.argv[3];
if (mode === 'signal') cleanupOnSignals('scratch-test');
if (mode === 'sweep') sweepOnTermination();
const dir = tempDir('fractos-scratch-test-');
writeFileSync(join(dir, 'disk.img'), 'x');
const kid = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
trackChild(kid);
console.log('dir ' + dir + ' kid ' + kid.pid);
if (mode === 'exit') setTimeout(() => process.exit(3), 100);
else setInterval(() => {}, 1000);
`;

for (const mode of ['exit', 'SIGINT', 'SIGTERM', 'sweep'] as const) {
  const what = mode === 'exit' ? 'process.exit' : mode === 'sweep' ? 'SIGTERM to a test worker (sweepOnTermination, as ava stops a held worker)' : `${mode} (cleanupOnSignals)`;
  test(`testbed scratch: tempDir and tracked children are gone after ${what}`, async (t) => {
    const home = tempDir('fractos-scratch-home-');
    t.teardown(() => removeTempDir(home));
    const script = join(home, 'script.mjs');
    writeFileSync(script, SCRIPT);
    const r = run([script, SCRATCH, mode === 'exit' || mode === 'sweep' ? mode : 'signal']);
    const m = await r.waitFor(/^dir (\S+) kid (\d+)$/m, 20_000);
    const [dir, kid] = [m[1]!, Number(m[2])];
    t.true(existsSync(join(dir, 'disk.img')));
    t.true(alive(kid));
    if (mode !== 'exit') r.child.kill(mode === 'sweep' ? 'SIGTERM' : mode);
    const e = await r.exit;
    t.deepEqual(e, { code: mode === 'exit' ? 3 : mode === 'SIGINT' ? 130 : 143, signal: null }, r.out());
    t.false(existsSync(dir), `${dir} left behind`);
    t.true(await until(() => !alive(kid)), `child ${kid} still running`);
    if (mode === 'SIGINT' || mode === 'SIGTERM') t.regex(r.out(), new RegExp(`scratch-test: interrupted by ${mode}; scratch removed`));
  });
}

const dataset = datasetForTests();
const devices = await deviceDir('fractos-scratch', 'field-cli-scratch.test');
const demoSkip = devices.reason || (isOrlDir(dataset) ? '' : `no ORL faces at ${dataset}`);
const demoTest = demoSkip ? test.skip : test;

demoTest(`fractos demo interrupted by SIGINT mid-way: services stopped, no scratch left (in TMPDIR nor the repository)${demoSkip ? ` [skipped: ${demoSkip}]` : ''}`, async (t) => {
  // The demo's scratch goes under os.tmpdir(): point it at a fresh folder that must end empty.
  const tmp = tempDir('fractos-demo-tmp-', devices.dir);
  t.teardown(() => removeTempDir(tmp));
  const stateBefore = existsSync(join(REPO_ROOT, '.state')) ? readdirSync(join(REPO_ROOT, '.state')) : [];
  const r = run([FRACTOS_BIN, 'demo', '--backend', 'cpu'], { TMPDIR: tmp, FRACTOS_DATASET: dataset });
  t.teardown(() => {
    r.child.kill('SIGKILL');
  });
  // Mid-way: the services are up (the blockdev's ready line names its disk file).
  await r.waitFor(/^ {2}gpu\s+pid \d+/m);
  const scratch = dirname((await r.waitFor(/ready blockdev .*device=(\S+)/))[1]!);
  t.true(existsSync(join(scratch, 'disk.img')), 'the sparse disk is in the scratch folder');
  const pids = [...r.out().matchAll(/^ {2}\S+\s+pid (\d+)/gm)].map((x) => Number(x[1]));
  t.is(pids.length, 4, r.out());
  r.child.kill('SIGINT');
  const e = await r.exit;
  t.deepEqual(e, { code: 130, signal: null }, r.out());
  t.regex(r.out(), /fractos demo: interrupted by SIGINT; scratch removed/);
  t.false(existsSync(scratch), `${scratch} left behind`);
  t.true(scratch.startsWith(tmp), `scratch ${scratch} not under TMPDIR ${tmp}`);
  t.deepEqual(readdirSync(tmp), [], 'nothing left in TMPDIR');
  for (const pid of pids) t.true(await until(() => !alive(pid)), `service pid ${pid} still running`);
  const stateAfter = existsSync(join(REPO_ROOT, '.state')) ? readdirSync(join(REPO_ROOT, '.state')) : [];
  t.deepEqual(stateAfter, stateBefore, 'nothing new under .state/ in the repository');
});

const fioTest = devices.reason ? test.skip : test;

fioTest(`fractos fio interrupted by SIGINT while running: stack stopped, no /tmp/fractos-* left, the user's --device kept${devices.reason ? ` [skipped: ${devices.reason}]` : ''}`, async (t) => {
  const tmp = tempDir('fractos-fio-tmp-', devices.dir);
  t.teardown(() => removeTempDir(tmp));
  const device = devices.devFile(1 << 30);
  const r = run([FRACTOS_BIN, 'fio', join(REPO_ROOT, 'fio-profiles', 'randread-4k-qd1.fio'), '--target', 'blockdev', '--device', device, '--runtime', '30'], { TMPDIR: tmp });
  t.teardown(() => {
    r.child.kill('SIGKILL');
  });
  await r.waitFor(/fio: running randread-4k-qd1.fio on target blockdev/);
  t.not(readdirSync(tmp).length, 0, 'the stack keeps its sockets and state under TMPDIR');
  r.child.kill('SIGINT');
  t.deepEqual(await r.exit, { code: 130, signal: null }, r.out());
  t.regex(r.out(), /fractos fio: interrupted by SIGINT; scratch removed/);
  t.deepEqual(readdirSync(tmp), [], 'nothing left in TMPDIR');
  t.true(existsSync(device), 'the --device the user gave is kept');
});

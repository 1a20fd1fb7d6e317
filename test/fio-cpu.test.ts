/** CPU per I/O of a fio run (bench/fio/cpu.ts): /proc sampling, fio's JSON fields, the record. */
import test from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { CpuMeter, cpuPerIo, cpuRecord, fioJsonCpuNs, formatCpuPerIo, procCpuNs, totalIos, type FioReport } from '../bench/fio/index.js';

test('procCpuNs: this process and a busy child grow; a gone pid is null', async (t) => {
  t.timeout(120_000);
  // CPU time, not wall time: a loaded machine gives less CPU per wall second.
  const self0 = procCpuNs(0)!;
  const c0 = process.cpuUsage();
  for (let u = process.cpuUsage(c0); u.user + u.system < 30_000; u = process.cpuUsage(c0)); // burn 30 ms of CPU
  t.true(procCpuNs(process.pid)! - self0 >= 30e6);
  // A child spinning for ~300 ms of its own CPU time: its stat counts all of it (10 ms ticks).
  const child = spawn(process.execPath, ['-e', 'const t=process.cpuUsage();while(process.cpuUsage(t).user<300000);setInterval(()=>{},1000)'], { stdio: 'ignore' });
  try {
    const meter = CpuMeter.start([{ name: 'child', pid: child.pid! }, { name: 'self', pid: 0 }]);
    let share = 0;
    // Its 300 ms of CPU may take many seconds of wall time on a loaded machine: wait for it.
    for (let i = 0; i < 4000 && share < 250e6; i++) {
      await new Promise((r) => setTimeout(r, 25));
      share = meter.stop()[0]!.cpuNs!;
    }
    t.true(share >= 250e6, `child share ${share} ns`);
  } finally {
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
  t.is(procCpuNs(child.pid!), null);
  t.is(CpuMeter.start([{ name: 'gone', pid: child.pid! }]).stop()[0]!.cpuNs, null);
});

test('fioJsonCpuNs: usr_cpu + sys_cpu percent of job_runtime, summed over clones; null when missing', (t) => {
  t.is(fioJsonCpuNs({ jobs: [{ usr_cpu: 10, sys_cpu: 40, job_runtime: 2000 }, { usr_cpu: 5, sys_cpu: 5, job_runtime: 1000 }] }), 1e9 + 0.1e9);
  t.is(fioJsonCpuNs({ jobs: [{ usr_cpu: 10, job_runtime: 2000 }] }), null);
  t.is(fioJsonCpuNs({ jobs: [] }), null);
  t.is(fioJsonCpuNs(null), null);
});

test('cpuPerIo and cpuRecord: sum of the readable shares per I/O, fio as the baseline', (t) => {
  const report = { version: 'x', timestampMs: 0, jobs: [{ read: { totalIos: 700 }, write: { totalIos: 300 } }] } as unknown as FioReport;
  t.is(totalIos(report), 1000);
  const c = cpuPerIo([{ name: 'controller', pid: 1, cpuNs: 6e6 }, { name: 'fs', pid: 2, cpuNs: null }, { name: 'client', pid: 0, cpuNs: 4e6 }], 1000, 1.5, { cpuNs: 2e6, ios: 1000 });
  t.is(c.totalNs, 10e6);
  t.is(c.perIoNs, 10_000);
  t.is(c.fioPerIoNs, 2000);
  t.deepEqual(cpuRecord(c, { profile: 'p', target: 'dax' }), {
    bench: 'fio', metric: 'cpu_per_io_ns', value: 10_000, unit: 'ns', baseline: 2000, ratio: 5,
    params: { profile: 'p', target: 'dax', direction: 'all', ns_controller: 6000, ns_client: 4000, ios: 1000, loadAvg: 1.5 },
  });
  t.regex(formatCpuPerIo(c), /^cpu per I\/O: 10\.0 us \(controller 6\.00, fs \?, client 4\.00; 1000 I\/Os\), real fio 2\.00 us \(5\.00x\); load 1\.50\n$/);
  // No baseline: no record; no I/O: 0 per I/O.
  t.is(cpuRecord(cpuPerIo([], 0, 0), { profile: 'p', target: 'dax' }), null);
  t.is(cpuPerIo([{ name: 'a', pid: 1, cpuNs: 5 }], 0, 0).perIoNs, 0);
});

import test from 'ava';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FractosError } from '../libfractos/errors.js';
import {
  FileTarget,
  LatencyHistogram,
  bucketIndex,
  bucketValue,
  buildDirStats,
  compareRecords,
  emptyDirStats,
  formatCompareTable,
  formatTextReport,
  hasRealFio,
  loadJobFile,
  overrideJobText,
  parseFioJson,
  parseJobFile,
  parseSize,
  parseTimeMs,
  percentileOf,
  runJob,
  runRealFio,
  toFioJson,
  type FioJob,
  type FioReport,
  type IoTarget,
  type JobStats,
} from '../bench/fio/index.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url)); // dist/test -> repo root
const PROFILES = join(ROOT, 'fio-profiles');
const FIO_OK = await hasRealFio();
const fioTest = FIO_OK ? test : test.skip;
const FIO_NOTE = FIO_OK ? '' : ' (skipped: real fio not installed)';

async function tmp(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'fractos-fio-test-'));
}

function job(text: string): FioJob {
  return parseJobFile(text, { file: 't.fio' })[0]!;
}

function errOf(fn: () => unknown): FractosError {
  try {
    fn();
  } catch (e) {
    if (e instanceof FractosError) return e;
    throw e;
  }
  throw new Error('did not throw');
}

// ------------------------------------------------------------------ job files

test('job file: [global] inheritance, overrides, later [global] only affects later jobs', (t) => {
  const jobs = parseJobFile(
    [
      '; comment',
      '# another',
      '[global]',
      'bs = 8k',
      'iodepth=4',
      'size=1m',
      'ioengine=io_uring',
      'direct=1',
      '',
      '[a]',
      'rw=randread  ; trailing comment',
      '[b]',
      'rw=randrw',
      'rwmixwrite=30',
      'bs=16k',
      'numjobs=2',
      '[global]',
      'iodepth=32',
      '[c]',
      'readwrite=write',
      'runtime=500ms',
      'time_based',
      'name=cee',
    ].join('\n'),
    { file: 'x.fio' },
  );
  t.is(jobs.length, 3);
  const [a, b, c] = jobs as [FioJob, FioJob, FioJob];
  t.like(a, { name: 'a', rw: 'randread', bs: 8192, iodepth: 4, size: 1048576, numjobs: 1, direct: true, ioengine: 'io_uring' });
  t.deepEqual(a.source, { file: 'x.fio', line: 10 });
  t.like(b, { name: 'b', rw: 'randrw', bs: 16384, iodepth: 4, rwmixread: 70, numjobs: 2, timeBased: false });
  t.like(c, { name: 'cee', rw: 'write', bs: 8192, iodepth: 32, runtimeMs: 500, timeBased: true });
  t.deepEqual(a.jobOptions, { rw: 'randread' });
  t.is(a.globalOptions['bs'], '8k');
  t.is(a.runtimeMs, undefined);
});

test('job file: defaults, --device and runtime overrides', (t) => {
  const j = parseJobFile('[x]\n', { device: '/dev/null0', runtimeMs: 1234 })[0]!;
  t.like(j, { rw: 'read', bs: 4096, iodepth: 1, numjobs: 1, rwmixread: 50, direct: false, filename: '/dev/null0', runtimeMs: 1234 });
  t.is(j.size, undefined);
  t.is(job('[x]\nfilename=/tmp/a\n').filename, '/tmp/a');
});

test('sizes and times: fio suffixes and kb_base', (t) => {
  t.is(parseSize('4096'), 4096);
  t.is(parseSize('4k'), 4096);
  t.is(parseSize('4K'), 4096);
  t.is(parseSize('4kb'), 4096);
  t.is(parseSize('256m'), 256 * 1048576);
  t.is(parseSize('1g'), 1073741824);
  t.is(parseSize('1t'), 1099511627776);
  t.is(parseSize('1.5k'), 1536);
  t.is(parseSize('0x1000'), 4096);
  t.is(parseSize('512b'), 512);
  // fio's compatibility mode (kb_base=1024): IEC suffixes are powers of 10.
  t.is(parseSize('1MiB'), 1_000_000);
  t.is(parseSize('1KiB'), 1000);
  // kb_base=1000: SI suffixes are powers of 10, IEC ones powers of 2.
  t.is(parseSize('1m', 1000), 1_000_000);
  t.is(parseSize('1MiB', 1000), 1048576);
  t.is(job('[global]\nkb_base=1000\n[x]\nbs=4k\nsize=4KiB\n').bs, 4000);
  t.is(job('[x]\nsize=4KiB\nkb_base=1000\n').size, 4096);
  t.is(parseTimeMs('10'), 10_000);
  t.is(parseTimeMs('10s'), 10_000);
  t.is(parseTimeMs('500ms'), 500);
  t.is(parseTimeMs('2m'), 120_000);
  t.is(parseTimeMs('1h'), 3_600_000);
  t.is(parseTimeMs('250us'), 0.25);
  t.is(errOf(() => parseSize('4q')).code, 'EINVAL');
  t.is(errOf(() => parseSize('50%')).code, 'ENOTSUP');
  t.is(errOf(() => parseTimeMs('3 weeks')).code, 'EINVAL');
});

test('job file: unsupported key is ENOTSUP with file:line and the supported list', (t) => {
  const e = errOf(() => parseJobFile('[global]\nbs=4k\n\n[j]\nrw=read\nverify=crc32c\n', { file: 'p.fio' }));
  t.is(e.code, 'ENOTSUP');
  t.regex(e.message, /fio key 'verify' \(p\.fio:6\) is not supported by fractos fio; supported: name, rw, /);
  t.is(errOf(() => job('[x]\nrw=trim\n')).code, 'ENOTSUP');
  t.is(errOf(() => job('[x]\nrw=randread:8\n')).code, 'ENOTSUP');
  t.is(errOf(() => job('[x]\nbs=4k,8k\n')).code, 'ENOTSUP');
});

test('job file: malformed lines and values are EINVAL with file:line', (t) => {
  const cases: [string, RegExp][] = [
    ['[x]\nbs 4k\n', /t\.fio:2/],
    ['[x\nbs=4k\n', /t\.fio:1/],
    ['bs=4k\n[x]\n', /before any \[section\].*t\.fio:1/],
    ['[x]\nrw=sideways\n', /bad rw value 'sideways' \(t\.fio:2\)/],
    ['[x]\nbs=abc\n', /t\.fio:2/],
    ['[x]\niodepth=0\n', /t\.fio:2/],
    ['[x]\nrwmixread=120\n', /t\.fio:2/],
    ['[x]\nsize=\n', /needs a value \(t\.fio:2\)/],
    ['[x]\ndirect=maybe\n', /t\.fio:2/],
    ['[x]\ntime_based\n', /time_based but has no runtime/],
    ['[x]\nbs=8k\nsize=4k\n', /smaller than bs/],
    ['; only comments\n[global]\nbs=4k\n', /no job section/],
  ];
  for (const [text, re] of cases) {
    const e = errOf(() => job(text));
    t.is(e.code, 'EINVAL', text);
    t.regex(e.message, re, text);
  }
});

test('every profile in fio-profiles parses, with the figures its name says', async (t) => {
  const files = (await readdir(PROFILES)).filter((f) => f.endsWith('.fio'));
  t.true(files.length >= 7);
  for (const f of files) {
    const jobs = await loadJobFile(join(PROFILES, f), { device: '/tmp/x.img' });
    t.is(jobs.length, 1, f);
    const j = jobs[0]!;
    const m = /^(randread|randwrite|seqread|seqwrite|randrw-(\d+)-(\d+))-(\d+[km])-qd(\d+)\.fio$/.exec(f);
    t.truthy(m, f);
    const rw = m![1]!.startsWith('randrw') ? 'randrw' : m![1] === 'seqread' ? 'read' : m![1] === 'seqwrite' ? 'write' : m![1];
    t.is(j.rw, rw as FioJob['rw'], f);
    t.is(j.bs, parseSize(m![4]!), f);
    t.is(j.iodepth, Number(m![5]), f);
    if (m![2]) t.is(j.rwmixread, Number(m![2]), f);
    t.like(j, { timeBased: true, runtimeMs: 10_000, size: 256 * 1048576, direct: true, ioengine: 'io_uring', filename: '/tmp/x.img' });
  }
  await t.throwsAsync(loadJobFile(join(PROFILES, 'nope.fio')), { instanceOf: FractosError, message: /ENOENT/ });
});

// ------------------------------------------------------------------ workload

/** Wraps a target: counts in-flight ops and records offsets / directions. */
class Probe implements IoTarget {
  inflight = 0;
  maxInflight = 0;
  reads = 0;
  writes = 0;
  readonly offsets: number[] = [];
  constructor(private readonly inner: IoTarget) {}
  get size(): number {
    return this.inner.size;
  }
  private wrap(offset: number, cb: (err: Error | null) => void): (err: Error | null) => void {
    this.offsets.push(offset);
    if (++this.inflight > this.maxInflight) this.maxInflight = this.inflight;
    return (err) => {
      this.inflight--;
      cb(err);
    };
  }
  read(offset: number, length: number, cb: (err: Error | null) => void): void {
    this.reads++;
    this.inner.read(offset, length, this.wrap(offset, cb));
  }
  write(offset: number, length: number, cb: (err: Error | null) => void): void {
    this.writes++;
    this.inner.write(offset, length, this.wrap(offset, cb));
  }
}

/** In-memory target completing synchronously or on setImmediate. */
class MemTarget implements IoTarget {
  constructor(
    readonly size: number,
    private readonly sync: boolean,
  ) {}
  read(_o: number, _l: number, cb: (err: Error | null) => void): void {
    if (this.sync) cb(null);
    else setImmediate(cb, null);
  }
  write(o: number, l: number, cb: (err: Error | null) => void): void {
    this.read(o, l, cb);
  }
}

test('workload: random reads on a FileTarget, aligned, in range, iodepth respected', async (t) => {
  const dir = await tmp();
  const ft = await FileTarget.open(join(dir, 'f.img'), { size: 4 << 20, layout: true });
  try {
    t.true((await stat(join(dir, 'f.img'))).blocks * 512 >= 4 << 20, 'laid out, not sparse');
    const probe = new Probe(ft);
    const st = await runJob(job('[r]\nrw=randread\nbs=4k\nsize=2m\niodepth=8\n'), probe);
    t.is(st.read.totalIos, 512);
    t.is(st.read.ioBytes, 2 << 20);
    t.is(st.write.totalIos, 0);
    t.is(probe.reads, 512);
    t.true(probe.maxInflight <= 8, `max in flight ${probe.maxInflight}`);
    t.true(probe.maxInflight >= 2, 'ops overlap');
    t.true(probe.offsets.every((o) => o % 4096 === 0 && o >= 0 && o + 4096 <= 2 << 20));
    t.true(new Set(probe.offsets).size > 300, 'offsets look random');
    t.true(probe.offsets.some((o, i) => i > 0 && o < probe.offsets[i - 1]!), 'not sequential');
    t.is(st.read.clat.n, 512);
    t.true(st.read.clat.minNs > 0 && st.read.clat.maxNs >= st.read.clat.minNs);
    t.true(st.read.iops > 0 && st.read.runtimeMs > 0);
  } finally {
    await ft.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('workload: sequential writes on a FileTarget advance by bs and wrap (time_based)', async (t) => {
  const dir = await tmp();
  const ft = await FileTarget.open(join(dir, 'f.img'), { size: 1 << 20 });
  try {
    // The wrap: time_based keeps writing past `size` until stopped. The runtime is a liveness
    // bound here; the job is stopped (signal) once 10 writes were issued, whatever the load
    // (a loaded machine once did only 3 writes of 64 KiB in 400 ms).
    const probe = new Probe(ft);
    const stop = new AbortController();
    const counting: IoTarget = {
      size: probe.size,
      read: (o, l, cb) => probe.read(o, l, cb),
      write: (o, l, cb) => {
        if (probe.writes + 1 >= 10) stop.abort();
        probe.write(o, l, cb);
      },
    };
    const st = await runJob(job('[w]\nrw=write\nbs=64k\nsize=256k\niodepth=1\nruntime=60s\ntime_based\n'), counting, { signal: stop.signal });
    // 10 I/Os of 64 KiB over 256 KiB: the offsets wrapped twice
    t.is(st.write.totalIos, 10);
    t.is(st.read.totalIos, 0);
    t.is(probe.maxInflight, 1);
    probe.offsets.forEach((o, i) => t.is(o, (i % 4) * 65536));
    // The deadline: time_based runs until `runtime` even when `size` is done early.
    const probe2 = new Probe(ft);
    const timed = await runJob(job('[w]\nrw=write\nbs=64k\nsize=256k\niodepth=1\nruntime=400ms\ntime_based\n'), probe2);
    t.true(timed.write.runtimeMs >= 390, `runtime ${timed.write.runtimeMs}`);
    probe2.offsets.forEach((o, i) => t.is(o, (i % 4) * 65536));
  } finally {
    await ft.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('workload: randrw mix ratio close to rwmixread; numjobs multiplies in-flight', async (t) => {
  const dir = await tmp();
  const ft = await FileTarget.open(join(dir, 'f.img'), { size: 8 << 20 });
  try {
    const probe = new Probe(ft);
    const st = await runJob(job('[m]\nrw=randrw\nrwmixread=70\nbs=4k\nsize=8m\niodepth=4\nnumjobs=2\n'), probe);
    const total = st.read.totalIos + st.write.totalIos;
    t.is(total, 2 * 2048);
    const frac = st.read.totalIos / total;
    t.true(Math.abs(frac - 0.7) < 0.04, `read fraction ${frac}`);
    t.is(probe.reads, st.read.totalIos);
    t.true(probe.maxInflight <= 8 && probe.maxInflight > 4, `max in flight ${probe.maxInflight}`);
    t.is(st.numjobs, 2);
  } finally {
    await ft.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('workload: exactly iodepth in flight on an async target; sync targets do not recurse', async (t) => {
  const probe = new Probe(new MemTarget(1 << 30, false));
  const st = await runJob(job('[q]\nrw=randread\nbs=4k\nsize=4m\niodepth=32\n'), probe);
  t.is(probe.maxInflight, 32);
  t.is(st.read.totalIos, 1024);
  const sync = new Probe(new MemTarget(1 << 30, true));
  const s2 = await runJob(job('[s]\nrw=read\nbs=512\nsize=100m\niodepth=16\n'), sync);
  t.is(s2.read.totalIos, (100 << 20) / 512);
  t.is(sync.maxInflight, 1);
});

test('workload: progress callbacks, runtime override, errors and bounds', async (t) => {
  const seen: number[] = [];
  const st = await runJob(job('[p]\nrw=randread\nbs=4k\niodepth=4\nruntime=10\ntime_based\n'), new MemTarget(1 << 20, false), {
    runtimeMs: 600,
    progressIntervalMs: 50,
    onProgress: (p) => seen.push(p.iops),
  });
  t.true(st.read.runtimeMs < 3000);
  // ~12 expected; a loaded machine (the suite runs files in parallel) may starve the loop
  t.true(seen.length >= 2, `progress calls ${seen.length}`);
  t.true(seen.every((x) => x > 0));
  await t.throwsAsync(runJob(job('[b]\nsize=2m\n'), new MemTarget(1 << 20, true)), { message: /ERANGE/ });
  const failing: IoTarget = {
    size: 1 << 20,
    read: (_o, _l, cb) => setImmediate(cb, new Error('boom')),
    write: (_o, _l, cb) => cb(null),
  };
  const e = await t.throwsAsync(runJob(job('[e]\nrw=randread\niodepth=4\n'), failing));
  t.true(e instanceof FractosError);
  t.is((e as FractosError).code, 'EIO');
});

// ------------------------------------------------------------------ stats

test('histogram: fio bucket layout, exact small values, known percentiles', (t) => {
  for (let v = 0; v < 128; v++) t.is(bucketValue(bucketIndex(v)), v);
  t.is(bucketIndex(1000), 317);
  t.is(bucketValue(317), 1004);
  t.is(bucketValue(bucketIndex(181)), 181); // as a fio json+ bin key
  for (const v of [200, 4096, 123_456, 9_999_999, 3e9]) {
    const b = bucketValue(bucketIndex(v));
    t.true(Math.abs(b - v) / v <= 1 / 64, `${v} -> ${b}`);
    t.is(bucketIndex(b), bucketIndex(v)); // bucket values map back to their bucket
  }
  const h = new LatencyHistogram();
  for (let v = 1; v <= 100; v++) h.record(v);
  const [p1, p50, p90, p99, p9999] = h.percentiles([1, 50, 90, 99, 99.99]);
  t.deepEqual([p1, p50, p90, p99, p9999], [1, 50, 90, 99, 100]);
  t.is(h.n, 100);
  t.is(h.min, 1);
  t.is(h.max, 100);
  t.is(h.mean, 50.5);
  t.true(Math.abs(h.stddev - 29.011491975882016) < 1e-9);
  // 90 fast (10 µs) and 10 slow (1 ms) ops: p50 = 10 µs bucket, p95 = 1 ms bucket.
  const g = new LatencyHistogram();
  for (let i = 0; i < 90; i++) g.record(10_000);
  for (let i = 0; i < 10; i++) g.record(1_000_000);
  const c = buildDirStats(100 * 4096, 100, 1000, g).clat;
  t.is(percentileOf(c, 50), bucketValue(bucketIndex(10_000)));
  t.is(percentileOf(c, 90), bucketValue(bucketIndex(10_000)));
  t.is(percentileOf(c, 95), bucketValue(bucketIndex(1_000_000)));
  t.is(Object.keys(c.percentiles).length, 17);
  // merge == recording everything into one
  const m = new LatencyHistogram().merge(h).merge(g);
  const all = new LatencyHistogram();
  for (let v = 1; v <= 100; v++) all.record(v);
  for (let i = 0; i < 90; i++) all.record(10_000);
  for (let i = 0; i < 10; i++) all.record(1_000_000);
  t.deepEqual(m.percentiles(), all.percentiles());
  t.true(Math.abs(m.stddev - all.stddev) < 1e-6 && Math.abs(m.mean - all.mean) < 1e-9);
});

test('text report looks like fio', (t) => {
  const h = new LatencyHistogram();
  for (let i = 1; i <= 1000; i++) h.record(50_000 + i * 100);
  const r: FioReport = {
    version: 'fractos-fio',
    timestampMs: Date.now(),
    jobs: [
      {
        name: 'j',
        numjobs: 1,
        error: 0,
        jobRuntimeMs: 1000,
        options: {},
        globalOptions: {},
        read: buildDirStats(1000 * 4096, 1000, 1000, h),
        write: emptyDirStats(),
      },
    ],
  };
  const s = formatTextReport(r);
  t.regex(s, /read: IOPS=1000, BW=4000KiB\/s \(4096kB\/s\)\(4000KiB\/1000msec\)/);
  t.regex(s, /clat \(usec\): min=50, max=150, avg=100.05, stdev=28.88/);
  t.regex(s, /clat percentiles \(usec\):\n {5}\| {2}1\.00th=\[ {3}51\],/);
  t.notRegex(s, /write:/);
  t.regex(s, new RegExp(`pid=${process.pid}\\b`));
  // A job run by another process (real fio in --compare) shows that process's pid.
  r.jobs[0]!.pid = 4242;
  t.regex(formatTextReport(r), /pid=4242\b/);
});

// ------------------------------------------------------------------ real fio

fioTest(`fio JSON layout: our field names match real fio's${FIO_NOTE}`, async (t) => {
  const dir = await tmp();
  try {
    const jf = join(dir, 'j.fio');
    await writeFile(jf, '[global]\nioengine=psync\nsize=4m\nruntime=1\ntime_based\n[mix]\nrw=randrw\nrwmixread=60\nbs=4k\n');
    const real = await runRealFio(jf, { filename: join(dir, 'f.img'), runtimeMs: 1000, jsonPlus: false });
    const raw = real.raw as Record<string, unknown>;
    const rawJob = (raw['jobs'] as Record<string, unknown>[])[0]!;
    // 64 I/Os, not 300 ms: a loaded machine once did no write in 300 ms (no clat percentiles then)
    const jobs = parseJobFile('[global]\nsize=256k\n[mix]\nrw=randrw\nrwmixread=60\nbs=4k\n');
    const ft = await FileTarget.open(join(dir, 'f.img'), { size: 4 << 20 });
    let ours: FioReport;
    try {
      ours = { version: 'fractos-fio', timestampMs: Date.now(), jobs: [await runJob(jobs[0]!, ft)] };
    } finally {
      await ft.close();
    }
    const js = JSON.parse(JSON.stringify(toFioJson(ours))) as Record<string, unknown>;
    const ourJob = (js['jobs'] as Record<string, unknown>[])[0]!;
    const keys = (o: unknown): string[] => Object.keys(o as object).sort();
    const subset = (a: string[], b: string[], what: string): void => {
      const missing = a.filter((k) => !b.includes(k));
      t.deepEqual(missing, [], `${what}: not in real fio: ${missing.join(', ')}`);
    };
    subset(keys(js), keys(raw), 'top level');
    subset(keys(ourJob), keys(rawJob), 'job');
    for (const d of ['read', 'write']) {
      const o = ourJob[d] as Record<string, unknown>;
      const f = rawJob[d] as Record<string, unknown>;
      t.deepEqual(keys(o), keys(f), `${d} fields`);
      t.deepEqual(keys(o['clat_ns']), keys(f['clat_ns']), `${d}.clat_ns fields`);
      t.deepEqual(keys((o['clat_ns'] as Record<string, unknown>)['percentile']), keys((f['clat_ns'] as Record<string, unknown>)['percentile']));
      for (const k of ['slat_ns', 'lat_ns']) t.deepEqual(keys(o[k]), keys(f[k]), `${d}.${k}`);
      for (const k of keys(o)) t.is(typeof o[k], typeof f[k], `${d}.${k} type`);
    }
    t.deepEqual(keys(ourJob['trim']), keys(rawJob['trim']));
    // Our JSON parses back through the real-fio parser.
    const back = parseFioJson(js);
    t.is(back.jobs[0]!.read.totalIos, ours.jobs[0]!.read.totalIos);
    t.is(percentileOf(back.jobs[0]!.read.clat, 99), percentileOf(ours.jobs[0]!.read.clat, 99));
    t.is(real.report.version.startsWith('fio-'), true);
    t.true(real.report.jobs[0]!.read.totalIos > 0 && real.report.jobs[0]!.write.totalIos > 0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

fioTest(`real fio json+: our histogram reproduces fio's percentiles; clones merge exactly${FIO_NOTE}`, async (t) => {
  const dir = await tmp();
  try {
    const jf = join(dir, 'j.fio');
    await writeFile(jf, '[global]\nioengine=psync\nsize=4m\nruntime=10\ntime_based\nfilename=/nonexistent/x\n[r]\nrw=randread\nbs=4k\nnumjobs=2\n');
    const real = await runRealFio(jf, { filename: join(dir, 'f.img'), runtimeMs: 700 });
    t.regex(real.jobText, /\[r\]\nfilename=.*f\.img\nruntime=700ms/);
    t.notRegex(real.jobText, /nonexistent/);
    const rawJobs = (real.raw as { jobs: { read: { clat_ns: { percentile: Record<string, number>; bins: Record<string, number>; N: number } } }[] }).jobs;
    t.is(rawJobs.length, 2);
    for (const rj of rawJobs) {
      const c = rj.read.clat_ns;
      const h = LatencyHistogram.fromBins(c.bins, { N: c.N, min: 0, max: 0, mean: 0, stddev: 0 });
      const ours = buildDirStats(0, c.N, 1, h).clat.percentiles;
      t.deepEqual(ours, c.percentile);
    }
    const j = real.report.jobs[0]!;
    t.is(real.report.jobs.length, 1);
    t.is(j.numjobs, 2);
    t.falsy(j.read.clat.approximate);
    t.is(j.read.clat.n, rawJobs[0]!.read.clat_ns.N + rawJobs[1]!.read.clat_ns.N);
    t.true(j.read.runtimeMs >= 600 && j.read.runtimeMs < 2000);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('runRealFio: ENODEV when fio is absent', async (t) => {
  const e = await t.throwsAsync(runRealFio(join(PROFILES, 'randread-4k-qd1.fio'), { fio: '/nonexistent/fio' }));
  t.is((e as FractosError).code, 'ENODEV');
});

// ------------------------------------------------------------------ compare

function fakeJob(name: string, read: [number, number, number[]], write?: [number, number, number[]]): JobStats {
  const dir = (x?: [number, number, number[]]) => {
    if (!x) return emptyDirStats();
    const h = new LatencyHistogram();
    for (const v of x[2]) h.record(v);
    return buildDirStats(x[0] * 4096, x[0], x[1], h);
  };
  return { name, numjobs: 1, error: 0, jobRuntimeMs: 1000, options: {}, globalOptions: {}, read: dir(read), write: dir(write) };
}

test('compareRecords: DESIGN §6 records, ratio = value / baseline', (t) => {
  const ours = fakeJob('j', [1000, 1000, [100, 100, 100, 120]]); // < 128 ns: exact buckets
  const fio = fakeJob('j', [2000, 1000, [50, 50, 50, 60]]);
  const recs = compareRecords(ours, fio, { profile: 'randread-4k-qd1', target: 'blockdev' });
  t.is(recs.length, 4);
  const by = Object.fromEntries(recs.map((r) => [r.metric, r]));
  t.deepEqual(by['iops'], {
    bench: 'fio',
    metric: 'iops',
    value: 1000,
    unit: 'IOPS',
    baseline: 2000,
    ratio: 0.5,
    params: { profile: 'randread-4k-qd1', target: 'blockdev', direction: 'read' },
  });
  t.is(by['bw_bytes']!.value, 1000 * 4096);
  t.is(by['bw_bytes']!.ratio, 0.5);
  t.is(by['bw_bytes']!.unit, 'B/s');
  t.like(by['clat_p50_ns'], { value: 100, baseline: 50, ratio: 2, unit: 'ns' });
  t.like(by['clat_p99_ns'], { value: 120, baseline: 60, ratio: 2 });
  // Directions: a write-only baseline with no I/O on our side still yields records; ratio null on 0 baseline.
  const o2: FioReport = { version: 'fractos-fio', timestampMs: 0, jobs: [fakeJob('m', [10, 1000, [1]], [5, 1000, [2]])] };
  const f2: FioReport = { version: 'fio-3.33', timestampMs: 0, jobs: [fakeJob('m', [20, 1000, [1]])] };
  const r2 = compareRecords(o2, f2, { profile: 'p', target: 'fs' });
  t.is(r2.length, 8);
  const w = r2.filter((r) => r.params.direction === 'write');
  t.true(w.every((r) => r.ratio === null && r.baseline === 0));
  const table = formatCompareTable(recs);
  t.regex(table, /profile\s+target\s+dir\s+metric\s+ours\s+fio\s+ratio/);
  t.regex(table, /randread-4k-qd1\s+blockdev\s+read\s+iops\s+1000\s+2000\s+0\.500/);
});

test('overrideJobText rewrites filename/runtime/size in every section', (t) => {
  const out = overrideJobText('[global]\nsize=1g\nruntime=10\n[a]\nfilename=/x\n[b]\nbs=4k\n', {
    filename: '/dev/y',
    runtime: '2s',
  });
  t.is(out, '[global]\nfilename=/dev/y\nruntime=2s\nsize=1g\n[a]\nfilename=/dev/y\nruntime=2s\n[b]\nfilename=/dev/y\nruntime=2s\nbs=4k\n');
  t.is(job(out.replace('[b]', '[b]\nrw=read')).filename, '/dev/y');
});

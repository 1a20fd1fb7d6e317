// gpu-adaptor/backend.ts over the fractos_gpu addon: the cpu backend against the TypeScript
// reference (facever-app/lbp.ts) bit for bit on real ORL photos, typed errors on bad input,
// and the cuda backend against the cpu backend bit for bit when a device exists.
// Missing pieces are skips with the reason printed: the addon not built, no CUDA device.
import test from 'ava';
import { closeSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FractosError } from '../libfractos/errors.js';
import { createRegionFd, mapFd } from '../native/shm/index.js';
import { chiSquare, lbpHistogram, readPgm } from '../facever-app/lbp.js';
import { DEFAULT_GRID, orlPairs } from '../facever-app/accuracy.js';
import { datasetForTests } from '../facever-app/dataset.js';
import {
  histogramBytes, histogramLength, IMAGE_BYTES, openBackend, type GpuBackend,
} from '../gpu-adaptor/backend.js';

const ORL_DIR = datasetForTests();

function tryOpen(kind: 'cpu' | 'cuda'): { backend?: GpuBackend; reason?: string } {
  try {
    return { backend: openBackend(kind) };
  } catch (e) {
    if (e instanceof FractosError && e.code === 'ENODEV') return { reason: e.message };
    throw e;
  }
}

const cpu = tryOpen('cpu');
const cuda = tryOpen('cuda');
const haveOrl = existsSync(join(ORL_DIR, 's1', '1.pgm'));
if (cpu.reason) console.log(`SKIP cpu backend tests: ${cpu.reason}`);
if (cuda.reason) console.log(`SKIP cuda backend tests: ${cuda.reason}`);
if (!haveOrl) console.log(`SKIP ORL tests: no dataset at ${ORL_DIR}`);
const cpuTest = cpu.backend && haveOrl ? test.serial : test.skip;
const cpuOnly = cpu.backend ? test.serial : test.skip;
const cudaTest = cuda.backend && cpu.backend && haveOrl ? test.serial : test.skip;

/** N = 256 ORL pairs (genuine and impostor mixed), as two contiguous image batches. */
function orlBatch(n: number): { probes: Uint8Array; enrolled: Uint8Array } {
  const pairs = orlPairs(Array.from({ length: 40 }, (_, i) => i + 1));
  const probes = new Uint8Array(n * IMAGE_BYTES);
  const enrolled = new Uint8Array(n * IMAGE_BYTES);
  const load = (id: number, photo: number): Uint8Array => {
    const img = readPgm(readFileSync(join(ORL_DIR, `s${id}`, `${photo}.pgm`)));
    if (img.width !== 92 || img.height !== 112) throw new Error('unexpected ORL size');
    return img.pixels;
  };
  for (let i = 0; i < n; i++) {
    const p = pairs[(i * 7) % pairs.length]!; // spread over subjects, genuine and impostor
    probes.set(load(p.probe, p.photo), i * IMAGE_BYTES);
    enrolled.set(load(p.enrolled, 1), i * IMAGE_BYTES);
  }
  return { probes, enrolled };
}

const N = 256;
const batch = haveOrl ? orlBatch(N) : undefined;

interface Result {
  scores: Float64Array;
  probeHists: Uint32Array;
  enrolledHists: Uint32Array;
  scoresOnly: Float64Array;
  hists: Uint32Array;
}

/** Run both kernels on `b` (all outputs read back). */
async function runAll(b: GpuBackend, gx: number, gy: number): Promise<Result> {
  const hb = histogramBytes(gx, gy);
  const [pr, en, sc, ph, eh, sc2, hs] = [N * IMAGE_BYTES, N * IMAGE_BYTES, N * 8, N * hb, N * hb, N * 8, N * hb].map((s) => b.alloc(s));
  try {
    await Promise.all([b.write(pr!, 0, batch!.probes), b.write(en!, 0, batch!.enrolled)]);
    const chi2 = b.loadKernel('lbp_chi2_batch');
    const hist = b.loadKernel('lbp_hist_batch');
    const scalars = { n: N, gridX: gx, gridY: gy };
    await b.launch(chi2, { buffers: [pr, en, sc, ph, eh].map((handle) => ({ handle: handle! })), scalars });
    await b.launch(chi2, { buffers: [pr, en, sc2].map((handle) => ({ handle: handle! })), scalars });
    await b.launch(hist, { buffers: [{ handle: pr! }, { handle: hs! }], scalars });
    const u32 = (a: Uint8Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.byteLength / 4);
    const f64 = (a: Uint8Array): Float64Array => new Float64Array(a.buffer, a.byteOffset, a.byteLength / 8);
    return {
      scores: f64(await b.read(sc!, 0, N * 8)),
      probeHists: u32(await b.read(ph!, 0, N * hb)),
      enrolledHists: u32(await b.read(eh!, 0, N * hb)),
      scoresOnly: f64(await b.read(sc2!, 0, N * 8)),
      hists: u32(await b.read(hs!, 0, N * hb)),
    };
  } finally {
    for (const h of [pr, en, sc, ph, eh, sc2, hs]) b.free(h!);
  }
}

for (const [gx, gy] of [[DEFAULT_GRID.gridX, DEFAULT_GRID.gridY], [1, 1], [8, 8], [7, 5], [16, 16]] as const) {
  cpuTest(`cpu backend == TS reference bit for bit, ${N} ORL pairs, grid ${gx}x${gy}`, async (t) => {
    const r = await runAll(cpu.backend!, gx, gy);
    const len = histogramLength(gx, gy);
    let histMismatch = 0;
    let scoreMismatch = 0;
    let maxRel = 0;
    for (let i = 0; i < N; i++) {
      const a = lbpHistogram(batch!.probes.subarray(i * IMAGE_BYTES, (i + 1) * IMAGE_BYTES), 92, 112, gx, gy);
      const b = lbpHistogram(batch!.enrolled.subarray(i * IMAGE_BYTES, (i + 1) * IMAGE_BYTES), 92, 112, gx, gy);
      const pa = r.probeHists.subarray(i * len, (i + 1) * len);
      const pb = r.enrolledHists.subarray(i * len, (i + 1) * len);
      const ph = r.hists.subarray(i * len, (i + 1) * len);
      for (let k = 0; k < len; k++) if (pa[k] !== a[k] || pb[k] !== b[k] || ph[k] !== a[k]) histMismatch++;
      const ref = chiSquare(a, b);
      const rel = Math.abs(r.scores[i]! - ref) / Math.max(1, Math.abs(ref));
      maxRel = Math.max(maxRel, rel);
      if (r.scores[i] !== ref || r.scoresOnly[i] !== ref) scoreMismatch++;
    }
    t.is(histMismatch, 0);
    t.true(maxRel <= 1e-12, `max relative score error ${maxRel}`);
    // stronger than 1e-12: identical summation order in float64 gives identical bits
    t.is(scoreMismatch, 0);
    t.true(r.scores.some((s) => s > 0));
  });
}

cudaTest('cuda backend == cpu backend bit for bit (histograms and scores)', async (t) => {
  t.log(`cuda device: ${cuda.backend!.deviceName}`);
  // 16x16 needs 60 KiB of histogram: exercises the global-atomics path of lbp_hist
  for (const [gx, gy] of [[DEFAULT_GRID.gridX, DEFAULT_GRID.gridY], [1, 1], [8, 8], [7, 5], [16, 16]] as const) {
    const a = await runAll(cpu.backend!, gx, gy);
    const b = await runAll(cuda.backend!, gx, gy);
    t.deepEqual(Buffer.from(b.probeHists.buffer), Buffer.from(a.probeHists.buffer), `probe hists ${gx}x${gy}`);
    t.deepEqual(Buffer.from(b.enrolledHists.buffer), Buffer.from(a.enrolledHists.buffer), `enrolled hists ${gx}x${gy}`);
    t.deepEqual(Buffer.from(b.hists.buffer), Buffer.from(a.hists.buffer), `hist batch ${gx}x${gy}`);
    t.deepEqual(Buffer.from(b.scores.buffer), Buffer.from(a.scores.buffer), `scores ${gx}x${gy}`);
    t.deepEqual(Buffer.from(b.scoresOnly.buffer), Buffer.from(a.scoresOnly.buffer), `scores (no hist out) ${gx}x${gy}`);
  }
});

cudaTest('cuda backend: typed errors', async (t) => {
  const b = cuda.backend!;
  const h = b.alloc(64);
  await t.throwsAsync(b.read(h, 60, 8), { instanceOf: FractosError, code: 'ERANGE' } as never);
  await t.throwsAsync(
    b.launch(b.loadKernel('lbp_hist_batch'), { buffers: [{ handle: h }, { handle: h }], scalars: { n: 1, gridX: 1, gridY: 1 } }),
    { code: 'ERANGE' } as never,
  );
  b.free(h);
});

function code(e: unknown): string | undefined {
  return e instanceof FractosError ? e.code : undefined;
}

cpuOnly('cpu backend: alloc/write/read round trip and typed errors on bad input', async (t) => {
  const b = cpu.backend!;
  t.is(b.kind, 'cpu');
  t.log(`cpu device: ${b.deviceName}`);
  const h = b.alloc(100);
  await b.write(h, 10, Uint8Array.from([1, 2, 3]));
  t.deepEqual([...(await b.read(h, 9, 5))], [0, 1, 2, 3, 0]);
  // out-of-range copies
  t.is(code(await b.write(h, 99, Uint8Array.from([1, 2])).catch((e) => e)), 'ERANGE');
  t.is(code(await b.read(h, 101, 0).catch((e) => e)), 'ERANGE');
  t.is(code(await b.read(h, 0, 101).catch((e) => e)), 'ERANGE');
  t.is(code(await b.read(h, -1, 1).catch((e) => e)), 'EINVAL');
  t.is(code(await b.read(12345, 0, 1).catch((e) => e)), 'ENOENT');
  // unknown kernel
  t.is(code(t.throws(() => b.loadKernel('sobel'))), 'ENOENT');
  t.is(code(t.throws(() => b.loadKernel('toString'))), 'ENOENT');
  t.is(code(await b.launch({ name: 'lbp_hist_batch', buffers: [] }, { buffers: [], scalars: { n: 0, gridX: 1, gridY: 1 } }).catch((e) => e)), 'ENOENT');
  const hist = b.loadKernel('lbp_hist_batch');
  const chi2 = b.loadKernel('lbp_chi2_batch');
  // n larger than the buffers
  const img = b.alloc(2 * IMAGE_BYTES);
  const out = b.alloc(2 * histogramBytes(2, 2));
  const sc = b.alloc(16);
  const s = { gridX: 2, gridY: 2 };
  t.is(code(await b.launch(hist, { buffers: [{ handle: img }, { handle: out }], scalars: { n: 3, ...s } }).catch((e) => e)), 'ERANGE');
  t.is(code(await b.launch(hist, { buffers: [{ handle: img, offset: 1 }, { handle: out }], scalars: { n: 2, ...s } }).catch((e) => e)), 'ERANGE');
  t.is(code(await b.launch(chi2, { buffers: [{ handle: img }, { handle: img }, { handle: sc }], scalars: { n: 3, ...s } }).catch((e) => e)), 'ERANGE');
  // wrong buffer count, grid, alignment, unknown handle
  t.is(code(await b.launch(hist, { buffers: [{ handle: img }], scalars: { n: 1, ...s } }).catch((e) => e)), 'EINVAL');
  t.is(code(await b.launch(hist, { buffers: [{ handle: img }, { handle: out }], scalars: { n: 1, gridX: 0, gridY: 2 } }).catch((e) => e)), 'EINVAL');
  t.is(code(await b.launch(hist, { buffers: [{ handle: img }, { handle: out }], scalars: { n: 1, gridX: 91, gridY: 2 } }).catch((e) => e)), 'EINVAL');
  t.is(code(await b.launch(hist, { buffers: [{ handle: img }, { handle: out }], scalars: { n: 1.5, ...s } }).catch((e) => e)), 'EINVAL');
  t.is(code(await b.launch(hist, { buffers: [{ handle: img }, { handle: out, offset: 2 }], scalars: { n: 1, ...s } }).catch((e) => e)), 'EINVAL');
  t.is(code(await b.launch(chi2, { buffers: [{ handle: img }, { handle: img }, { handle: sc, offset: 4 }], scalars: { n: 1, ...s } }).catch((e) => e)), 'EINVAL');
  t.is(code(await b.launch(hist, { buffers: [{ handle: img }, { handle: 999 }], scalars: { n: 1, ...s } }).catch((e) => e)), 'ENOENT');
  // n = 0 is a no-op
  await b.launch(hist, { buffers: [{ handle: img }, { handle: out }], scalars: { n: 0, ...s } });
  // a buffer in use by a launch in flight cannot be freed; after it settles it can
  const p = b.launch(hist, { buffers: [{ handle: img }, { handle: out }], scalars: { n: 2, ...s } });
  t.is(code(t.throws(() => b.free(out))), 'EBUSY');
  await p;
  for (const x of [h, img, out, sc]) b.free(x);
  t.is(code(t.throws(() => b.free(h))), 'ENOENT');
  t.is(code(t.throws(() => b.alloc(0))), 'EINVAL');
});

cpuTest('cpu backend on external memory (a memfd region, as the adaptor uses it) == TS reference bit for bit', async (t) => {
  const b = cpu.backend!;
  t.true(b.hostAddressable);
  const { gridX: gx, gridY: gy } = DEFAULT_GRID;
  // One region, as GpuService allocates device memory for the cpu backend: probes,
  // enrolled and scores at page-aligned offsets of the same mapping.
  const ab = mapRegion(3 * 4096 * Math.ceil((N * IMAGE_BYTES) / 4096));
  {
    const bytes = new Uint8Array(ab);
    const seg = 4096 * Math.ceil((N * IMAGE_BYTES) / 4096);
    bytes.set(batch!.probes, 0);
    bytes.set(batch!.enrolled, seg);
    const [pr, en, sc] = [b.allocExternal(ab, 0, N * IMAGE_BYTES), b.allocExternal(ab, seg, N * IMAGE_BYTES), b.allocExternal(ab, 2 * seg, N * 8)];
    await b.launch(b.loadKernel('lbp_chi2_batch'), { buffers: [{ handle: pr }, { handle: en }, { handle: sc }], scalars: { n: N, gridX: gx, gridY: gy } });
    // the kernel wrote in place: the scores are in the shared bytes, no read needed
    const scores = new Float64Array(ab, 2 * seg, N);
    let mismatch = 0;
    for (let i = 0; i < N; i++) {
      const ref = chiSquare(
        lbpHistogram(batch!.probes.subarray(i * IMAGE_BYTES, (i + 1) * IMAGE_BYTES), 92, 112, gx, gy),
        lbpHistogram(batch!.enrolled.subarray(i * IMAGE_BYTES, (i + 1) * IMAGE_BYTES), 92, 112, gx, gy),
      );
      if (scores[i] !== ref) mismatch++;
    }
    t.is(mismatch, 0);
    // copies through the backend see and change the same bytes
    await b.write(pr, 5, Uint8Array.from([7, 8]));
    t.deepEqual([...bytes.subarray(5, 7)], [7, 8]);
    t.deepEqual([...(await b.read(en, 0, 4))], [...batch!.enrolled.subarray(0, 4)]);
    // free drops the handle only: the memory stays the caller's
    for (const h of [pr, en, sc]) b.free(h);
    t.is(code(t.throws(() => b.free(pr))), 'ENOENT');
    t.deepEqual([...bytes.subarray(5, 7)], [7, 8]);
  }
});

/** A fresh memfd region of `size` bytes, mapped (page-aligned); its fd closed (the mapping lives on). */
function mapRegion(size: number): ArrayBuffer {
  const fd = createRegionFd(size);
  try {
    return mapFd(fd, size, true).buffer;
  } finally {
    closeSync(fd);
  }
}

cpuOnly('cpu backend allocExternal: bad inputs are typed errors', async (t) => {
  const b = cpu.backend!;
  const ab = mapRegion(4096); // page-aligned (a plain ArrayBuffer need not be 64-byte aligned)
  // size 0, outside the buffer, offset past the end, not 64-byte aligned, not an ArrayBuffer
  t.is(code(t.throws(() => b.allocExternal(ab, 0, 0))), 'EINVAL');
  t.is(code(t.throws(() => b.allocExternal(ab, 0, 4097))), 'ERANGE');
  t.is(code(t.throws(() => b.allocExternal(ab, 4096, 1))), 'ERANGE');
  t.is(code(t.throws(() => b.allocExternal(ab, 8, 64))), 'EINVAL');
  t.is(code(t.throws(() => b.allocExternal(ab, -1, 64))), 'EINVAL');
  t.is(code(t.throws(() => b.allocExternal(new Uint8Array(ab) as never, 0, 64))), 'EINVAL');
  t.is(code(t.throws(() => b.allocExternal(null as never, 0, 64))), 'EINVAL');
  // a detached ArrayBuffer
  const gone = new ArrayBuffer(128);
  structuredClone(gone, { transfer: [gone] });
  t.is(code(t.throws(() => b.allocExternal(gone, 0, 64))), 'EINVAL');
  // a range check on a wrapped buffer, and launches on too-short external buffers
  const h = b.allocExternal(ab, 0, 128);
  t.is(code(await b.read(h, 100, 29).catch((e) => e)), 'ERANGE');
  t.is(code(await b.launch(b.loadKernel('lbp_hist_batch'), { buffers: [{ handle: h }, { handle: h }], scalars: { n: 1, gridX: 1, gridY: 1 } }).catch((e) => e)), 'ERANGE');
  b.free(h);
});

cudaTest('cuda backend cannot wrap host memory (ENOTSUP)', (t) => {
  t.false(cuda.backend!.hostAddressable);
  t.is(code(t.throws(() => cuda.backend!.allocExternal(new ArrayBuffer(4096), 0, 64))), 'ENOTSUP');
});

cpuOnly('openBackend: auto picks cuda when a device answers, else cpu; close is idempotent', (t) => {
  const b = openBackend('auto');
  t.is(b.kind, cuda.backend ? 'cuda' : 'cpu');
  const h = b.alloc(8);
  b.close();
  b.close();
  t.is(code(t.throws(() => b.alloc(8))), 'EINVAL');
  t.is(code(t.throws(() => openBackend('tpu' as never))), 'EINVAL');
  void h;
});

test('cuda backend opens or reports ENODEV (never another error)', (t) => {
  if (cuda.backend) t.is(cuda.backend.kind, 'cuda');
  else t.regex(cuda.reason ?? '', /^ENODEV/);
});

test.after.always(() => {
  cpu.backend?.close();
  cuda.backend?.close();
});

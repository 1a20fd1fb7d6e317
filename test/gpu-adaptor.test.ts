// GPU adaptor Requests end to end with the cpu backend: init/alloc/load/invoke/cleanup
// against the TypeScript reference, bad inputs to every Request (each answered on onError
// with a code, the adaptor keeps serving), the barrier, per-client cleanup when a client
// goes away (monitor_delegate), and the `fractos gpu` command as an OS process.
// Skips (with the reason) when the gpu addon is not built or the ORL photos are missing.
import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { DEFAULT_GRID } from '../facever-app/accuracy.js';
import { datasetForTests } from '../facever-app/dataset.js';
import { chiSquare, lbpHistogram, readPgm } from '../facever-app/lbp.js';
import { IMAGE_BYTES, openBackend, type GpuBackend } from '../gpu-adaptor/backend.js';
import { GpuContext } from '../gpu-adaptor/client.js';
import { Alloc, Cleanup, Invoke, InvokeReply, Load } from '../gpu-adaptor/schema.js';
import { GpuService } from '../gpu-adaptor/service.js';
import { connect, Perm, type Process } from '../libfractos/index.js';
import { spawnFractos, tempDir } from './helpers/spawn.js';
import { codeOf as code } from './helpers/errors.js';
import { until } from './helpers/wait.js';

const ORL_DIR = datasetForTests();

let backend: GpuBackend | undefined;
let skip = '';
try {
  backend = openBackend('cpu');
} catch (e) {
  skip = (e as Error).message;
}
if (!existsSync(join(ORL_DIR, 's1', '1.pgm'))) skip ||= `no ORL dataset at ${ORL_DIR}`;
if (skip) console.log(`SKIP gpu-adaptor tests: ${skip}`);
const t = skip ? test.skip : test.serial;

const dir = tempDir('fractos-gpu-');
const address = `unix:${join(dir, 'c.sock')}`;
let controller: Controller;
let svcProc: Process;
let svc: GpuService;
let app: Process;

const photo = (id: number, k: number): Uint8Array => readPgm(readFileSync(join(ORL_DIR, `s${id}`, `${k}.pgm`))).pixels;
const { gridX, gridY } = DEFAULT_GRID;

test.before(async () => {
  if (skip) return;
  controller = await Controller.start({ id: 1, listen: [address], stateDir: join(dir, 'state'), peers: new Map() });
  svcProc = await connect(address, { name: 'gpu' });
  svc = await GpuService.start(svcProc, backend!, { barrierTimeoutMs: 500 });
  app = await connect(address, { name: 'app' });
});

test.after.always(async () => {
  if (skip) return;
  await app?.close();
  await svc?.close();
  await svcProc?.close();
  await controller?.close();
});

/** Invoke and wait for InvokeReply, or reject with the adaptor's FractosError. */
async function run(p: Process, invoke: number, imms: Parameters<typeof Invoke.args>[0], caps: Parameters<typeof Invoke.args>[1]) {
  return InvokeReply.decode(await p.rpc(invoke, Invoke, imms, caps, { timeoutMs: 5000 })).imms;
}


const PAIRS: [number, number, number][] = [[1, 2, 1], [1, 3, 2], [5, 7, 5], [9, 10, 30]];

t('alloc/load/invoke/cleanup: scores equal the TS reference, barrier and out copy', async (tt) => {
  const ctx = await GpuContext.open(app);
  tt.is(ctx.backend, 'cpu');
  const n = PAIRS.length;
  const stride = 12288;
  const probes = await ctx.alloc(n * IMAGE_BYTES);
  const enrolled = await ctx.alloc(n * stride);
  const scores = await ctx.alloc(n * 8);
  const invoke = await ctx.load('lbp_chi2_batch');
  // Stage images through the app's shared memory: probes packed, enrolled in strided slots.
  const { cid: host, region } = await app.memoryCreateShared(n * stride);
  PAIRS.forEach(([id, k], i) => region.bytes.set(photo(id, k), i * IMAGE_BYTES));
  const hp = await app.memoryDiminish(host, 0, n * IMAGE_BYTES);
  await app.memoryCopy(hp, probes);
  region.bytes.fill(0);
  PAIRS.forEach(([, , e], i) => region.bytes.set(photo(e, 1), i * stride));
  await app.memoryCopy(host, enrolled);
  const expected = PAIRS.map(([id, k, e]) => chiSquare(lbpHistogram(photo(id, k), 92, 112, gridX, gridY), lbpHistogram(photo(e, 1), 92, 112, gridX, gridY)));

  // Plain invoke, then copy back by hand.
  const r = await run(app, invoke, { n, gridX, gridY, stride }, { probes, enrolled, scores });
  tt.is(r.n, n);
  const out = await app.memoryCreateShared(4096);
  const outView = await app.memoryDiminish(out.cid, 0, n * 8);
  await app.memoryCopy(scores, outView);
  tt.deepEqual([...new Float64Array(out.region.bytes.buffer, 0, n)], expected);

  // Barrier (expect 3, same batch) with the `out` copy done by the adaptor.
  out.region.bytes.fill(0);
  const TAG = 0x1234;
  let notified!: () => void;
  const arrived = new Promise<void>((res) => (notified = res));
  let calls = 0;
  app.onRequest(TAG, () => {
    calls++;
    notified();
  });
  const notify = await app.requestCreate(TAG);
  const derived = await app.requestDerive(invoke, Invoke.args({ n, gridX, gridY, stride, batch: 7, expect: 3 }, { probes, enrolled, scores, out: outView, onSuccess: notify }));
  // Three arrivals (as three DAX read completions invoking the same continuation).
  await Promise.all([app.requestInvoke(derived), app.requestInvoke(derived), app.requestInvoke(derived)]);
  await arrived;
  tt.is(calls, 1);
  tt.deepEqual([...new Float64Array(out.region.bytes.buffer, 0, n)], expected);

  // Bare arrivals (`arrive` = 1, no caps: the chain's read continuations) count towards the
  // expect of the invocation carrying the arguments, before or after it.
  out.region.bytes.fill(0);
  const bare = await app.requestDerive(invoke, Invoke.args({ batch: 8, arrive: 1 }));
  await app.requestInvoke(bare);
  const arrived2 = new Promise<void>((res) => (notified = res));
  await app.invoke(invoke, Invoke, { n, gridX, gridY, stride, batch: 8, expect: 3 }, { probes, enrolled, scores, out: outView, onSuccess: notify });
  await app.requestInvoke(bare);
  await arrived2;
  tt.is(calls, 2);
  tt.deepEqual([...new Float64Array(out.region.bytes.buffer, 0, n)], expected);
  // Too few arrivals: ETIMEDOUT on onError of the carrier (barrier timeout 500 ms here).
  tt.is(await code(run(app, invoke, { n, gridX, gridY, stride, batch: 9, expect: 2 }, { probes, enrolled, scores })), 'ETIMEDOUT');
  await app.capDrop(bare);

  // cpu backend: device memory is shared Memory (a host region the Controller maps).
  const st = await app.memoryStat(probes);
  tt.is(st.backing, svc.memoryKind);
  tt.is(svc.memoryKind, 'shared');

  // Views of device memory are device memory too.
  const sv = await app.memoryDiminish(scores, 0, n * 8);
  await run(app, invoke, { n, gridX, gridY, stride }, { probes, enrolled, scores: sv });

  // Clean up by hand (GpuContext.cleanup would drop our cids): then every cap is revoked.
  await app.rpc(ctx.cleanupCid, Cleanup);
  tt.is(await code(app.rpc(ctx.allocCid, Alloc, { size: 10 })), 'EREVOKED');
  tt.is(await code(app.rpc(ctx.loadCid, Load, { kernel: 'lbp_chi2_batch' })), 'EREVOKED');
  tt.is(await code(app.memoryCopy(host, enrolled)), 'EREVOKED');
  tt.is(await code(run(app, invoke, { n, gridX, gridY, stride }, { probes, enrolled, scores })), 'EREVOKED');
  tt.is(svc.stats().contexts, 0);
  await app.capDrop(probes, enrolled, scores, invoke, host, hp, outView, out.cid, derived, sv, notify).catch(() => {});
});

t('served device memory (sharedMemory: false, as with cuda): same scores; the other kind is refused', async (tt) => {
  const sp = await connect(address, { name: 'gpu-served' });
  const served = await GpuService.start(sp, openBackend('cpu'), { name: 'gpus', sharedMemory: false });
  try {
    tt.is(served.memoryKind, 'served');
    const ctx = await GpuContext.open(app, 'gpus');
    const n = 2;
    const [probes, enrolled, scores] = await Promise.all([ctx.alloc(n * IMAGE_BYTES), ctx.alloc(n * IMAGE_BYTES), ctx.alloc(n * 8)]);
    tt.is((await app.memoryStat(probes)).backing, 'served');
    const { cid: host, region } = await app.memoryCreateShared(n * IMAGE_BYTES);
    region.bytes.set(photo(1, 2), 0);
    region.bytes.set(photo(3, 4), IMAGE_BYTES);
    await app.memoryCopy(host, probes);
    region.bytes.set(photo(1, 1), 0);
    region.bytes.set(photo(3, 1), IMAGE_BYTES);
    await app.memoryCopy(host, enrolled);
    const invoke = await ctx.load('lbp_chi2_batch');
    await run(app, invoke, { n, gridX, gridY }, { probes, enrolled, scores });
    await app.memoryCopy(scores, await app.memoryDiminish(host, 0, n * 8));
    const expected = [[1, 2], [3, 4]].map(([id, k]) => chiSquare(lbpHistogram(photo(id!, k!), 92, 112, gridX, gridY), lbpHistogram(photo(id!, 1), 92, 112, gridX, gridY)));
    tt.deepEqual([...new Float64Array(region.bytes.buffer, 0, n)], expected);
    // A shared-memory buffer of the other adaptor is not this adaptor's device memory.
    const other = await GpuContext.open(app);
    const foreign = await other.alloc(n * 8);
    tt.is(await code(run(app, invoke, { n, gridX, gridY }, { probes, enrolled, scores: foreign })), 'EPERM');
    await other.cleanup();
    await ctx.cleanup();
  } finally {
    await served.close();
    await sp.close();
  }
});

t('bad inputs to every Request get error codes, never a crash', async (tt) => {
  const ctx = await GpuContext.open(app);
  tt.is(await code(ctx.alloc(0)), 'EINVAL');
  tt.is(await code(ctx.alloc(2 ** 41)), 'EINVAL');
  tt.is(await code(ctx.load('no_such_kernel')), 'ENOENT');
  const invoke = await ctx.load('lbp_chi2_batch');
  const probes = await ctx.alloc(2 * IMAGE_BYTES);
  const enrolled = await ctx.alloc(2 * IMAGE_BYTES);
  const scores = await ctx.alloc(16);
  const small = await ctx.alloc(100);
  const host = (await app.memoryCreateShared(4 * IMAGE_BYTES)).cid;
  const ro = await app.memoryDiminish(scores, 0, 16, Perm.WRITE);
  const good = { probes, enrolled, scores };
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY }, good)), 'OK');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY }, { ...good, probes: host })), 'EPERM', 'host memory is not device memory');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY }, { ...good, enrolled: invoke })), 'ETYPE', 'a Request is not memory');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY }, { ...good, scores: ro })), 'EPERM', 'read-only scores');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY }, { ...good, probes: small })), 'ERANGE');
  tt.is(await code(run(app, invoke, { n: 3, gridX, gridY }, good)), 'ERANGE');
  tt.is(await code(run(app, invoke, { n: 0, gridX, gridY }, good)), 'EINVAL');
  tt.is(await code(run(app, invoke, { n: 2, gridX: 0, gridY }, good)), 'EINVAL');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY: 111 }, good)), 'EINVAL');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY, stride: 100 }, good)), 'EINVAL');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY }, { probes, enrolled })), 'EINVAL', 'missing scores');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY, slots: 1, gather: Uint8Array.of(0, 1) }, good)), 'EINVAL', 'gather index beyond slots');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY, slots: 1, gather: Uint8Array.of(0, 0) }, good)), 'OK', 'gather of one slot');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY, stride: 20000 }, good)), 'ERANGE');
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY, batch: 1, expect: 2 }, good)), 'ETIMEDOUT', 'barrier never completes');
  // Preset arguments cannot be retargeted.
  tt.is(await code(app.requestInvoke(invoke, Invoke.args({ context: 99 }))), 'EARGSET');
  // Still serving.
  tt.is(await code(run(app, invoke, { n: 2, gridX, gridY }, good)), 'OK');
  await app.rpc(ctx.cleanupCid, Cleanup);
  tt.is(await code(app.rpc(ctx.loadCid, Load, { kernel: 'lbp_chi2_batch' })), 'EREVOKED');
  tt.is(await code(app.rpc(ctx.cleanupCid, Cleanup)), 'EREVOKED');
  await app.capDrop(invoke, probes, enrolled, scores, small, host, ro).catch(() => {});
});

t('per-client resources are freed when the client goes away (monitor_delegate)', async (tt) => {
  const before = svc.stats();
  const client = await connect(address, { name: 'short-lived' });
  const ctx = await GpuContext.open(client);
  const mem = await ctx.alloc(1 << 20);
  await ctx.load('lbp_hist_batch');
  await client.memoryDiminish(mem, 0, 4096);
  tt.is(svc.stats().contexts, before.contexts + 1);
  tt.is(svc.stats().bytes, before.bytes + (1 << 20));
  await client.close();
  await until(() => svc.stats().contexts === before.contexts, 10_000); // the client's close reaches the adaptor
  tt.deepEqual({ ...svc.stats(), launches: 0 }, { ...before, launches: 0 });

  // A client that drops one allocation gets it freed, the context stays.
  const c2 = await GpuContext.open(app);
  const m2 = await c2.alloc(4096);
  const b2 = svc.stats().bytes;
  await app.capDrop(m2);
  await until(() => svc.stats().bytes !== b2, 10_000); // the drop reaches the adaptor
  tt.is(svc.stats().bytes, b2 - 4096);
  tt.is(svc.stats().contexts, before.contexts + 1);
  await c2.cleanup();
});

t('`fractos gpu` as an OS process: ready line, Requests, clean exit', async (tt) => {
  const gpu = await spawnFractos(['gpu', '--backend', 'cpu', '--controller', address, '--name', 'gpu2'], /^ready gpu /);
  try {
    tt.regex(gpu.line, /^ready gpu backend=cpu device=.+/);
    const ctx = await GpuContext.open(app, 'gpu2');
    const m = await ctx.alloc(IMAGE_BYTES);
    const { cid, region } = await app.memoryCreateShared(IMAGE_BYTES);
    region.bytes.set(photo(3, 4));
    await app.memoryCopy(cid, m);
    region.bytes.fill(0);
    await app.memoryCopy(m, cid);
    tt.deepEqual(Buffer.from(region.bytes.subarray(0, IMAGE_BYTES)), Buffer.from(photo(3, 4)));
    await ctx.cleanup();
  } finally {
    await gpu.stop();
  }
});

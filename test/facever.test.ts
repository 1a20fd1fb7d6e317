// facever-app end to end on the single-host stack (Controller, blockdev on a sparse file,
// FS, GPU adaptor with the cpu backend, all OS processes): the three designs give
// identical scores (equal to the TS reference), the HTTP endpoint's bad inputs get 4xx with
// reasons, back-pressure, and a GPU adaptor killed with SIGKILL fails the batches in flight
// with a clear error and the app recovers when it comes back.
// Skips (with the reason) when the storage services, the gpu addon or the ORL photos are missing.
import test from 'ava';
import { readFileSync } from 'node:fs';
import type http from 'node:http';
import { join } from 'node:path';
import { DEFAULT_GRID } from '../facever-app/accuracy.js';
import { LocalCluster } from '../facever-app/cluster.js';
import { chiSquare, lbpHistogram } from '../facever-app/lbp.js';
import { portOf, serve } from '../facever-app/server.js';
import { enroll, loadOrl, type EnrollMeta } from '../facever-app/store.js';
import { DESIGNS, Verifier } from '../facever-app/verifier.js';
import { FsClient } from '../fs-service/client.js';
import { ORL_DIR, batchOf, faceverSkipReason } from './helpers/facever.js';
import { connect, FractosError, type Process } from '../libfractos/index.js';

const skip = faceverSkipReason();
if (skip) console.log(`SKIP facever tests: ${skip}`);
const t = skip ? test.skip : test.serial;

let cluster: LocalCluster;
let app: Process;
let meta: EnrollMeta;

test.before(async () => {
  if (skip) return;
  cluster = await LocalCluster.start({ gpuBackend: 'cpu', diskBytes: 64 * 1024 * 1024 });
  app = await connect(cluster.controller, { name: 'facever-test' });
  meta = await enroll(app, await FsClient.connect(app), ORL_DIR);
});

test.after.always(async () => {
  if (skip) return;
  await app?.close();
  await cluster?.stop();
});


t('the three designs give identical scores, equal to the TS reference', async (tt) => {
  const batch = batchOf(40);
  const { gridX, gridY } = DEFAULT_GRID;
  const expected = batch.map((b) => chiSquare(lbpHistogram(b.image, 92, 112, gridX, gridY), lbpHistogram(loadOrl(ORL_DIR, b.id, 1), 92, 112, gridX, gridY)));
  tt.true(meta.auc >= 0.92, `AUC ${meta.auc}`);
  for (const design of DESIGNS) {
    const v = await Verifier.open(app, { design, ids: meta.ids, slots: 2, maxBatch: 64 });
    try {
      for (let rep = 0; rep < 2; rep++) {
        const r = await v.verify(batch);
        tt.deepEqual([...r.scores], expected, `${design} rep ${rep}`);
      }
      // Two batches in flight on the pool.
      const [a, b] = await Promise.all([v.verify(batch.slice(0, 5)), v.verify(batch.slice(5, 12))]);
      tt.deepEqual([...a.scores, ...b.scores], expected.slice(0, 12), `${design} concurrent`);
    } finally {
      await v.close();
    }
  }
});

t('back-pressure: pool and queue full -> EBUSY; bad batches rejected', async (tt) => {
  const v = await Verifier.open(app, { design: 'chain', ids: meta.ids, slots: 1, maxBatch: 16, maxQueued: 1 });
  try {
    const rs = await Promise.allSettled([v.verify(batchOf(16)), v.verify(batchOf(16)), v.verify(batchOf(16))]);
    tt.is(rs.filter((r) => r.status === 'fulfilled').length, 2);
    const rej = rs.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    tt.is((rej.reason as FractosError).code, 'EBUSY');
    await tt.throwsAsync(v.verify([]), { instanceOf: FractosError, message: /EINVAL/ });
    await tt.throwsAsync(v.verify(batchOf(17)), { message: /EINVAL/ });
    await tt.throwsAsync(v.verify([{ id: 999, image: batchOf(1)[0]!.image }]), { message: /ENOENT/ });
  } finally {
    await v.close();
  }
});

async function post(port: number, body: string | Buffer, method = 'POST', path = '/verify'): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { method, body: method === 'GET' ? undefined : typeof body === 'string' ? body : new Uint8Array(body), headers: { 'content-type': 'application/json' } });
  return { status: r.status, json: (await r.json()) as Record<string, unknown> };
}

t('HTTP /verify: good batch, and 4xx with reasons for bad inputs', async (tt) => {
  const v = await Verifier.open(app, { design: 'chain', ids: meta.ids, slots: 2, maxBatch: 8 });
  let server: http.Server | undefined;
  try {
    server = await serve(v, { port: 0, threshold: meta.threshold });
    const port = portOf(server);
    const pgm = readFileSync(join(ORL_DIR, 's1', '2.pgm'));
    const raw = Buffer.from(loadOrl(ORL_DIR, 2, 3));
    const ok = await post(port, JSON.stringify([{ id: 1, image: pgm.toString('base64') }, { id: 's2', image: raw.toString('base64') }, { id: 5, image: raw.toString('base64') }]));
    tt.is(ok.status, 200);
    const results = ok.json.results as { id: number; score: number; match: boolean }[];
    tt.is(results.length, 3);
    tt.true(results[0]!.score < results[2]!.score || results[1]!.score < results[2]!.score);
    tt.is(results[1]!.id, 2);

    const bad = async (body: string | Buffer, status: number, error: string, method = 'POST', path = '/verify'): Promise<void> => {
      const r = await post(port, body, method, path);
      tt.is(r.status, status, `${error}: ${JSON.stringify(r.json)}`);
      tt.is(r.json.error, error);
      tt.true(typeof r.json.reason === 'string' && (r.json.reason as string).length > 0);
    };
    await bad('{not json', 400, 'bad_json');
    await bad('{"id":1}', 400, 'bad_batch');
    await bad('[]', 400, 'bad_batch');
    await bad('[42]', 400, 'bad_item');
    await bad(JSON.stringify([{ id: 1.5, image: raw.toString('base64') }]), 400, 'bad_item');
    await bad(JSON.stringify([{ id: 1 }]), 400, 'bad_item');
    await bad(JSON.stringify([{ id: 1, image: '!!!not base64!!!' }]), 400, 'bad_base64');
    await bad(JSON.stringify([{ id: 1, image: Buffer.from('P5\n92 112\n255\nshort').toString('base64') }]), 400, 'bad_pgm');
    await bad(JSON.stringify([{ id: 1, image: Buffer.from('P5\n10 10\n255\n' + 'x'.repeat(100)).toString('base64') }]), 400, 'bad_size');
    await bad(JSON.stringify([{ id: 1, image: raw.subarray(0, 5000).toString('base64') }]), 400, 'bad_size');
    await bad(JSON.stringify([{ id: 77, image: raw.toString('base64') }]), 422, 'unknown_id');
    await bad(JSON.stringify(Array.from({ length: 9 }, () => ({ id: 1, image: raw.toString('base64') }))), 413, 'batch_too_large');
    await bad(Buffer.alloc(2 * 1024 * 1024, 0x20), 413, 'body_too_large');
    await bad('', 405, 'method_not_allowed', 'GET');
    await bad('', 405, 'method_not_allowed', 'PUT');
    await bad('[]', 404, 'not_found', 'POST', '/verify2');
    const h = await post(port, '', 'GET', '/health');
    tt.is(h.status, 200);
    tt.is(h.json.ready, true);
  } finally {
    server?.close();
    await v.close();
  }
});

t('a GPU adaptor killed with SIGKILL fails in-flight batches clearly; the app recovers when it returns', async (tt) => {
  const v = await Verifier.open(app, { design: 'chain', ids: meta.ids, slots: 4, maxBatch: 256 });
  try {
    const batch = batchOf(256);
    const good = await v.verify(batch);
    const inflight = [0, 1, 2, 3].map(() => v.verify(batch));
    await new Promise((r) => setTimeout(r, 5));
    await cluster.kill9('gpu');
    const rs = await Promise.allSettled(inflight);
    for (const r of rs) {
      if (r.status === 'rejected') tt.regex(String((r.reason as Error).message), /GPU adaptor went away|EREVOKED|EFAULT|ETIMEDOUT/);
      else tt.deepEqual([...r.value.scores], [...good.scores]);
    }
    tt.true(rs.some((r) => r.status === 'rejected'), 'at least one batch was in flight when the adaptor died');
    // While it is gone: a clear 503-class error, no hang.
    const e = await tt.throwsAsync(v.verify(batch.slice(0, 4)));
    tt.regex(e!.message, /EAGAIN|unavailable|went away/);
    await cluster.startGpu();
    await v.whenReady(20_000);
    const again = await v.verify(batch);
    tt.deepEqual([...again.scores], [...good.scores]);
  } finally {
    await v.close();
  }
});

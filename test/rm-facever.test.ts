// Face verification through the resource manager (docs/rm.md): a single-host stack of OS
// processes (Controller, `fractos rm`, blockdev, FS and two GPU adaptors with the cpu
// backend, each registered with `--rm rm`); the verifier gets its GPU and FS from the RM,
// one GPU adaptor is killed with SIGKILL under traffic: no batch hangs, the ones in flight
// fail with a clear error, later ones succeed on the survivor (same scores). Then
// `fractos facever serve` finds the RM by itself and answers over HTTP.
// Skips (with the reason) when the storage services, the gpu addon or the ORL photos are missing.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LocalCluster } from '../facever-app/cluster.js';
import { enroll, loadOrl, type EnrollMeta } from '../facever-app/store.js';
import { Verifier } from '../facever-app/verifier.js';
import { FsClient } from '../fs-service/client.js';
import { ORL_DIR, batchOf, faceverSkipReason } from './helpers/facever.js';
import { connect, FractosError, type Process } from '../libfractos/index.js';
import { RmClient } from '../rm/index.js';
import { spawnFractos } from './helpers/spawn.js';

const skip = faceverSkipReason();
if (skip) console.log(`SKIP rm-facever tests: ${skip}`);
const t = skip ? test.skip : test.serial;

let cluster: LocalCluster;
let app: Process;
let meta: EnrollMeta;

test.before(async () => {
  if (skip) return;
  cluster = await LocalCluster.start({ gpuBackend: 'cpu', diskBytes: 64 * 1024 * 1024, rm: true });
  await cluster.startGpu(undefined, 'gpu2');
  app = await connect(cluster.controller, { name: 'rm-facever-test' });
  meta = await enroll(app, await FsClient.connect(app), ORL_DIR);
});

test.after.always(async () => {
  if (skip) return;
  await app?.close();
  await cluster?.stop();
});


t('two GPU adaptors behind the RM: one killed under traffic, in-flight batches fail clearly, later ones go to the survivor', async (tt) => {
  const rm = await RmClient.connect(app);
  // Two verifiers (one per Process: a verifier serves its continuation tags on its Process);
  // least loaded spreads them over both adaptors (load = contexts, then grants).
  const app2 = await connect(cluster.controller, { name: 'rm-facever-test-2' });
  const rm2 = await RmClient.connect(app2);
  const v = await Verifier.open(app, { design: 'chain', ids: meta.ids, slots: 4, maxBatch: 64, rm, timeoutMs: 10_000 });
  const other = await Verifier.open(app2, { design: 'fast-star', ids: meta.ids, slots: 2, maxBatch: 64, rm: rm2, timeoutMs: 10_000 });
  try {
    const used = v.gpuInfo.instance ?? '';
    tt.true(['gpu', 'gpu2'].includes(used), `instance ${used}`);
    tt.not(other.gpuInfo.instance, used, 'the second verifier got the other adaptor');
    const batch = batchOf(64);
    const good = [...(await v.verify(batch)).scores];
    tt.deepEqual([...(await other.verify(batch)).scores], good);
    // Traffic: 6 workers, each batch at most the verifier's timeout; kill the adaptor v uses.
    const errors: string[] = [];
    let okBefore = 0;
    let okAfter = 0;
    let killed = false;
    let killedAt = 0;
    let firstOkMs = 0;
    let stop = false;
    const worker = async (): Promise<void> => {
      while (!stop) {
        const t0 = Date.now();
        try {
          const r = await v.verify(batch);
          tt.deepEqual([...r.scores], good);
          if (killed) {
            if (okAfter++ === 0) firstOkMs = Date.now() - killedAt;
          } else okBefore++;
        } catch (err) {
          tt.true(err instanceof FractosError, String(err));
          errors.push((err as Error).message);
          await new Promise((r) => setTimeout(r, 20));
        }
        tt.true(Date.now() - t0 < 12_000, 'no batch hangs past its timeout');
      }
    };
    const workers = Array.from({ length: 6 }, () => worker());
    while (okBefore < 6) await new Promise((r) => setTimeout(r, 10));
    killedAt = Date.now();
    await cluster.kill9(used);
    killed = true;
    const deadline = Date.now() + 30_000;
    while (okAfter < 12 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    stop = true;
    await Promise.all(workers);
    tt.true(okAfter >= 12, `batches after the kill succeeded: ${okAfter}; errors: ${errors.slice(0, 5).join(' | ')}`);
    tt.true(errors.length > 0, 'batches in flight at the kill failed');
    const unclear = errors.filter((e) => !/^(EFAULT: (GPU adaptor went away|batch aborted: a GPU adaptor or FS object was revoked)|EAGAIN: GPU adaptor unavailable)/.test(e));
    tt.deepEqual(unclear, [], 'every failure says the GPU adaptor went away or is being replaced');
    const survivor = used === 'gpu' ? 'gpu2' : 'gpu';
    tt.is(v.gpuInfo.instance, survivor);
    // The other verifier was on the survivor all along and is untouched.
    tt.deepEqual([...(await other.verify(batch)).scores], good);
    // The RM now grants only the survivor.
    const g = await rm.acquire('gpu');
    tt.is(g.name, survivor);
    await g.release();
    const by = (c: string): number => errors.filter((e) => e.startsWith(c)).length;
    tt.log(`kill -9 of ${used}: ${okBefore} batches ok before; ${by('EFAULT')} in flight failed EFAULT, ${by('EAGAIN')} refused EAGAIN while re-acquiring; first ok on ${survivor} ${firstOkMs} ms after the kill; ${okAfter} ok after`);
  } finally {
    await v.close();
    await other.close();
    await rm.close();
    await rm2.close();
    await app2.close();
  }
});

t('facever serve finds the RM by itself and serves over HTTP', async (tt) => {
  const s = await spawnFractos(['facever', 'serve', '--port', '0', '--controller', cluster.controller, '--slots', '1', '--max-batch', '8'], /^ready facever port=\d+ .* rm=rm gpu-instance=gpu/, { timeoutMs: 30_000 });
  try {
    const port = Number(/port=(\d+)/.exec(s.line)![1]);
    const raw = Buffer.from(loadOrl(ORL_DIR, 2, 3));
    const pgm = readFileSync(join(ORL_DIR, 's1', '2.pgm'));
    const r = await fetch(`http://127.0.0.1:${port}/verify`, { method: 'POST', body: JSON.stringify([{ id: 1, image: pgm.toString('base64') }, { id: 2, image: raw.toString('base64') }]), headers: { 'content-type': 'application/json' } });
    tt.is(r.status, 200);
    const j = (await r.json()) as { results: { id: number; score: number }[] };
    tt.is(j.results.length, 2);
  } finally {
    await s.stop();
  }
});

/**
 * `fractos demo` (`npm start`): the product's main job on one machine. Starts the
 * single-host default as child processes (a Controller, a blockdev on a sparse file in a
 * fresh folder under os.tmpdir(), the FS, the GPU adaptor with `auto`), enrolls the ORL
 * faces in the FS, verifies a batch of real pairs through the chain design (DAX read -> GPU
 * kernel -> scores to the app), prints the scores, the accuracy (ROC AUC, EER) on every ORL pair and where the time
 * went, then tears everything down. Exit 0 on success, 1 on any failure; on Ctrl-C or
 * SIGTERM the children are stopped and the scratch folder removed (exit 130 / 143).
 */
import type { Command } from 'commander';
import { equalErrorRate, orlPairs, rocAuc } from '../facever-app/accuracy.js';
import { scorePairs } from '../facever-app/bench.js';
import { LocalCluster } from '../facever-app/cluster.js';
import { enroll, loadOrl } from '../facever-app/store.js';
import { DESIGNS, Verifier, type Design } from '../facever-app/verifier.js';
import { FsClient } from '../fs-service/client.js';
import { connect, FractosError, type Process } from '../libfractos/index.js';
import { resolveDataset } from '../facever-app/dataset.js';
import { cleanupOnSignals } from '../testbed/scratch.js';
import { DATASET_HELP } from './gpu.js';

const say = (s = ''): void => {
  process.stdout.write(`${s}\n`);
};
const ms = (us: number): string => `${(us / 1000).toFixed(2)} ms`;

async function linkTotals(p: Process): Promise<{ frames: number; bytes: number }> {
  let frames = 0;
  let bytes = 0;
  for (const l of (await p.stats()).links) {
    frames += l.framesIn + l.framesOut;
    bytes += l.bytesIn + l.bytesOut;
  }
  return { frames, bytes };
}

async function demo(opts: { dataset?: string; backend: string; design: string; batch: string }): Promise<void> {
  const design = opts.design as Design;
  if (!DESIGNS.includes(design)) throw new FractosError('EINVAL', `--design must be one of ${DESIGNS.join(', ')}`);
  const o = { ...opts, dataset: resolveDataset(opts.dataset) };
  const times: [string, number][] = [];
  const timed = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    const r = await f();
    times.push([what, (performance.now() - t) * 1000]);
    return r;
  };
  say('FractOS-TS face verification demo (single host: one Controller, blockdev on a file, FS, GPU adaptor)');
  say(`dataset ${o.dataset}`);
  say();
  say('starting services:');
  const cluster = await timed('start services (4 processes)', () => LocalCluster.start({ gpuBackend: o.backend as 'auto', log: say }));
  say(`scratch ${cluster.dir} (removed on exit)`);
  let p: Process | undefined;
  let v: Verifier | undefined;
  try {
    p = await connect(cluster.controller, { name: 'facever-demo' });
    const app = p;
    const fs = await FsClient.connect(app);
    say();
    const meta = await timed('enroll 40 faces into the FS', () => enroll(app, fs, o.dataset, { log: say }));
    v = await timed(`open ${design} pipeline (files, GPU context, buffer pool)`, () =>
      Verifier.open(app, { design, ids: meta.ids, gridX: meta.gridX, gridY: meta.gridY, slots: 2, maxBatch: 256 }));
    const verifier = v;
    say(`GPU: ${v.gpuInfo.backend} (${v.gpuInfo.device}); design ${design}; grid ${meta.gridX}x${meta.gridY}; threshold ${meta.threshold.toFixed(1)} (accept when score <= threshold)`);

    // A batch of real pairs: genuine and impostor, spread over the subjects.
    const all = orlPairs(meta.ids);
    const n = Math.min(Number(o.batch) || 16, 256);
    const batch = Array.from({ length: n }, (_, i) => all[(i * 37) % all.length]!);
    const input = batch.map((pr) => ({ id: pr.enrolled, image: loadOrl(o.dataset, pr.probe, pr.photo) }));
    await verifier.verify(input); // warm-up (first DAX reads, first launch)
    const before = await linkTotals(app);
    const r = await timed(`verify a batch of ${n} pairs`, () => verifier.verify(input));
    const after = await linkTotals(app);
    say();
    say(`batch of ${n} pairs (probe photo vs enrolled id):`);
    say(`  ${'probe'.padEnd(10)} ${'claimed id'.padEnd(10)} ${'score'.padStart(10)}  decision  truth`);
    let correct = 0;
    batch.forEach((pr, i) => {
      const s = r.scores[i]!;
      const accept = s <= meta.threshold;
      if (accept === pr.genuine) correct++;
      say(`  ${`s${pr.probe}/${pr.photo}`.padEnd(10)} ${`s${pr.enrolled}`.padEnd(10)} ${s.toFixed(1).padStart(10)}  ${(accept ? 'match' : 'no match').padEnd(8)}  ${pr.genuine ? 'genuine' : 'impostor'}${accept === pr.genuine ? '' : '  (error)'}`);
    });
    say(`  ${correct}/${n} decisions correct`);
    say();
    say('where the time went in that batch:');
    say(`  end to end                    ${ms(r.totalUs)}`);
    for (const [k, us] of Object.entries(r.stages)) say(`  ${k.padEnd(29)} ${ms(us)}`);
    say(`  Controller links: ${after.frames - before.frames - 2} frames, ${((after.bytes - before.bytes) / 1024).toFixed(0)} KiB`);

    const scores = await timed(`score all ${all.length} ORL pairs`, () => scorePairs(verifier, o.dataset, all));
    const g = scores.filter((_, i) => all[i]!.genuine);
    const im = scores.filter((_, i) => !all[i]!.genuine);
    const { eer } = equalErrorRate(g, im);
    say();
    say(`accuracy on ${all.length} ORL pairs (${g.length} genuine, ${im.length} impostor; one enrolled photo per person):`);
    say(`  ROC AUC ${rocAuc(g, im).toFixed(4)}   EER ${(100 * eer).toFixed(2)}%`);
  } finally {
    await v?.close().catch(() => {});
    await p?.close();
    await timed('tear down', () => cluster.stop());
  }
  say();
  say('time per step:');
  for (const [k, us] of times) say(`  ${k.padEnd(52)} ${ms(us)}`);
  say();
  say('done: all services stopped.');
}

export function register(program: Command): void {
  program
    .command('demo')
    .description('start the single-host stack, enroll the ORL faces, verify real pairs, print scores, accuracy and timings, tear down')
    .option('--dataset <dir>', DATASET_HELP)
    .option('--backend <kind>', 'GPU backend: auto | cpu | cuda', 'auto')
    .option('--design <d>', 'chain | fast-star | star', 'chain')
    .option('--batch <n>', 'pairs in the demo batch', '16')
    .action(async (o: { dataset?: string; backend: string; design: string; batch: string }) => {
      cleanupOnSignals('fractos demo');
      try {
        await demo(o);
        process.exit(0);
      } catch (err) {
        process.stderr.write(`fractos demo: ${(err as Error).message}\n`);
        process.exit(1);
      }
    });
}

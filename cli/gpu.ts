/** Subcommands `gpu` (the GPU adaptor service) and `facever enroll|serve|bench`. */
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { kernelOverhead, runBench, STATS_NAME, VARIANTS, type BenchRecord, type Variant } from '../facever-app/bench.js';
import { LocalCluster, PLACEMENTS, type Placement } from '../facever-app/cluster.js';
import { DATASET_ENV, resolveDataset } from '../facever-app/dataset.js';
import { runLoadtest } from '../facever-app/loadtest.js';
import { writePlots } from '../facever-app/plots.js';
import { serve, portOf, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_PEER, DEFAULT_MAX_READING, DEFAULT_MAX_READING_PER_PEER, DEFAULT_MIN_BODY_RATE } from '../facever-app/server.js';
import { DEFAULT_PREFIX, enroll, readMeta } from '../facever-app/store.js';
import { DESIGNS, Verifier, type Design } from '../facever-app/verifier.js';
import { FsClient } from '../fs-service/client.js';
import { openBackend, type BackendKind } from '../gpu-adaptor/backend.js';
import { GpuService } from '../gpu-adaptor/service.js';
import { connect, FractosError, type Process } from '../libfractos/index.js';
import { DEFAULT_CONTROLLER } from './core.js';
import { cleanupOnSignals } from '../testbed/scratch.js';
import { superviseService } from './lifecycle.js';
import { startService } from './start-service.js';
import { RM_HELP, registerWithRm } from './rm.js';
import { RmClient } from '../rm/index.js';
import { die, log } from './log.js';

export function register(program: Command): void {
  program
    .command('gpu')
    .description('run the GPU adaptor service until killed (publishes NAME.init)')
    .option('--backend <kind>', 'cuda | cpu | auto', 'auto')
    .option('--controller <addr>', 'Controller address', DEFAULT_CONTROLLER)
    .option('--name <name>', 'bootstrap prefix', 'gpu')
    .option('--barrier-timeout <ms>', 'how long a barrier waits for its invocations', '10000')
    .option('--served-memory', 'cpu backend: hand out device memory as served Memory (as cuda) instead of shared host memory')
    .option('--rm <name>', RM_HELP)
    .option('--capacity <n>', 'capacity reported to the resource manager (contexts; load = open contexts)', '16')
    .action(async (o: { backend: string; controller: string; name: string; barrierTimeout: string; servedMemory?: boolean; rm?: string; capacity: string }) => {
      try {
        if (!['cuda', 'cpu', 'auto'].includes(o.backend)) throw new FractosError('EINVAL', `--backend must be cuda, cpu or auto, got '${o.backend}'`);
        const backend = openBackend(o.backend as BackendKind | 'auto');
        const capacity = Number(o.capacity);
        if (!Number.isInteger(capacity) || capacity < 1) throw new FractosError('EINVAL', `--capacity must be an integer >= 1, got '${o.capacity}'`);
        const started = await startService('gpu', async () => {
          const p = await connect(o.controller, { name: `${o.name}-adaptor`, memoryDescriptors: true });
          try {
            const svc = await GpuService.start(p, backend, { name: o.name, barrierTimeoutMs: Number(o.barrierTimeout), sharedMemory: !o.servedMemory, log });
            const init = await p.kvGet(`${o.name}.init`);
            const reg = registerWithRm(p, o.rm, { kind: 'gpu', name: o.name, capacity, requests: { init } }, () => svc.stats().contexts);
            return { p, svc, reg };
          } catch (err) {
            await p.close().catch(() => {});
            throw err;
          }
        }, ({ p, svc, reg }) => ({ proc: p, close: () => reg.close().then(() => svc.close()).finally(() => p.close()) }));
        if (!started) return;
        started.p.on('handlerError', (err: unknown) => log.warn({ err: String(err) }, 'handler error'));
        process.stdout.write(`ready gpu backend=${backend.kind} device=${backend.deviceName} memory=${started.svc.memoryKind}\n`);
      } catch (err) {
        die(err);
      }
    });
  registerFacever(program);
}

/** Help text of every `--dataset` option. */
export const DATASET_HELP = `ORL faces, s<N>/<k>.pgm; relative to the working directory (default: $${DATASET_ENV}, else shared/datasets/att-faces next to the checkout)`;

function checkDesign(d: string): Design {
  if (!(DESIGNS as readonly string[]).includes(d)) throw new FractosError('EINVAL', `--design must be one of ${DESIGNS.join(', ')}, got '${d}'`);
  return d as Design;
}

const out = (s: string): boolean => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);

function registerFacever(program: Command): void {
  const fv = program.command('facever').description('face verification over the FS and the GPU adaptor (enroll, serve, bench, loadtest)');

  fv.command('enroll')
    .description('store photo 1 of each ORL subject as <prefix>/s<N>.raw in the FS, and the decision threshold in <prefix>/meta.json')
    .option('--dataset <dir>', DATASET_HELP)
    .option('--controller <addr>', 'Controller address', DEFAULT_CONTROLLER)
    .option('--fs <name>', 'FS bootstrap prefix', 'fs')
    .option('--prefix <path>', 'FS path prefix', DEFAULT_PREFIX)
    .action(async (o: { dataset?: string; controller: string; fs: string; prefix: string }) => {
      let p: Process | undefined;
      try {
        const dataset = resolveDataset(o.dataset);
        p = await connect(o.controller, { name: 'facever-enroll' });
        const fs = await FsClient.connect(p, o.fs);
        const meta = await enroll(p, fs, dataset, { prefix: o.prefix, log: out });
        out(`ids ${meta.ids.length} grid ${meta.gridX}x${meta.gridY} threshold ${meta.threshold.toFixed(2)} auc ${meta.auc.toFixed(4)} eer ${meta.eer.toFixed(4)}`);
        await p.close();
      } catch (err) {
        await p?.close();
        die(err);
      }
    });

  fv.command('serve')
    .description('answer POST /verify with scores and decisions (see facever-app/server.ts)')
    .requiredOption('--port <n>', 'TCP port (0 picks one)')
    .option('--host <addr>', 'listen address', '127.0.0.1')
    .option('--design <d>', 'chain | fast-star | star', 'chain')
    .option('--controller <addr>', 'Controller address', DEFAULT_CONTROLLER)
    .option('--gpu <name>', 'GPU adaptor bootstrap prefix', 'gpu')
    .option('--fs <name>', 'FS bootstrap prefix', 'fs')
    .option('--prefix <path>', 'FS path prefix of the enrolled files', DEFAULT_PREFIX)
    .option('--slots <n>', 'pre-allocated GPU buffer sets (batches in flight)', '4')
    .option('--max-batch <n>', 'most pairs per batch', '256')
    .option('--max-queued <n>', 'batches waiting for a buffer set before 503', '16')
    .option('--threshold <x>', 'decision threshold (default: the EER threshold from enrollment)')
    .option('--max-reading <n>', 'request bodies being read at once, all clients (they do not hold the GPU queue)', String(DEFAULT_MAX_READING))
    .option('--max-reading-per-peer <n>', 'request bodies being read at once from one client address', String(DEFAULT_MAX_READING_PER_PEER))
    .option('--min-body-rate <bytes/s>', 'a request body slower than this after a 2 s grace is cut with 408 (0: no minimum)', String(DEFAULT_MIN_BODY_RATE))
    .option('--max-connections <n>', 'open connections, all clients', String(DEFAULT_MAX_CONNECTIONS))
    .option('--max-connections-per-peer <n>', 'open connections from one client address', String(DEFAULT_MAX_CONNECTIONS_PER_PEER))
    .option('--rm <name>', 'get the GPU adaptor and the FS from this resource manager (default: from \'rm\' when one is published; --gpu/--fs are then unused)')
    .option('--no-rm', 'find the GPU adaptor and the FS by bootstrap name (--gpu, --fs) even when a resource manager is published')
    .action(async (o: { port: string; host: string; design: string; controller: string; gpu: string; fs: string; prefix: string; slots: string; maxBatch: string; maxQueued: string; threshold?: string; maxReading: string; maxReadingPerPeer: string; minBodyRate: string; maxConnections: string; maxConnectionsPerPeer: string; rm?: string | false }) => {
      try {
        const design = checkDesign(o.design);
        const count = (name: string, x: string, min: number): number => {
          const n = Number(x);
          if (!Number.isInteger(n) || n < min) throw new FractosError('EINVAL', `--${name} must be an integer >= ${min}, got ${x}`);
          return n;
        };
        const limits = {
          maxReading: count('max-reading', o.maxReading, 1), maxReadingPerPeer: count('max-reading-per-peer', o.maxReadingPerPeer, 1),
          minBodyRate: count('min-body-rate', o.minBodyRate, 0),
          maxConnections: count('max-connections', o.maxConnections, 1), maxConnectionsPerPeer: count('max-connections-per-peer', o.maxConnectionsPerPeer, 1),
        };
        const p = await connect(o.controller, { name: `facever-${design}` });
        const rm = o.rm === false ? null : typeof o.rm === 'string' ? await RmClient.connect(p, o.rm) : await RmClient.ifPublished(p, 'rm');
        const fsGrant = rm ? await rm.acquire('fs', { waitMs: 10_000 }) : null;
        const fs = fsGrant ? FsClient.fromRoots(p, fsGrant.requests) : await FsClient.connect(p, o.fs);
        const meta = await readMeta(p, fs, o.prefix);
        await fsGrant?.release();
        const v = await Verifier.open(p, {
          design, ids: meta.ids, gridX: meta.gridX, gridY: meta.gridY, gpuName: o.gpu, fsName: o.fs, prefix: o.prefix,
          slots: Number(o.slots), maxBatch: Number(o.maxBatch), maxQueued: Number(o.maxQueued), rm: rm ?? undefined,
        });
        v.on('gpu-lost', (ev: string) => process.stderr.write(`facever: GPU adaptor lost (${ev}); re-initialising\n`));
        v.on('gpu-ready', (dev: string) => process.stderr.write(`facever: GPU adaptor back (${dev}${v.gpuInfo.instance ? `, instance ${v.gpuInfo.instance}` : ''})\n`));
        const threshold = o.threshold !== undefined ? Number(o.threshold) : meta.threshold;
        const server = await serve(v, { port: Number(o.port), host: o.host, threshold, ...limits });
        superviseService({
          name: 'facever',
          proc: p,
          close: () => {
            server.close();
            return v.close().then(() => rm?.close()).finally(() => p.close());
          },
        });
        // Ready only once a stop is handled: a SIGINT right after this line exits 0.
        out(`ready facever port=${portOf(server)} design=${design} ids=${meta.ids.length} threshold=${threshold.toFixed(2)} gpu=${v.gpuInfo.backend}${rm ? ` rm=${rm.name} gpu-instance=${v.gpuInfo.instance}` : ''}`);
      } catch (err) {
        die(err);
      }
    });

  fv.command('loadtest')
    .description('goodput of facever serve under overload: autocannon (a separate process) at 1x, 8x, 32x the buffer sets in connections, retrying at once on 503 (facever-app/loadtest.ts)')
    .option('--dataset <dir>', DATASET_HELP)
    .option('--controller <addr>', 'use running services (enrolled) instead of starting a local cluster')
    .option('--backend <kind>', 'GPU backend of the local cluster', 'cpu')
    .option('--design <d>', 'chain | fast-star | star', 'chain')
    .option('--slots <n>', 'the server\'s GPU buffer sets = connections at 1x', '8')
    .option('--batch <n>', 'pairs per request', '8')
    .option('--factors <list>', 'overload factors (connections = factor x slots)', '1,8,32')
    .option('--duration <s>', 'seconds of load per level', '10')
    .option('--json', 'print DESIGN.md §6 records as one JSON array')
    .action(async (o: { dataset?: string; controller?: string; backend: string; design: string; slots: string; batch: string; factors: string; duration: string; json?: boolean }) => {
      try {
        const r = await runLoadtest({
          dataset: resolveDataset(o.dataset), controller: o.controller, backend: o.backend as 'cpu', design: checkDesign(o.design), slots: Number(o.slots), batch: Number(o.batch),
          factors: o.factors.split(',').map(Number), durationS: Number(o.duration), log: (s) => process.stderr.write(`${s}\n`),
        });
        out(o.json ? JSON.stringify(r.records, null, 2) : r.table);
      } catch (err) {
        die(err);
      }
    });

  fv.command('bench')
    .description('accuracy, latency vs batch, throughput vs in flight, frames/bytes over every Controller link for chain, fast-star, star (single host and three-node placement)')
    .option('--dataset <dir>', DATASET_HELP)
    .option('--json', 'print DESIGN.md §6 records as one JSON array')
    .option('--out <dir>', 'write the SVG plots under DIR/<placement>/ (relative to the working directory; without --out no files are written)')
    .option('--controller <addr>', 'use running services (enrolled) instead of starting a local cluster (placement single)')
    .option('--placement <p>', 'single | disaggregated | both (single: one Controller; disaggregated: app, storage and GPU on three Controllers over TCP)', 'both')
    .option('--backend <kind>', 'GPU backend of the local cluster', 'auto')
    .option('--served-memory', 'GPU adaptor: served device memory even on cpu (the pre-shared-memory path)')
    .option('--fs-cache-blocks <n>', 'FS block cache of the runs (star reads reach the device; the FS keeps at least 16 blocks); star+cache runs with the FS default', '0')
    .option('--designs <list>', `comma-separated designs (${VARIANTS.join(', ')})`, VARIANTS.join(','))
    .option('--batches <list>', 'latency batch sizes', '1,4,16,64,256')
    .option('--inflight <list>', 'throughput: batches in flight', '1,2,4,8')
    .option('--reps <n>', 'timed batches per latency point', '10')
    .option('--warmup-ms <ms>', 'untimed batches per design before its latency points (the first design would otherwise run on a cold cluster)', '1000')
    .action(async (o: { dataset?: string; json?: boolean; out?: string; controller?: string; placement: string; backend: string; servedMemory?: boolean; fsCacheBlocks: string; designs: string; batches: string; inflight: string; reps: string; warmupMs: string }) => {
      cleanupOnSignals('fractos facever bench');
      const say = (s: string): void => {
        process.stderr.write(`${s}\n`);
      };
      const all: BenchRecord[] = [];
      const texts: string[] = [];
      let identicalAll = true;
      try {
        const dataset = resolveDataset(o.dataset);
        const outDir = o.out === undefined ? undefined : resolve(o.out);
        const nums = (s: string): number[] => s.split(',').map(Number);
        const designs = o.designs.split(',').map((d) => {
          if (!(VARIANTS as readonly string[]).includes(d)) throw new FractosError('EINVAL', `--designs: one of ${VARIANTS.join(', ')}, got '${d}'`);
          return d as Variant;
        });
        if (!['single', 'disaggregated', 'both'].includes(o.placement)) throw new FractosError('EINVAL', `--placement must be single, disaggregated or both, got '${o.placement}'`);
        const placements: Placement[] = o.controller ? ['single'] : o.placement === 'both' ? [...PLACEMENTS] : [o.placement as Placement];
        const cacheBlocks = Number(o.fsCacheBlocks);
        for (const placement of placements) {
          let cluster: LocalCluster | undefined;
          let p: Process | undefined;
          const stats: Process[] = [];
          try {
            if (!o.controller) {
              say(`${placement}: starting a local cluster (${placement === 'single' ? 'one Controller' : 'three Controllers over TCP: app | blockdev+fs | gpu'})`);
              cluster = await LocalCluster.start({ gpuBackend: o.backend as 'auto', placement, fsCacheBlocks: cacheBlocks, gpuServedMemory: o.servedMemory, log: say });
              for (const a of cluster.controllers) stats.push(await connect(a, { name: STATS_NAME }));
            }
            p = await connect(o.controller ?? cluster!.nodes.app, { name: 'facever-bench' });
            const fs = await FsClient.connect(p, 'fs', 20_000);
            const meta = cluster ? await enroll(p, fs, dataset, { log: say }) : await readMeta(p, fs);
            const c = cluster;
            const { records, identical, table } = await runBench(p, {
              dataset, meta, designs, batches: nums(o.batches), inflight: nums(o.inflight), reps: Number(o.reps), warmupMs: Number(o.warmupMs), log: say,
              placement,
              stats: c ? stats : undefined,
              setFsCache: c ? async (cached) => {
                say(`${placement}: restarting the FS with ${cached ? 'its default block cache' : `--cache-blocks ${cacheBlocks}`}`);
                await c.startFs(cached ? undefined : cacheBlocks);
              } : undefined,
              fsCacheNote: c ? `--cache-blocks ${cacheBlocks}` : 'as configured',
            });
            const kernel: BenchRecord[] = placement !== 'single' ? [] : await kernelOverhead(p, dataset, meta.ids, meta.gridX, meta.gridY).catch((e: unknown) => {
              say(`kernel overhead not measured: ${(e as Error).message}`);
              return [];
            });
            const recs = [...records, ...kernel.map((k) => ({ ...k, params: { ...k.params, placement } }))];
            all.push(...recs);
            const plots = outDir === undefined ? [] : await writePlots(recs, join(outDir, placement));
            identicalAll &&= identical;
            let t = `== placement ${placement}${cluster ? ` (gpu backend ${cluster.gpuBackend}${o.servedMemory ? ', served memory' : ''}; star reads: FS --cache-blocks ${cacheBlocks}; star+cache: FS default cache)` : ''}\n${table}`;
            t += `scores identical across designs: ${identical ? 'yes' : 'NO'}\n`;
            for (const k of kernel) t += `kernel on ${k.params.batch} pairs (${k.params.path}): ${(k.value / 1000).toFixed(2)} ms vs direct C++ ${(k.baseline! / 1000).toFixed(2)} ms = ${k.ratio!.toFixed(2)}x\n`;
            if (plots.length) t += `plots: ${plots.join(', ')}\n`;
            texts.push(t);
          } finally {
            await p?.close();
            for (const sp of stats) await sp.close();
            await cluster?.stop();
          }
        }
        if (o.json) out(JSON.stringify(all, null, 2));
        else out(texts.join('\n'));
        if (!identicalAll) process.exitCode = 1;
      } catch (err) {
        say(`fractos: ${(err as Error).message}`);
        process.exitCode = 1;
      }
    });
}

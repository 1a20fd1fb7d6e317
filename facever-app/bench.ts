/**
 * `fractos facever bench`: the three designs side by side on the same services (paper
 * §6.5): accuracy (ROC AUC, EER) on the ORL protocol, end-to-end latency vs batch size,
 * throughput vs batches in flight, frames and bytes on the Controller's links per batch,
 * and (cpu backend) the kernel through FractOS vs the same C++ called directly.
 * Records follow DESIGN.md §6: `{ bench, metric, value, unit, baseline, ratio, params }`;
 * for frames, bytes and latency the baseline is star at the same parameters.
 */
import { IMAGE_BYTES, openBackend } from '../gpu-adaptor/backend.js';
import { GpuContext } from '../gpu-adaptor/client.js';
import { Invoke, InvokeReply } from '../gpu-adaptor/schema.js';
import type { Process } from '../libfractos/process.js';
import { equalErrorRate, orlPairs, rocAuc, type Pair } from './accuracy.js';
import { chiSquare, lbpHistogram } from './lbp.js';
import { loadOrl, type EnrollMeta } from './store.js';
import { DESIGNS, Verifier, type Design } from './verifier.js';

export type { BenchRecord } from '../bench/records.js';
import type { BenchRecord } from '../bench/records.js';

/** A design as benched: `star+cache` is star with the FS block cache at its default size. */
export type Variant = Design | 'star+cache';
export const VARIANTS: readonly Variant[] = [...DESIGNS, 'star+cache'];
const designOf = (v: Variant): Design => (v === 'star+cache' ? 'star' : v);

export interface BenchOptions {
  dataset: string;
  meta: EnrollMeta;
  designs?: readonly Variant[];
  /** Placement label put in every record's params ('single', 'disaggregated'). */
  placement?: string;
  /**
   * One Process per Controller of the deployment, connected with the name `STATS_NAME`
   * (their own links are left out of the sums); default: `p` alone (its link included).
   */
  stats?: readonly Process[];
  /**
   * Set the FS block cache before a variant: `blocks` = undefined for the FS default
   * (star+cache), else the size the run uses for reads to reach the device (chain and
   * fast-star never use it: DAX). Absent: star+cache is skipped.
   */
  setFsCache?: (cached: boolean) => Promise<void>;
  /** What the FS cache is in the non-cached runs (reported). */
  fsCacheNote?: string;
  batches?: readonly number[];
  inflight?: readonly number[];
  /** Batch size of the throughput runs (default 64). */
  throughputBatch?: number;
  /** Timed repetitions per latency point (default 10). */
  reps?: number;
  /**
   * Warm-up of each design before its latency points (ms, default 1000): batches of the
   * latency sizes in turn, untimed. Without it the first design's first point ran on a
   * cold cluster (V8 still optimising the paths of every Process on it).
   */
  warmupMs?: number;
  /** Batches per in-flight stream in the throughput runs (default 8). */
  streamBatches?: number;
  log?: (s: string) => void;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[(s.length - 1) >> 1]! + s[s.length >> 1]!) / 2 : NaN;
};

/** Name of the Processes that read Controller stats (their links are not counted). */
export const STATS_NAME = 'facever-stats';

export interface LinkTotals {
  frames: number;
  bytes: number;
  /** Frames per link: `C<id>/<process name>` or `C<a>-C<b>` (peer link). */
  byLink: Map<string, number>;
  peerFrames: number;
  peerBytes: number;
}

/**
 * Frames and bytes over every link of every Controller: each Process link (it belongs to
 * one Controller), and each peer link once, from the side with the lower Controller id
 * (the other side counts the same frames). The stats Processes' own links are left out.
 */
export async function linkTotals(stats: readonly Process[], statsName = STATS_NAME): Promise<LinkTotals> {
  const t: LinkTotals = { frames: 0, bytes: 0, byLink: new Map(), peerFrames: 0, peerBytes: 0 };
  for (const sp of stats) {
    const s = await sp.stats();
    for (const l of s.links) {
      if (l.kind === 'process' && l.name === statsName) continue;
      if (l.kind === 'peer' && l.id < s.controller) continue;
      const f = l.framesIn + l.framesOut;
      const b = l.bytesIn + l.bytesOut;
      t.frames += f;
      t.bytes += b;
      if (l.kind === 'peer') {
        t.peerFrames += f;
        t.peerBytes += b;
      }
      const key = l.kind === 'peer' ? `C${s.controller}-C${l.id}` : `C${s.controller}/${l.name}`;
      t.byLink.set(key, (t.byLink.get(key) ?? 0) + f);
    }
  }
  return t;
}

/** Scores of `pairs` through `v`, in batches of `v.maxBatch`. */
export async function scorePairs(v: Verifier, dataset: string, pairs: readonly Pair[]): Promise<number[]> {
  const scores: number[] = [];
  for (let i = 0; i < pairs.length; i += v.maxBatch) {
    const chunk = pairs.slice(i, i + v.maxBatch).map((pr) => ({ id: pr.enrolled, image: loadOrl(dataset, pr.probe, pr.photo) }));
    scores.push(...(await v.verify(chunk)).scores);
  }
  return scores;
}

/** Run the benchmark on an app Process connected to a Controller that has the FS (enrolled) and the GPU adaptor. */
export async function runBench(p: Process, o: BenchOptions): Promise<{ records: BenchRecord[]; identical: boolean; table: string }> {
  const log = o.log ?? (() => {});
  const designs = (o.designs ?? VARIANTS).filter((d) => d !== 'star+cache' || o.setFsCache);
  const placement = o.placement ?? 'single';
  const statsPs = o.stats ?? [p];
  const statsName = o.stats ? STATS_NAME : '\0';
  const batches = o.batches ?? [1, 4, 16, 64, 256];
  const inflight = o.inflight ?? [1, 2, 4, 8];
  const reps = o.reps ?? 10;
  const warmupMs = o.warmupMs ?? 1000;
  const tb = o.throughputBatch ?? 64;
  const pairs = orlPairs(o.meta.ids);
  const images = new Map<string, Uint8Array>();
  const img = (id: number, k: number): Uint8Array => {
    const key = `${id}/${k}`;
    let b = images.get(key);
    if (!b) images.set(key, (b = loadOrl(o.dataset, id, k)));
    return b;
  };
  const batchOf = (b: number, off: number): { id: number; image: Uint8Array }[] =>
    Array.from({ length: b }, (_, i) => {
      const pr = pairs[(off + i) % pairs.length]!;
      return { id: pr.enrolled, image: img(pr.probe, pr.photo) };
    });

  const raw: { design: Variant; metric: string; value: number; unit: string; params: Record<string, number | string> }[] = [];
  const scoresBy = new Map<Variant, number[]>();
  let cached = false;
  const maxInflight = Math.max(...inflight);
  for (const design of designs) {
    const wantCache = design === 'star+cache';
    if (o.setFsCache && wantCache !== cached) {
      await o.setFsCache(wantCache);
      cached = wantCache;
    }
    log(`${placement}: design ${design}: opening (pool of ${maxInflight} GPU buffer sets)`);
    const v = await Verifier.open(p, { design: designOf(design), ids: o.meta.ids, slots: maxInflight, maxBatch: Math.max(...batches, tb), gridX: o.meta.gridX, gridY: o.meta.gridY, maxQueued: 64 });
    try {
      const scores = await scorePairs(v, o.dataset, pairs);
      scoresBy.set(design, scores);
      const g = scores.filter((_, i) => pairs[i]!.genuine);
      const im = scores.filter((_, i) => !pairs[i]!.genuine);
      raw.push({ design, metric: 'roc_auc', value: rocAuc(g, im), unit: '', params: { pairs: pairs.length } });
      raw.push({ design, metric: 'eer', value: equalErrorRate(g, im).eer, unit: '', params: { pairs: pairs.length } });
      const w0 = performance.now();
      let warm = 0;
      for (; performance.now() - w0 < warmupMs; warm++) {
        const b = batches[warm % batches.length]!;
        await v.verify(batchOf(b, warm * b));
      }
      log(`  ${design}: warm-up, ${warm} batches in ${(performance.now() - w0).toFixed(0)} ms`);
      for (const b of batches) {
        for (let w = 0; w < 2; w++) await v.verify(batchOf(b, w * b));
        // Frames and bytes: a separate, untimed run of `reps` batches (the stats calls are
        // not inside the latency loop).
        const before = await linkTotals(statsPs, statsName);
        for (let r = 0; r < reps; r++) await v.verify(batchOf(b, r * b));
        const after = await linkTotals(statsPs, statsName);
        const lat: number[] = [];
        const stageUs = new Map<string, number[]>();
        for (let r = 0; r < reps; r++) {
          const res = await v.verify(batchOf(b, r * b));
          lat.push(res.totalUs);
          for (const [k, us] of Object.entries(res.stages)) stageUs.set(k, [...(stageUs.get(k) ?? []), us]);
        }
        for (const [k, us] of stageUs) raw.push({ design, metric: 'stage_p50_us', value: median(us), unit: 'us', params: { batch: b, stage: k } });
        const self = o.stats ? 0 : 2; // p's own stats call, when p is the stats Process
        const frames = (after.frames - before.frames - self) / reps;
        const bytes = (after.bytes - before.bytes) / reps;
        raw.push({ design, metric: 'latency_p50_us', value: median(lat), unit: 'us', params: { batch: b } });
        raw.push({ design, metric: 'frames', value: frames, unit: 'frames/batch', params: { batch: b } });
        raw.push({ design, metric: 'bytes', value: bytes, unit: 'bytes/batch', params: { batch: b } });
        if (statsPs.length > 1) {
          raw.push({ design, metric: 'peer_frames', value: (after.peerFrames - before.peerFrames) / reps, unit: 'frames/batch', params: { batch: b } });
          raw.push({ design, metric: 'peer_bytes', value: (after.peerBytes - before.peerBytes) / reps, unit: 'bytes/batch', params: { batch: b } });
        }
        const per: string[] = [];
        for (const [k, f] of after.byLink) {
          const d = (f - (before.byLink.get(k) ?? 0)) / reps;
          if (d <= 0) continue;
          raw.push({ design, metric: 'link_frames', value: d, unit: 'frames/batch', params: { batch: b, link: k } });
          per.push(`${k} ${d.toFixed(1)}`);
        }
        const stg = [...stageUs].map(([k, us]) => `${k} ${(median(us) / 1000).toFixed(2)}`).join(', ');
        log(`  ${design} batch ${b}: p50 ${(median(lat) / 1000).toFixed(2)} ms (${stg}), ${frames.toFixed(0)} frames, ${(bytes / 1024).toFixed(0)} KiB per batch [${per.join(', ')}]`);
      }
      for (const k of inflight) {
        const t0 = performance.now();
        let done = 0;
        await Promise.all(Array.from({ length: k }, async (_, s) => {
          for (let i = 0; i < (o.streamBatches ?? 8); i++) {
            await v.verify(batchOf(tb, (s * 31 + i) * tb));
            done += tb;
          }
        }));
        const pps = done / ((performance.now() - t0) / 1000);
        raw.push({ design, metric: 'throughput_pairs_s', value: pps, unit: 'pairs/s', params: { batch: tb, inflight: k } });
        log(`  ${design} in flight ${k}: ${pps.toFixed(0)} pairs/s`);
      }
    } finally {
      await v.close();
    }
  }
  // Identical scores across designs.
  if (o.setFsCache && cached) await o.setFsCache(false);
  const ref = scoresBy.values().next().value as number[] | undefined;
  let identical = true;
  for (const s of scoresBy.values()) if (!ref || s.length !== ref.length || s.some((x, i) => x !== ref[i])) identical = false;

  // TS reference accuracy as the accuracy baseline.
  const hist = new Map<string, Uint32Array>();
  const h = (id: number, k: number): Uint32Array => {
    const key = `${id}/${k}`;
    let x = hist.get(key);
    if (!x) hist.set(key, (x = lbpHistogram(img(id, k), 92, 112, o.meta.gridX, o.meta.gridY)));
    return x;
  };
  const tsScores = pairs.map((pr) => chiSquare(h(pr.probe, pr.photo), h(pr.enrolled, 1)));
  const tg = tsScores.filter((_, i) => pairs[i]!.genuine);
  const ti = tsScores.filter((_, i) => !pairs[i]!.genuine);
  const refAcc: Record<string, number> = { roc_auc: rocAuc(tg, ti), eer: equalErrorRate(tg, ti).eer };

  const records: BenchRecord[] = raw.map((r) => {
    let baseline: number | null;
    if (r.metric === 'roc_auc' || r.metric === 'eer') baseline = refAcc[r.metric]!;
    else if (r.metric !== 'throughput_pairs_s') {
      baseline = raw.find((x) => x.design === 'star' && x.metric === r.metric && x.params.batch === r.params.batch && x.params.link === r.params.link && x.params.stage === r.params.stage)?.value ?? null;
    } else baseline = raw.find((x) => x.design === 'star' && x.metric === r.metric && x.params.inflight === r.params.inflight)?.value ?? null;
    return {
      bench: 'facever',
      metric: r.metric,
      value: r.value,
      unit: r.unit,
      baseline,
      ratio: baseline ? r.value / baseline : null,
      params: { design: r.design, placement, fsCache: r.design === 'star+cache' ? 'default' : r.design === 'star' ? (o.fsCacheNote ?? 'as configured') : 'unused (DAX)', ...r.params },
    };
  });
  return { records, identical, table: formatTable(records, designs, batches, inflight) };
}

/**
 * The kernel on `n` pairs: through FractOS (invoke Request to the GPU adaptor, reply
 * received) vs the backend's launch called directly in this process, same data, medians of
 * `reps`. Only meaningful with the cpu backend on both sides.
 */
export async function kernelOverhead(p: Process, dataset: string, ids: number[], gridX: number, gridY: number, n = 256, reps = 10): Promise<BenchRecord[]> {
  const pairs = orlPairs(ids);
  const probes = new Uint8Array(n * IMAGE_BYTES);
  const enrolled = new Uint8Array(n * IMAGE_BYTES);
  for (let i = 0; i < n; i++) {
    const pr = pairs[i % pairs.length]!;
    probes.set(loadOrl(dataset, pr.probe, pr.photo), i * IMAGE_BYTES);
    enrolled.set(loadOrl(dataset, pr.enrolled, 1), i * IMAGE_BYTES);
  }
  // Direct.
  const be = openBackend('cpu');
  const direct: number[] = [];
  try {
    const [hp, he, hs] = [be.alloc(probes.length), be.alloc(enrolled.length), be.alloc(n * 8)];
    await be.write(hp, 0, probes);
    await be.write(he, 0, enrolled);
    const k = be.loadKernel('lbp_chi2_batch');
    for (let r = 0; r < reps + 2; r++) {
      const t = performance.now();
      await be.launch(k, { buffers: [{ handle: hp }, { handle: he }, { handle: hs }], scalars: { n, gridX, gridY } });
      if (r >= 2) direct.push((performance.now() - t) * 1000);
    }
  } finally {
    be.close();
  }
  // Through FractOS.
  const ctx = await GpuContext.open(p);
  const viaFractos: number[] = [];
  const inAdaptor: number[] = [];
  try {
    if (ctx.backend !== 'cpu') return [];
    const [gp, ge, gs] = await Promise.all([ctx.alloc(probes.length), ctx.alloc(enrolled.length), ctx.alloc(n * 8)]);
    const { cid, region } = await p.memoryCreateShared(probes.length);
    region.bytes.set(probes);
    await p.memoryCopy(cid, gp);
    region.bytes.set(enrolled);
    await p.memoryCopy(cid, ge);
    const inv = await ctx.load('lbp_chi2_batch');
    for (let r = 0; r < reps + 2; r++) {
      const t = performance.now();
      const rep = InvokeReply.decode(await p.rpc(inv, Invoke, { n, gridX, gridY }, { probes: gp, enrolled: ge, scores: gs }, { timeoutMs: 30_000 })).imms;
      if (r >= 2) {
        viaFractos.push((performance.now() - t) * 1000);
        inAdaptor.push(rep.kernelNs / 1000);
      }
    }
    await p.capDrop(cid, gp, ge, gs, inv).catch(() => {});
  } finally {
    await ctx.cleanup().catch(() => {});
  }
  const d = median(direct);
  const f = median(viaFractos);
  return [
    { bench: 'facever-kernel', metric: 'kernel_us', value: f, unit: 'us', baseline: d, ratio: f / d, params: { path: 'fractos-invoke', batch: n } },
    { bench: 'facever-kernel', metric: 'kernel_us', value: median(inAdaptor), unit: 'us', baseline: d, ratio: median(inAdaptor) / d, params: { path: 'adaptor-launch', batch: n } },
  ];
}

function formatTable(records: readonly BenchRecord[], designs: readonly Variant[], batches: readonly number[], inflight: readonly number[]): string {
  const get = (d: Variant, m: string, k: string, v: number): BenchRecord | undefined => records.find((r) => r.params.design === d && r.metric === m && r.params[k] === v);
  const w = 22;
  let s = `${'metric'.padEnd(30)}${designs.map((d) => d.padStart(w)).join('')}\n`;
  const acc = (m: string): string => `${m.padEnd(30)}${designs.map((d) => (records.find((r) => r.params.design === d && r.metric === m)?.value ?? NaN).toFixed(4).padStart(w)).join('')}\n`;
  s += acc('roc_auc') + acc('eer');
  const cell = (r: BenchRecord | undefined, f: (x: number) => string): string => (r ? `${f(r.value)}${r.ratio !== null && r.params.design !== 'star' ? ` (${r.ratio.toFixed(2)}x)` : ''}` : '-').padStart(w);
  for (const b of batches) s += `${`latency p50 ms, batch ${b}`.padEnd(30)}${designs.map((d) => cell(get(d, 'latency_p50_us', 'batch', b), (x) => (x / 1000).toFixed(2))).join('')}\n`;
  for (const b of batches) s += `${`frames/batch, batch ${b}`.padEnd(30)}${designs.map((d) => cell(get(d, 'frames', 'batch', b), (x) => x.toFixed(0))).join('')}\n`;
  for (const b of batches) s += `${`KiB/batch, batch ${b}`.padEnd(30)}${designs.map((d) => cell(get(d, 'bytes', 'batch', b), (x) => (x / 1024).toFixed(0))).join('')}\n`;
  if (records.some((r) => r.metric === 'peer_frames')) {
    for (const b of batches) s += `${`peer frames, batch ${b}`.padEnd(30)}${designs.map((d) => cell(get(d, 'peer_frames', 'batch', b), (x) => x.toFixed(0))).join('')}\n`;
    for (const b of batches) s += `${`peer KiB, batch ${b}`.padEnd(30)}${designs.map((d) => cell(get(d, 'peer_bytes', 'batch', b), (x) => (x / 1024).toFixed(0))).join('')}\n`;
  }
  for (const k of inflight) s += `${`pairs/s, ${k} in flight`.padEnd(30)}${designs.map((d) => cell(get(d, 'throughput_pairs_s', 'inflight', k), (x) => x.toFixed(0))).join('')}\n`;
  s += '(ratios vs star in parentheses)\n';
  return s;
}

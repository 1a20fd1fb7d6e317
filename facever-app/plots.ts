/**
 * SVG plots of the facever benchmark (vega-lite rendered headless by vega), after the
 * paper's Figures 12 (end-to-end latency vs batch size) and 13 (throughput vs requests in
 * flight), one line per design.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as vega from 'vega';
import * as vegaLite from 'vega-lite';
import type { BenchRecord } from './bench.js';

async function svg(spec: vegaLite.TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  return view.toSVG();
}

function line(title: string, data: object[], x: string, xTitle: string, y: string, yTitle: string, logX: boolean): vegaLite.TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title,
    width: 420,
    height: 260,
    data: { values: data },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: x, type: 'quantitative', title: xTitle, scale: logX ? { type: 'log', base: 2 } : {}, axis: { values: [...new Set(data.map((d) => (d as Record<string, number>)[x]))] } },
      y: { field: y, type: 'quantitative', title: yTitle },
      color: { field: 'design', type: 'nominal', title: 'design' },
    },
  } as vegaLite.TopLevelSpec;
}

/**
 * Write `latency.svg` (p50 µs vs batch) and `throughput.svg` (pairs/s vs batches in
 * flight) under `dir`. Returns the paths.
 */
export async function writePlots(records: readonly BenchRecord[], dir: string): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const lat = records.filter((r) => r.metric === 'latency_p50_us').map((r) => ({ design: r.params.design, batch: r.params.batch, ms: r.value / 1000 }));
  const thr = records.filter((r) => r.metric === 'throughput_pairs_s').map((r) => ({ design: r.params.design, inflight: r.params.inflight, pairs_s: r.value }));
  const out: string[] = [];
  if (lat.length) {
    const p = join(dir, 'latency.svg');
    writeFileSync(p, await svg(line('Face verification: end-to-end latency vs batch size (cf. paper Fig. 12)', lat, 'batch', 'batch size (pairs)', 'ms', 'latency p50 (ms)', true)));
    out.push(p);
  }
  if (thr.length) {
    const p = join(dir, 'throughput.svg');
    writeFileSync(p, await svg(line('Face verification: throughput vs batches in flight (cf. paper Fig. 13)', thr, 'inflight', 'batches in flight', 'pairs_s', 'throughput (pairs/s)', false)));
    out.push(p);
  }
  return out;
}

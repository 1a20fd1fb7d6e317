/**
 * Issue #7 item 8: `fractos bench micro` printed `delegate_per_cap -3.9 us`, a slope fitted
 * on noise. The fitted slope is a figure only with enough points and a 95% confidence
 * interval that excludes 0 and is narrow; otherwise `not significant (±X us)`. Synthetic
 * data with a seeded generator.
 */
import test from 'ava';
import { formatMicro, slopeRecord } from '../bench/micro.js';
import { benchRecord } from '../bench/records.js';
import { fitSlope, slopeFigure, t975 } from '../bench/slope.js';
import { expectCode } from './helpers/errors.js';

/** Deterministic uniform(0,1) (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** 3 rounds over k = 0..8 of `base + slope * k` plus noise uniform in ±`noise` (as bench micro measures). */
function synthetic(slope: number, noise: number, seed: number, rounds = 3): { xs: number[]; ys: number[] } {
  const r = rng(seed);
  const xs: number[] = [];
  const ys: number[] = [];
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k <= 8; k++) {
      xs.push(k);
      ys.push(130 + slope * k + (2 * r() - 1) * noise);
    }
  }
  return { xs, ys };
}

test('slope: a clean line is fitted exactly (slope, intercept, zero error, r2 = 1)', (t) => {
  const xs = [0, 1, 2, 3, 4];
  const f = fitSlope(xs, xs.map((x) => 10 + 2.5 * x));
  t.is(f.slope, 2.5);
  t.is(f.intercept, 10);
  t.is(f.se, 0);
  t.is(f.r2, 1);
  t.is(f.points, 5);
});

test('slope: noise without a trend gives no figure ("not significant (±X us)") over many seeds', (t) => {
  let figures = 0;
  for (let seed = 1; seed <= 200; seed++) {
    const { xs, ys } = synthetic(0, 20, seed);
    const f = slopeFigure(fitSlope(xs, ys), 'us');
    if (f.value !== null) figures++;
    else t.regex(f.text, /^not significant \(±\d+\.\d us\)$/);
  }
  // The rule's false-figure rate on pure noise is well under the 5% of the CI alone.
  t.true(figures <= 4, `${figures} of 200 noise-only fits reported a figure`);
});

test('slope: the field case (true cost ~3 us per cap under ±40 us noise) is not a figure', (t) => {
  const { xs, ys } = synthetic(3, 40, 7);
  const fit = fitSlope(xs, ys);
  const f = slopeFigure(fit, 'us');
  t.is(f.value, null, `slope ${fit.slope} ±${fit.ci95}`);
  t.true(fit.ci95 > Math.abs(fit.slope) * 0.5);
});

test('slope: a clean per-cap cost well above the noise is a figure, close to the truth', (t) => {
  const { xs, ys } = synthetic(3, 1, 3);
  const f = slopeFigure(fitSlope(xs, ys), 'us');
  t.not(f.value, null);
  t.true(Math.abs(f.value! - 3) < 0.3, String(f.value));
  t.regex(f.text, /^\d+\.\d us ±\d+\.\d us$/);
});

test('slope: too few points is not a figure even on a perfect line', (t) => {
  const xs = [0, 4, 8];
  const f = slopeFigure(fitSlope(xs, xs.map((x) => 100 + 5 * x)), 'us');
  t.is(f.value, null);
  t.regex(f.text, /not measured \(3 points, need 8\)/);
});

test('slope: a significant but imprecise slope (95% CI wider than half the slope) is not a figure', (t) => {
  // se chosen so that the CI excludes 0 but is ±70% of the slope
  const fit = { slope: 10, intercept: 0, se: 7 / t975(25), ci95: 7, r2: 0.3, points: 27 };
  t.is(slopeFigure(fit, 'us').value, null);
  t.is(slopeFigure({ ...fit, se: 4 / t975(25), ci95: 4 }, 'us').value, 10);
});

test('slope: bad input is EINVAL', async (t) => {
  await expectCode(t, Promise.resolve().then(() => fitSlope([1, 2], [1, 2])), 'EINVAL');
  await expectCode(t, Promise.resolve().then(() => fitSlope([1, 1, 1], [1, 2, 3])), 'EINVAL');
  await expectCode(t, Promise.resolve().then(() => fitSlope([1, 2, 3], [1, 2])), 'EINVAL');
  await expectCode(t, Promise.resolve().then(() => fitSlope([1, 2, 3], [1, NaN, 3])), 'EINVAL');
});

test('bench micro record and table: no number for a slope on noise, the number with its CI otherwise', (t) => {
  const noisy = synthetic(0, 20, 11);
  const r = slopeRecord('delegate_per_cap', fitSlope(noisy.xs, noisy.ys), 'us', 130, { placement: 'local' });
  t.true(Number.isNaN(r.value));
  t.is(r.ratio, null);
  t.is(r.params.significant, 'no');
  t.is(JSON.parse(JSON.stringify(r)).value, null);
  const table = formatMicro([r]);
  t.regex(table, /delegate_per_cap .*not significant \(±\d/);
  t.notRegex(table, /NaN/);
  const clean = synthetic(3, 1, 5);
  const c = slopeRecord('delegate_per_cap', fitSlope(clean.xs, clean.ys), 'us', 130, { placement: 'local' });
  t.is(c.params.significant, 'yes');
  t.true(Math.abs(c.value - 3) < 0.3);
  t.true(Math.abs(c.ratio! - c.value / 130) < 1e-12);
});

test('bench micro table: every column lines up, however long its cells', (t) => {
  const noisy = synthetic(0, 20, 11);
  const recs = [
    slopeRecord('delegate_per_cap', fitSlope(noisy.xs, noisy.ys), 'us', 130, { placement: 'local' }),
    benchRecord('micro', 'memcpy_throughput', 9e9, 'B/s', 1e9, { placement: 'remote', size: 4194304, transport: 'tcp', extra: 'a-long-parameter-value' }),
    benchRecord('micro', 'null_op_rtt', 72.1, 'us', 89.1, { placement: 'local', transport: 'unix' }),
  ];
  const lines = formatMicro(recs).split('\n').slice(0, 4);
  // The header's column starts are where every row's cells start (value/baseline/ratio right-aligned: their ends).
  const ends = (line: string): number[] => [...line.matchAll(/\S+(?= {2,}|$)/g)].map((m) => m.index! + m[0].length);
  const header = ends(lines[0]!);
  for (const l of lines.slice(1)) t.deepEqual(ends(l).slice(-3), header.slice(-3), l);
});

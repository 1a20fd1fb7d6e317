/**
 * Verification accuracy of the LBP/chi-square kernel: ROC AUC and equal error rate, and
 * the ORL evaluation that picked `DEFAULT_GRID` (method and table: docs/facever-kernel.md).
 *
 * Sign convention: scores are chi-square distances, SMALLER = MORE SIMILAR. A pair is
 * accepted as genuine when score <= threshold.
 *
 * Run `node dist/facever-app/accuracy.js [datasetDir]` to print the table (datasetDir as
 * `--dataset`: facever-app/dataset.ts).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FractosError } from '../libfractos/errors.js';
import { resolveDataset } from './dataset.js';
import { chiSquare, lbpHistogram, readPgm } from './lbp.js';

/** Grid (cells across x cells down) used by facever-app; chosen on ORL subjects 1-20 (see docs/facever-kernel.md). */
export const DEFAULT_GRID: Readonly<{ gridX: number; gridY: number }> = Object.freeze({ gridX: 3, gridY: 4 });

function checkScores(genuine: readonly number[], impostor: readonly number[]): void {
  if (genuine.length === 0 || impostor.length === 0) throw new FractosError('EINVAL', 'need at least one genuine and one impostor score');
  for (const s of genuine) if (Number.isNaN(s)) throw new FractosError('EINVAL', 'NaN score');
  for (const s of impostor) if (Number.isNaN(s)) throw new FractosError('EINVAL', 'NaN score');
}

/**
 * ROC area under the curve = P(genuine < impostor) + 0.5 * P(genuine = impostor), computed
 * exactly as the Mann-Whitney U statistic over all genuine x impostor pairs with mid-ranks
 * for ties (equal to the trapezoid area under the ROC through every distinct threshold).
 * 1 = perfect separation, 0.5 = chance. O((G+I) log(G+I)).
 * @throws FractosError EINVAL: an empty list or a NaN score.
 */
export function rocAuc(genuine: readonly number[], impostor: readonly number[]): number {
  checkScores(genuine, impostor);
  const all = [...genuine.map((s) => ({ s, g: true })), ...impostor.map((s) => ({ s, g: false }))];
  all.sort((p, q) => p.s - q.s);
  // U = sum over genuine of (#impostors strictly greater + 0.5 * #impostors equal)
  let u = 0;
  let impostorsBelowOrEqualBefore = 0; // impostors with score < current group
  for (let i = 0; i < all.length; ) {
    let j = i;
    let g = 0;
    let im = 0;
    while (j < all.length && all[j]!.s === all[i]!.s) {
      if (all[j]!.g) g++;
      else im++;
      j++;
    }
    const greater = impostor.length - impostorsBelowOrEqualBefore - im;
    u += g * (greater + 0.5 * im);
    impostorsBelowOrEqualBefore += im;
    i = j;
  }
  return u / (genuine.length * impostor.length);
}

/**
 * Equal error rate: the rate where FAR(t) = FRR(t), with FAR(t) = fraction of impostor
 * scores <= t and FRR(t) = fraction of genuine scores > t. Evaluated at every distinct
 * score (and below the smallest); between the two consecutive thresholds where
 * FAR - FRR changes sign, both curves are interpolated linearly and the crossing is
 * returned. 0 = perfect, 0.5 = chance.
 * @returns `{ eer, threshold }`: threshold is the score where the crossing lies
 *   (interpolated the same way).
 * @throws FractosError EINVAL: an empty list or a NaN score.
 */
export function equalErrorRate(genuine: readonly number[], impostor: readonly number[]): { eer: number; threshold: number } {
  checkScores(genuine, impostor);
  const g = [...genuine].sort((a, b) => a - b);
  const im = [...impostor].sort((a, b) => a - b);
  const ts = [...new Set([...g, ...im])].sort((a, b) => a - b);
  // count of values <= t in a sorted array, advancing pointers
  let gi = 0;
  let ii = 0;
  let prev = { t: ts[0]! - 1, far: 0, frr: 1 };
  if (prev.far >= prev.frr) return { eer: 0, threshold: prev.t };
  for (const t of ts) {
    while (gi < g.length && g[gi]! <= t) gi++;
    while (ii < im.length && im[ii]! <= t) ii++;
    const cur = { t, far: ii / im.length, frr: 1 - gi / g.length };
    if (cur.far >= cur.frr) {
      const d0 = prev.far - prev.frr; // < 0
      const d1 = cur.far - cur.frr; // >= 0
      const a = d0 / (d0 - d1);
      return { eer: prev.far + a * (cur.far - prev.far), threshold: prev.t + a * (cur.t - prev.t) };
    }
    prev = cur;
  }
  /* c8 ignore next */
  return { eer: prev.far, threshold: prev.t }; // unreachable: at the top threshold FAR = 1 >= FRR = 0
}

/** One verification pair: probe photo `photo` of subject `probe` against the enrolled photo of `enrolled` (1-based ids). */
export interface Pair {
  probe: number;
  photo: number;
  enrolled: number;
  genuine: boolean;
}

/**
 * The ORL protocol used here: photo 1 of each subject in `subjects` is enrolled; genuine pairs
 * are photos 2..10 against the subject's own enrolment (9 per subject); impostor pairs are
 * photo k (2..10) of the subject at position s in `subjects` against the enrolment of
 * `subjects[(s + k - 1) mod M]` (M = subjects.length, offset 1..9, never itself when M >= 10):
 * the same count as genuine pairs, deterministic.
 * @throws FractosError EINVAL when fewer than 10 subjects are given.
 */
export function orlPairs(subjects: readonly number[]): Pair[] {
  const m = subjects.length;
  if (m < 10) throw new FractosError('EINVAL', 'need >= 10 subjects for distinct impostors');
  const pairs: Pair[] = [];
  subjects.forEach((s, i) => {
    for (let k = 2; k <= 10; k++) {
      pairs.push({ probe: s, photo: k, enrolled: s, genuine: true });
      pairs.push({ probe: s, photo: k, enrolled: subjects[(i + k - 1) % m]!, genuine: false });
    }
  });
  return pairs;
}

/** Accuracy of one grid on one set of pairs. */
export interface GridResult {
  gridX: number;
  gridY: number;
  auc: number;
  eer: number;
  genuine: number;
  impostor: number;
}

/**
 * Score `pairs` of the ORL database in `dir` (s<id>/<photo>.pgm) with LBP histograms over a
 * gridX x gridY grid (pure TS reference) and return AUC and EER.
 * @throws FractosError EINVAL on a malformed PGM; Node fs errors when a file is missing.
 */
export function evaluateGrid(dir: string, pairs: readonly Pair[], gridX: number, gridY: number): GridResult {
  const cache = new Map<string, Uint32Array>();
  const hist = (id: number, photo: number): Uint32Array => {
    const key = `${id}/${photo}`;
    let h = cache.get(key);
    if (!h) {
      const img = readPgm(readFileSync(join(dir, `s${id}`, `${photo}.pgm`)));
      h = lbpHistogram(img.pixels, img.width, img.height, gridX, gridY);
      cache.set(key, h);
    }
    return h;
  };
  const genuine: number[] = [];
  const impostor: number[] = [];
  for (const p of pairs) (p.genuine ? genuine : impostor).push(chiSquare(hist(p.probe, p.photo), hist(p.enrolled, 1)));
  return { gridX, gridY, auc: rocAuc(genuine, impostor), eer: equalErrorRate(genuine, impostor).eer, genuine: genuine.length, impostor: impostor.length };
}

/** Grids evaluated for docs/facever-kernel.md. */
export const CANDIDATE_GRIDS: ReadonlyArray<readonly [number, number]> = [
  [1, 1], [2, 2], [3, 3], [4, 4], [5, 5], [6, 6], [7, 7], [8, 8], [2, 3], [3, 2], [3, 4], [4, 3], [4, 5], [5, 6], [6, 7], [7, 8], [9, 9], [10, 10],
];

const range = (a: number, b: number): number[] => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** Print the markdown table: choose on subjects 1-20 (max AUC, ties to fewer cells), report 21-40 and 1-40. */
function main(dir: string): void {
  const sel = orlPairs(range(1, 20));
  const held = orlPairs(range(21, 40));
  const all = orlPairs(range(1, 40));
  const pct = (x: number): string => (100 * x).toFixed(2);
  const rows = CANDIDATE_GRIDS.map(([gx, gy]) => ({ a: evaluateGrid(dir, sel, gx, gy), b: evaluateGrid(dir, held, gx, gy), c: evaluateGrid(dir, all, gx, gy) }));
  let best = rows[0]!;
  for (const r of rows) if (r.a.auc > best.a.auc || (r.a.auc === best.a.auc && r.a.gridX * r.a.gridY < best.a.gridX * best.a.gridY)) best = r;
  console.log('| grid | AUC 1-20 | EER% 1-20 | AUC 21-40 | EER% 21-40 | AUC 1-40 | EER% 1-40 |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const mark = r === best ? ' **(chosen)**' : '';
    console.log(`| ${r.a.gridX}x${r.a.gridY}${mark} | ${r.a.auc.toFixed(4)} | ${pct(r.a.eer)} | ${r.b.auc.toFixed(4)} | ${pct(r.b.eer)} | ${r.c.auc.toFixed(4)} | ${pct(r.c.eer)} |`);
  }
  console.log(`\nchosen on 1-20: ${best.a.gridX}x${best.a.gridY}; pairs: ${sel.length} / ${held.length} / ${all.length}`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main(resolveDataset(process.argv[2]));

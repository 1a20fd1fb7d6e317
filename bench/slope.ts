/**
 * Least-squares slopes with their uncertainty, and the rule that decides whether a fitted
 * slope is a figure worth printing (issue #7: `delegate_per_cap -3.9 us` was a slope fitted
 * on noise).
 *
 * The fit is ordinary least squares of y on x over every measured point (repetitions
 * included, not their means). The slope's standard error is
 * `se = sqrt(SSres / (n - 2) / Sxx)`, its 95% confidence interval `slope ± t(0.975, n-2) * se`.
 */
import { FractosError } from '../libfractos/errors.js';

/** A least-squares line through `points` points, in the units of the data. */
export interface SlopeFit {
  slope: number;
  intercept: number;
  /** Standard error of the slope. */
  se: number;
  /** Half-width of the slope's 95% confidence interval (t distribution, n - 2 degrees of freedom). */
  ci95: number;
  /** Coefficient of determination, 0..1 (1 when every point is on the line). */
  r2: number;
  /** Number of points fitted. */
  points: number;
}

/** Two-sided 95% quantiles t(0.975, df) for df = 1..30; larger df use the entries below. */
const T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042];

/** t(0.975, df): the 95% two-sided Student quantile (table to 30, then 40/60/120/normal, rounded up). */
export function t975(df: number): number {
  if (!(df >= 1)) throw new FractosError('EINVAL', `degrees of freedom must be >= 1, got ${df}`);
  if (df <= 30) return T975[Math.floor(df) - 1]!;
  if (df <= 40) return 2.042;
  if (df <= 60) return 2.021;
  if (df <= 120) return 2.0;
  return 1.98;
}

/**
 * Fit y = intercept + slope * x by least squares.
 * @throws FractosError EINVAL: lengths differ, fewer than 3 points, fewer than 2 distinct x,
 *   or a non-finite value.
 */
export function fitSlope(xs: readonly number[], ys: readonly number[]): SlopeFit {
  const n = xs.length;
  if (ys.length !== n) throw new FractosError('EINVAL', `${n} x values but ${ys.length} y values`);
  if (n < 3) throw new FractosError('EINVAL', `a slope with an error needs at least 3 points, got ${n}`);
  if (![...xs, ...ys].every(Number.isFinite)) throw new FractosError('EINVAL', 'non-finite value in the data');
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxx = 0;
  let sxy = 0;
  let syy = 0;
  for (let i = 0; i < n; i++) {
    sxx += (xs[i]! - mx) ** 2;
    sxy += (xs[i]! - mx) * (ys[i]! - my);
    syy += (ys[i]! - my) ** 2;
  }
  if (sxx === 0) throw new FractosError('EINVAL', 'all x values are equal: no slope');
  const slope = sxy / sxx;
  const intercept = my - slope * mx;
  const ssRes = Math.max(0, syy - slope * sxy);
  const se = Math.sqrt(ssRes / (n - 2) / sxx);
  return { slope, intercept, se, ci95: t975(n - 2) * se, r2: syy === 0 ? 1 : 1 - ssRes / syy, points: n };
}

/** The rule's thresholds. */
export interface FigureRule {
  /** Fewest points for a figure (default 8). */
  minPoints?: number;
  /** Largest 95% half-width relative to |slope| (default 0.5: the slope known to ±50%). */
  maxRelativeCi?: number;
}

/** A figure, or why there is none. */
export interface SlopeFigure {
  /** The slope when it is a figure, else null. */
  value: number | null;
  /** For people: `3.1 us ±0.4` or `not significant (±5.1 us)`. */
  text: string;
}

/**
 * Whether a fitted slope is a figure: at least `minPoints` points, a 95% confidence
 * interval that excludes 0, and a half-width at most `maxRelativeCi` of |slope|. Otherwise
 * value null and `not significant (±CI unit)` (too few points: `not measured (N points)`).
 */
export function slopeFigure(fit: SlopeFit, unit: string, rule: FigureRule = {}): SlopeFigure {
  const minPoints = rule.minPoints ?? 8;
  const maxRel = rule.maxRelativeCi ?? 0.5;
  const ci = `±${fit.ci95.toFixed(1)} ${unit}`;
  if (fit.points < minPoints) return { value: null, text: `not measured (${fit.points} points, need ${minPoints})` };
  const significant = Number.isFinite(fit.ci95) && Math.abs(fit.slope) > fit.ci95 && fit.ci95 <= maxRel * Math.abs(fit.slope);
  if (!significant) return { value: null, text: `not significant (${ci})` };
  return { value: fit.slope, text: `${fit.slope.toFixed(1)} ${unit} ${ci}` };
}

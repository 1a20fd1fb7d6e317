/**
 * Benchmark records of DESIGN.md §6: `{ bench, metric, value, unit, baseline, ratio,
 * params }`, where `baseline` is the reference measured in the same run (raw transport,
 * real fio, the direct C++ call, the star design) and `ratio = value / baseline`.
 */
export interface BenchRecord {
  bench: string;
  metric: string;
  value: number;
  unit: string;
  /** The reference figure measured in the same run, or null when there is none. */
  baseline: number | null;
  /** value / baseline; null without a baseline or when it is 0. */
  ratio: number | null;
  params: Record<string, string | number>;
}

/** A record with its ratio computed. */
export function benchRecord(
  bench: string,
  metric: string,
  value: number,
  unit: string,
  baseline: number | null,
  params: BenchRecord['params'],
): BenchRecord {
  return { bench, metric, value, unit, baseline, ratio: baseline ? value / baseline : null, params };
}

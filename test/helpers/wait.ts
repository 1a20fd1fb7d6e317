/** Waiting in tests for a condition another party makes true. */

/** Poll `cond` every 10 ms until it holds (true) or `ms` (ms) pass (false). */
export async function until(cond: () => boolean, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

/**
 * How late this process's timers run from now until `stop()` (ms, the worst lateness of a
 * 20 ms interval). On a CPU-starved machine every process (etcd, the Controllers, this test)
 * is scheduled late alike: a bound on a detection time that crosses several processes adds
 * `hops × stop()`, so that it bounds the mechanism (a lease, a timer), not the scheduler.
 */
export function schedulingLag(): { stop(): number } {
  const PERIOD = 20;
  let last = performance.now();
  let worst = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last - PERIOD);
    last = now;
  }, PERIOD);
  let stopped: number | null = null;
  return {
    /** The worst lateness (ms); the first call stops the measure, later ones return the same. */
    stop: () => {
      if (stopped === null) {
        clearInterval(timer);
        stopped = Math.max(worst, performance.now() - last - PERIOD);
      }
      return stopped;
    },
  };
}

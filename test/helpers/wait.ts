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

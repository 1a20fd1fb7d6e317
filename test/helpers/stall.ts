/** Stalled clients in storage fairness tests: a served Memory that never answers, and liveness bounds. */
import { Perm, type Process } from '../../libfractos/index.js';

/** Rejects with `what hung` after `ms` (ms): a liveness bound (a hang fails the test), not a speed figure. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what} hung for ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/** Poll `cond` every 10 ms until it holds; throws `timed out waiting for WHAT` after `ms` (ms). */
export async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A served Memory cap of `size` bytes (RW) of `p` whose reads and writes never answer. */
export function stalledMemory(p: Process, size: number): Promise<number> {
  return p.memoryCreateServed(size, Perm.RW, { read: () => new Promise<Uint8Array>(() => {}), write: () => new Promise<void>(() => {}) });
}

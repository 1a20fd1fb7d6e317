/** Stalled clients in storage fairness tests: a served Memory that never answers, and liveness bounds. */
import { randomBytes } from 'node:crypto';
import { IoPort } from '../../blockdev-adaptor/client.js';
import { FsClient } from '../../fs-service/client.js';
import { connect, Perm, type Process } from '../../libfractos/index.js';

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

/**
 * Two clients of the FS at `addr`: `victim`, whose file `/victim` holds `data` (64 KiB
 * written from its shared Memory `vbuf`), and `evil`, connected and idle. The caller closes both.
 */
export async function fsVictimAndEvil(addr: string): Promise<{
  victim: Process; evil: Process; vport: IoPort; data: Buffer; vbuf: Awaited<ReturnType<Process['memoryCreateShared']>>; vf: Awaited<ReturnType<FsClient['open']>>;
}> {
  const victim = await connect(addr, { name: 'victim' });
  const evil = await connect(addr, { name: 'evil' });
  const vfs = await FsClient.connect(victim);
  const vport = new IoPort(victim);
  const data = randomBytes(64 << 10);
  const vbuf = await victim.memoryCreateShared(64 << 10);
  vbuf.region.bytes.set(data);
  const vf = await vfs.open('/victim', { create: true });
  await vport.ioAsync(vf.write, true, 0, 64 << 10, vbuf.cid);
  return { victim, evil, vport, data, vbuf, vf };
}

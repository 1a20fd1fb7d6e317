/**
 * A storage stack for FS tests in one process: a Controller, a blockdev on a fresh device
 * file (formatted) and, unless `fs: false`, an FsService with the given options.
 */
import { join } from 'node:path';
import { Controller } from '../../controller/index.js';
import { connect, type Process } from '../../libfractos/index.js';
import { BlockdevService } from '../../blockdev-adaptor/service.js';
import { IoPort } from '../../blockdev-adaptor/client.js';
import { FsService, type FsOptions } from '../../fs-service/service.js';
import { FsClient } from '../../fs-service/client.js';
import type { DeviceDir } from './devices.js';
import { spawnFractos, tempDir, type Spawned } from './spawn.js';

export interface FsEnv {
  c: Controller;
  addr: string;
  bd: BlockdevService;
  fs: FsService | null;
  procs: Process[];
}

/** Start the stack on a device file of `size` bytes (default 96 MiB) in `devices`. */
export async function fsEnv(devices: DeviceDir, opts: { fs?: boolean; size?: number } & Omit<Partial<FsOptions>, 'controller'> = {}): Promise<FsEnv> {
  const { fs: withFs, size, ...fsOpts } = opts;
  const d = tempDir();
  const addr = `unix:${join(d, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') });
  const bd = await BlockdevService.start({ device: devices.devFile(size ?? 96 << 20), controller: addr, format: true, queueDepth: 32 });
  const fs = withFs === false ? null : await FsService.start({ ...fsOpts, controller: addr });
  return { c, addr, bd, fs, procs: [] };
}

/** A client Process of `e` (closed by `fsTeardown`), its FsClient and an IoPort. */
export async function fsClient(e: FsEnv): Promise<{ p: Process; fs: FsClient; port: IoPort }> {
  const p = await connect(e.addr, { name: 'client' });
  e.procs.push(p);
  return { p, fs: await FsClient.connect(p), port: new IoPort(p) };
}

/** Close the clients, the FS, the blockdev and the Controller. */
export async function fsTeardown(e: FsEnv): Promise<void> {
  for (const p of e.procs) await p.close();
  await e.fs?.close();
  await e.bd.close();
  await e.c.close();
}

/** `fractos fs` as an OS process on `e`'s Controller (to kill -9 it), once it printed its ready line. */
export function spawnFs(e: FsEnv): Promise<Spawned> {
  return spawnFractos(['fs', '--controller', e.addr], /^ready fs/, { timeoutMs: 30_000 });
}

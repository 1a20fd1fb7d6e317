/** A single-member etcd on loopback for tests (Debian etcd-server), and the reason to skip without it. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { ensureClusterSecretFile } from '../../controller/index.js';
import { DEFAULT_READY_TIMEOUT_MS, freePort, spawnFractos, tempDir, type Spawned } from './spawn.js';
import { trackChild } from '../../testbed/scratch.js';

/** Why etcd tests skip here, or null when `etcd` runs. */
export const noEtcd = spawnSync('etcd', ['--version']).status === 0 ? null : 'etcd is not installed (Debian etcd-server)';

/** Start etcd with its data in `dir`, clients on 127.0.0.1:`port`, peers on `peer`; resolves when it serves. */
export async function startEtcd(dir: string, port: number, peer: number): Promise<ChildProcess> {
  const url = `http://127.0.0.1:${port}`;
  const child = spawn('etcd', ['--name', 'e0', '--data-dir', join(dir, 'data'), '--listen-client-urls', url, '--advertise-client-urls', url,
    '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`, '--initial-cluster', `e0=http://127.0.0.1:${peer}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  trackChild(child);
  await new Promise<void>((res, rej) => {
    let out = '';
    const t = setTimeout(() => rej(new Error(`etcd not ready: ${out}`)), DEFAULT_READY_TIMEOUT_MS); // a hang bound only
    child.stderr!.on('data', (d: Buffer) => {
      out += d.toString();
      if (/ready to serve client requests/.test(out)) {
        clearTimeout(t);
        res();
      }
    });
  });
  return child;
}

/** SIGKILL etcd and wait for its exit. */
export async function killEtcd(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
}

/** Membership lease TTL (ms) and kv bound (ms) of the Controllers `bed` starts. */
export const TTL = 2000;
export const NAMES_TIMEOUT_MS = 1500;

/** etcd on loopback and `fractos controller --etcd` OS processes around it (ids 1..3 allowed), stopped at teardown. */
export interface Bed {
  url: string;
  admin: Etcd3;
  etcd: ChildProcess;
  restartEtcd(): Promise<void>;
  /** Start Controller `id` (lease TTL `ttlMs`, default TTL; kv bound `namesTimeoutMs`, default NAMES_TIMEOUT_MS). */
  start(id: number, ttlMs?: number, namesTimeoutMs?: number): Promise<Spawned>;
  unix(id: number): string;
}

export async function bed(t: { teardown: (f: () => Promise<void>) => void }): Promise<Bed> {
  const dir = tempDir('fractos-names-');
  const port = await freePort();
  const peerPort = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const secret = join(dir, 'cluster.secret');
  ensureClusterSecretFile(secret);
  const b: Bed = {
    url,
    admin: new Etcd3({ hosts: url }),
    etcd: await startEtcd(dir, port, peerPort),
    async restartEtcd() {
      await killEtcd(b.etcd);
      await new Promise((r) => setTimeout(r, 300));
      b.etcd = await startEtcd(dir, port, peerPort);
    },
    unix: (id) => `unix:${join(dir, `c${id}.sock`)}`,
    async start(id, ttlMs = TTL, namesTimeoutMs = NAMES_TIMEOUT_MS) {
      const adv = `tcp://127.0.0.1:${await freePort()}`;
      const c = await spawnFractos(['controller', '--id', String(id), '--state-dir', join(dir, `s${id}`), '--listen', b.unix(id), '--etcd', url,
        '--advertise', adv, '--cluster-secret-file', secret, '--lease-ttl-ms', String(ttlMs), '--names-timeout-ms', String(namesTimeoutMs)],
      /^controller \d+ epoch \d+ listening/);
      procs.push(c);
      return c;
    },
  };
  const procs: Spawned[] = [];
  for (const id of [1, 2, 3]) await b.admin.put(`/fractos/allowed/${id}`).value('');
  t.teardown(async () => {
    for (const p of procs) await p.stop().catch(() => {});
    b.admin.close();
    await killEtcd(b.etcd);
  });
  return b;
}

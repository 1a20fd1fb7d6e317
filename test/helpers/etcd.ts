/** A single-member etcd on loopback for tests (Debian etcd-server), and the reason to skip without it. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
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
    const t = setTimeout(() => rej(new Error(`etcd not ready: ${out}`)), 20_000);
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

/** One or two in-process Controllers for tests; with two, controller 2 dials controller 1 over TCP. */
import { join } from 'node:path';
import { Controller, type ControllerOptions } from '../../controller/index.js';
import { connect, type Process } from '../../libfractos/index.js';
import { tempDir } from './spawn.js';

export interface Cluster {
  ctl: Controller[];
  /** unix address of each Controller */
  addr: string[];
  /** A Process on Controller `i` (0-based), closed by `stop`. */
  proc(i: number, name: string, opts?: { memoryDescriptors?: boolean }): Promise<Process>;
  stop(): Promise<void>;
}

/** `n` (1 or 2) in-process Controllers sharing cluster secret `secret`; resolves once both see each other. */
export async function cluster(n: 1 | 2, opts: Partial<ControllerOptions> = {}, secret = 'in-process cluster secret'): Promise<Cluster> {
  const dir = tempDir();
  const addr = [1, 2].slice(0, n).map((i) => `unix:${join(dir, `c${i}.sock`)}`);
  const c1 = await Controller.start({ ...opts, id: 1, listen: [addr[0]!, 'tcp://127.0.0.1:0'], stateDir: join(dir, 's1'), peers: new Map([[2, 'tcp://127.0.0.1:1']]), clusterSecret: secret });
  const ctl = [c1];
  if (n === 2) {
    ctl.push(await Controller.start({ ...opts, id: 2, listen: [addr[1]!], stateDir: join(dir, 's2'), peers: new Map([[1, c1.addresses[1]!]]), clusterSecret: secret }));
    for (let i = 0; i < 500 && !(c1.connectedPeers.includes(2) && ctl[1]!.connectedPeers.includes(1)); i++) await new Promise((r) => setTimeout(r, 10));
  }
  const procs: Process[] = [];
  return {
    ctl,
    addr,
    proc: async (i, name, o = {}) => {
      const p = await connect(addr[i]!, { name, ...o });
      procs.push(p);
      return p;
    },
    stop: async () => {
      for (const p of procs) await p.close();
      for (const c of ctl) await c.close();
    },
  };
}

/**
 * Dashboard tests' cluster: `n` Controllers as OS processes on loopback (peers over TCP,
 * Processes on unix sockets), and Processes in this test process making two shapes of
 * traffic: a chain head@1 → mid@2 → tail@3 (mid's handler invokes tail) and a star
 * hub@2 → leaf-1@1, leaf-2@2, leaf-3@3.
 */
import { connect, type Process } from '../../libfractos/index.js';
import { clusterSpecs, startController, type ControllerSpec, type Spawned } from './spawn.js';

const TAG = 7;

export interface DashCluster {
  specs: ControllerSpec[];
  ctl: Spawned[];
  /** Process ids by name ('head', 'mid', 'tail', 'hub', 'leaf-1', ...) and their Controller. */
  ids: Map<string, { controller: number; process: number }>;
  /** Run `rounds` chain invocations (head → mid → tail) and star fans (hub → each leaf); resolves once all were delivered. */
  traffic(rounds: number): Promise<void>;
  stop(): Promise<void>;
}

/** Start 3 Controllers and the chain and star Processes. */
export async function dashCluster(): Promise<DashCluster> {
  const specs = await clusterSpecs(3);
  const ctl = await Promise.all(specs.map((s) => startController(s, specs)));
  const procs: Process[] = [];
  const ids = new Map<string, { controller: number; process: number }>();
  const proc = async (i: number, name: string): Promise<Process> => {
    const p = await connect(specs[i]!.unix, { name });
    procs.push(p);
    ids.set(name, { controller: p.controllerId, process: p.processId });
    return p;
  };
  let delivered = 0;
  const serve = async (p: Process, name: string, then?: () => Promise<void>): Promise<void> => {
    p.onRequest(TAG, async () => {
      delivered++;
      if (then) await then();
    });
    await p.kvPut(name, await p.requestCreate(TAG));
  };
  const tail = await proc(2, 'tail');
  await serve(tail, 'tail');
  const mid = await proc(1, 'mid');
  const toTail = await mid.kvWait('tail', 20_000);
  await serve(mid, 'mid', () => mid.requestInvoke(toTail));
  const head = await proc(0, 'head');
  const toMid = await head.kvWait('mid', 20_000);
  const leaves: number[] = [];
  const hub = await proc(1, 'hub');
  for (const i of [0, 1, 2]) {
    const leaf = await proc(i, `leaf-${i + 1}`);
    await serve(leaf, `leaf-${i + 1}`);
    leaves.push(await hub.kvWait(`leaf-${i + 1}`, 20_000));
  }
  return {
    specs,
    ctl,
    ids,
    traffic: async (rounds) => {
      const want = delivered + rounds * 5;
      for (let r = 0; r < rounds; r++) {
        await head.requestInvoke(toMid);
        for (const l of leaves) await hub.requestInvoke(l);
      }
      const end = Date.now() + 10_000;
      while (delivered < want && Date.now() < end) await new Promise((res) => setTimeout(res, 10));
      if (delivered < want) throw new Error(`only ${delivered} of ${want} invocations delivered`);
    },
    stop: async () => {
      for (const p of procs) await p.close().catch(() => {});
      await Promise.all(ctl.map((c) => c.stop()));
    },
  };
}

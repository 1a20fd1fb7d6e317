/** `fractos cluster ...`: the command face of cluster/ (a multi-host cluster on one machine). */
import type { Command } from 'commander';
import { down, heal, initCluster, kill, parsePlacement, partition, pause, startNode, status, up, type ClusterState } from '../cluster/cluster.js';
import { formatClusterBench, runClusterBench } from '../bench/cluster.js';
import { FractosError } from '../libfractos/errors.js';
import { cleanupOnSignals } from '../testbed/scratch.js';
import { die } from './log.js';

/** Default cluster folder (state file, secret, logs, node state). */
export const DEFAULT_CLUSTER_DIR = process.env.FRACTOS_CLUSTER_DIR ?? '/tmp/fractos-cluster';

const out = (s: string): void => void process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);

function nodeArg(v: string): number {
  if (v === 'etcd') return 0;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1) throw new FractosError('EINVAL', `NODE wants a node id (1..N) or 'etcd', got '${v}'`);
  return n;
}

function describe(s: ClusterState): string {
  const lines = [`cluster ${s.dir}: ${s.nodes.length} nodes (${s.membership} membership) on ${s.subnet}.0/24 (hub namespace ${s.hub}), converged in ${s.convergedMs ?? '?'} ms`, `secret ${s.secretFile}`];
  if (s.etcd.length) lines.push(`etcd ${s.etcd.join(',')}${s.etcdNs ? ` ns ${s.etcdNs}` : ''}`);
  for (const n of s.nodes) lines.push(`node ${n.id} ns ${n.ns} ${n.tcp} ${n.unix}`);
  for (const p of s.procs) lines.push(`  ${p.role.padEnd(10)} node ${String(p.node).padStart(2)} ${p.name.padEnd(12)} pid ${String(p.pid).padStart(7)} log ${p.log}`);
  return lines.join('\n');
}

export function register(program: Command): void {
  const c = program.command('cluster').description('a multi-host cluster on this machine: one network namespace per node, etcd, fault injection (root)');
  const dirOpt = ['--dir <dir>', 'cluster folder: state file, secret, logs', DEFAULT_CLUSTER_DIR] as const;

  c.command('init')
    .description('make the cluster secret DIR/cluster.secret (0600) if missing')
    .option(...dirOpt)
    .action((o: { dir: string }) => {
      try {
        out(`secret ${initCluster(o.dir)}`);
      } catch (err) {
        die(err);
      }
    });

  c.command('up')
    .description('start etcd and N nodes (a Controller each, services as placed), print where everything is, exit leaving them running')
    .requiredOption('--nodes <n>', 'number of nodes (1..200)')
    .option(...dirOpt)
    .option('--etcd <urls>', 'use this etcd (URL[,URL...], reachable from the namespaces) instead of starting one')
    .option('--no-etcd', 'start no etcd')
    .option('--placement <list>', 'services: KIND@NODE[,KIND@NODE...], KIND blockdev | fs | gpu (e.g. blockdev@1,fs@2,gpu@3)', '')
    .option('--subnet <a.b.c>', 'private /24 (first three octets)', '10.231.0')
    .option('--membership <kind>', 'etcd (default with etcd) | static (--peer lists)')
    .option('--lease-ttl-ms <ms>', 'etcd membership lease TTL', '2000')
    .option('--foreground', 'stay in the foreground; Ctrl-C takes the cluster down')
    .action(async (o: { nodes: string; dir: string; etcd?: string | boolean; placement: string; subnet: string; foreground?: boolean; membership?: string; leaseTtlMs: string }) => {
      try {
        const nodes = Number(o.nodes);
        const s = await up({
          dir: o.dir, nodes, subnet: o.subnet, placement: parsePlacement(o.placement, nodes),
          etcd: typeof o.etcd === 'string' ? o.etcd.split(',') : undefined, noEtcd: o.etcd === false,
          membership: o.membership === undefined ? undefined : o.membership === 'etcd' || o.membership === 'static' ? o.membership : (() => { throw new FractosError('EINVAL', `--membership wants etcd or static, got '${o.membership}'`); })(),
          leaseTtlMs: Number(o.leaseTtlMs),
        });
        out(describe(s));
        if (!o.foreground) return;
        out('running in the foreground; Ctrl-C takes it down');
        const stop = (): void => {
          void down(s.dir).then(() => {
            out('cluster down');
            process.exit(0);
          }, die);
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        setInterval(() => {}, 1 << 30);
      } catch (err) {
        die(err);
      }
    });

  c.command('down')
    .description('stop every process and remove every namespace, link and file the cluster made')
    .option(...dirOpt)
    .action(async (o: { dir: string }) => {
      try {
        const r = await down(o.dir);
        out(`cluster down: ${r.procs} processes stopped, ${r.namespaces} namespaces and ${r.files} files removed`);
      } catch (err) {
        die(err);
      }
    });

  c.command('status')
    .description('nodes, links and processes of the cluster')
    .option(...dirOpt)
    .option('--json', 'print JSON')
    .action((o: { dir: string; json?: boolean }) => {
      try {
        const st = status(o.dir);
        if (o.json) return out(JSON.stringify(st.nodes, null, 2));
        for (const n of st.nodes) {
          out(`${n.id === 0 ? 'etcd' : `node ${n.id}`} ns ${n.ns} ${n.addr} link ${n.link}`);
          for (const p of n.procs) out(`  ${p.role.padEnd(10)} ${p.name.padEnd(12)} pid ${String(p.pid).padStart(7)} ${p.state.padEnd(7)} ${p.log}`);
        }
      } catch (err) {
        die(err);
      }
    });

  const fault = (name: string, description: string, act: (dir: string, node: number) => string | Promise<string>): void => {
    c.command(`${name} <node>`)
      .description(`${description} (NODE: 1..N, or etcd)`)
      .option(...dirOpt)
      .action(async (node: string, o: { dir: string }) => {
        try {
          out(await act(o.dir, nodeArg(node)));
        } catch (err) {
          die(err);
        }
      });
  };
  fault('kill', 'kill -9 the node\'s Controller and services', (d, n) => `node ${n}: ${kill(d, n)} processes killed`);
  fault('pause', 'SIGSTOP the node\'s processes', (d, n) => `node ${n}: ${pause(d, n, true)} processes paused`);
  fault('resume', 'SIGCONT the node\'s processes', (d, n) => `node ${n}: ${pause(d, n, false)} processes resumed`);
  fault('partition', 'cut the node off the subnet (its veth down in the hub)', (d, n) => (partition(d, n, true), `node ${n}: partitioned`));
  fault('heal', 'reconnect a partitioned node (its veth up); a Controller that fenced itself meanwhile is started again (new epoch)', async (d, n) => {
    const ps = await heal(d, n);
    return `node ${n}: healed${ps.length ? `; started ${ps.map((p) => `${p.role} pid ${p.pid}`).join(', ')}` : ''}`;
  });
  fault('start', 'start a killed node again (its Controller with a new epoch, then its services)', async (d, n) => {
    const ps = await startNode(d, n);
    return `node ${n}: started ${ps.map((p) => `${p.role} pid ${p.pid}`).join(', ')}`;
  });

  c.command('bench')
    .description('converge time for N nodes, kill -9 to owner-failed elsewhere, kv_get across nodes (DESIGN §6 records with --json)')
    .option('--sizes <list>', 'cluster sizes', '2,4,8')
    .option('--trials <n>', 'kills measured', '5')
    .option('--iters <n>', 'kv_get calls', '2000')
    .option('--json', 'print the records as one JSON array')
    .action(async (o: { sizes: string; trials: string; iters: string; json?: boolean }) => {
      cleanupOnSignals('fractos cluster bench');
      try {
        const rs = await runClusterBench({ sizes: o.sizes.split(',').map(Number), trials: Number(o.trials), iters: Number(o.iters), progress: (l) => process.stderr.write(`bench: ${l}\n`) });
        out(o.json ? JSON.stringify(rs, null, 2) : formatClusterBench(rs));
      } catch (err) {
        die(err);
      }
    });
}

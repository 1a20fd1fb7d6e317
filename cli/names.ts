/**
 * `fractos names`: bootstrap names with their owner Controller, epoch, Process and revision:
 * the cluster's from etcd (`--etcd`, a linearizable read), or those one Controller holds
 * (`--controller`, KV_LIST: its replicated map, or only its own names when it keeps them in etcd).
 */
import type { Command } from 'commander';
import { DEFAULT_ETCD_PREFIX } from '../controller/peer-source.js';
import { FractosError } from '../libfractos/errors.js';
import { connect } from '../libfractos/index.js';
import { DEFAULT_CONTROLLER } from './core.js';
import { die } from './log.js';

interface Row {
  name: string;
  controller: number;
  epoch: number;
  proc: number;
  revision: number;
}

function print(rows: Row[], extra: (r: Row) => string, head: string): void {
  process.stdout.write(`${'name'.padEnd(32)} ${'controller'.padStart(10)} ${'epoch'.padStart(6)} ${'process'.padStart(8)} ${'revision'.padStart(16)} ${head}\n`);
  for (const n of rows) {
    process.stdout.write(`${n.name.padEnd(32)} ${String(n.controller).padStart(10)} ${String(n.epoch).padStart(6)} ${String(n.proc).padStart(8)} ${String(n.revision).padStart(16)} ${extra(n)}\n`);
  }
}

export function register(program: Command): void {
  program
    .command('names')
    .description('list bootstrap names (kv_put) with their owner Controller, epoch, Process and etcd revision')
    .option('--etcd <urls>', 'the cluster\'s etcd: URL[,URL...] (a linearizable read of PREFIX/names/)')
    .option('--etcd-prefix <prefix>', 'with --etcd: key prefix', DEFAULT_ETCD_PREFIX)
    .option('--controller <addr>', 'instead of --etcd: the names one Controller holds (unix:PATH of the same uid)')
    .option('--json', 'print JSON')
    .action(async (o: { etcd?: string; etcdPrefix: string; controller?: string; json?: boolean }) => {
      try {
        if (o.etcd !== undefined && o.controller !== undefined) throw new FractosError('EINVAL', '--etcd and --controller are exclusive');
        if (o.etcd === undefined) {
          const p = await connect(o.controller ?? DEFAULT_CONTROLLER, { name: 'names' });
          try {
            const l = await p.kvList();
            if (o.json) process.stdout.write(JSON.stringify(l, null, 2) + '\n');
            else {
              if (l.external) process.stdout.write('# this controller keeps names in etcd: its own names only (fractos names --etcd URL lists the cluster\'s)\n');
              print(l.names, (n) => String((n as Row & { since: number }).since).padStart(16), 'since'.padStart(16));
            }
          } finally {
            await p.close();
          }
          return;
        }
        // loaded only here: etcd3 pulls in gRPC
        const { Etcd3 } = await import('etcd3');
        const { listNames } = await import('../controller/names-etcd.js');
        const client = new Etcd3({ hosts: o.etcd.split(','), dialTimeout: 2000 });
        try {
          const names = await listNames(client, o.etcdPrefix);
          if (o.json) process.stdout.write(JSON.stringify(names, null, 2) + '\n');
          else print(names, (n) => `${String((n as Row & { createRevision: number }).createRevision).padStart(9)} ${(n as Row & { lease: string }).lease.padStart(17)}`, `${'created'.padStart(9)} ${'lease'.padStart(17)}`);
        } finally {
          client.close();
        }
      } catch (err) {
        die(err);
      }
    });
}

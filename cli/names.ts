/** `fractos names`: the bootstrap names of a cluster (etcd) with owner Controller, epoch and revision. */
import type { Command } from 'commander';
import { DEFAULT_ETCD_PREFIX } from '../controller/peer-source.js';
import { FractosError } from '../libfractos/errors.js';
import { die } from './log.js';

export function register(program: Command): void {
  program
    .command('names')
    .description('list bootstrap names (kv_put) with their owner Controller, epoch, Process and etcd revision')
    .option('--etcd <urls>', 'the cluster\'s etcd: URL[,URL...] (a linearizable read of PREFIX/names/)')
    .option('--etcd-prefix <prefix>', 'key prefix', DEFAULT_ETCD_PREFIX)
    .option('--json', 'print JSON')
    .action(async (o: { etcd?: string; etcdPrefix: string; json?: boolean }) => {
      try {
        if (o.etcd === undefined) throw new FractosError('EINVAL', 'fractos names needs --etcd URL[,URL...]');
        // loaded only here: etcd3 pulls in gRPC
        const { Etcd3 } = await import('etcd3');
        const { listNames } = await import('../controller/names-etcd.js');
        const client = new Etcd3({ hosts: o.etcd.split(','), dialTimeout: 2000 });
        try {
          const names = await listNames(client, o.etcdPrefix);
          if (o.json) {
            process.stdout.write(JSON.stringify(names, null, 2) + '\n');
            return;
          }
          process.stdout.write(`${'name'.padEnd(32)} ${'controller'.padStart(10)} ${'epoch'.padStart(6)} ${'process'.padStart(8)} ${'revision'.padStart(9)} ${'created'.padStart(9)} ${'lease'.padStart(17)}\n`);
          for (const n of names) {
            process.stdout.write(`${n.name.padEnd(32)} ${String(n.controller).padStart(10)} ${String(n.epoch).padStart(6)} ${String(n.proc).padStart(8)} ${String(n.revision).padStart(9)} ${String(n.createRevision).padStart(9)} ${n.lease.padStart(17)}\n`);
          }
        } finally {
          client.close();
        }
      } catch (err) {
        die(err);
      }
    });
}

/** Core subcommands: controller, stats, bench micro, demo. */
import type { Command } from 'commander';
import { CLUSTER_SECRET_ENV, Controller, DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_SERVED_TIMEOUT_MS, readClusterSecretFile } from '../controller/index.js';
import type { EtcdNames } from '../controller/names-etcd.js';
import { StaticPeers, type PeerSource } from '../controller/peer-source.js';
import { connect, FractosError } from '../libfractos/index.js';
import { superviseService } from './lifecycle.js';
import { die, log } from './log.js';

function collectPeer(v: string, acc: Map<number, string>): Map<number, string> {
  const m = /^(\d+)=(tcp:\/\/.+)$/.exec(v);
  if (!m) throw new FractosError('EINVAL', `--peer wants ID=tcp://HOST:PORT, got '${v}'`);
  acc.set(Number(m[1]), m[2]!);
  return acc;
}

function collect(v: string, acc: string[]): string[] {
  acc.push(v);
  return acc;
}

/** Default Controller address on a single host. */
export const DEFAULT_CONTROLLER = process.env.FRACTOS_CONTROLLER ?? 'unix:/tmp/fractos-controller.sock';

export function register(program: Command): void {
  program
    .command('controller')
    .description('run a Controller (the trusted layer) until killed')
    .option('--listen <addr>', 'unix:PATH or tcp://HOST:PORT (repeatable)', collect, [])
    .option('--id <n>', 'controller id (1..2^32-1)', '1')
    .option('--state-dir <dir>', 'where the epoch is persisted', '.state/controller-1')
    .option('--peer <id=addr>', 'static peer: ID=tcp://HOST:PORT (repeatable)', collectPeer, new Map<number, string>())
    .option('--cluster-secret-file <file>', `the cluster's shared secret (16..4096 bytes), required with --peer; default $${CLUSTER_SECRET_ENV}`, process.env[CLUSTER_SECRET_ENV])
    .option('--served-timeout-ms <ms>', 'bound on one served-memory read/write during a copy (ETIMEDOUT beyond)', String(DEFAULT_SERVED_TIMEOUT_MS))
    .option('--hello-timeout-ms <ms>', 'bound on the wait for a new connection\'s HELLO or PEER_HELLO (closed beyond)', String(DEFAULT_HELLO_TIMEOUT_MS))
    .option('--etcd <urls>', 'peers from etcd membership instead of --peer: URL[,URL...] (controller/membership.ts)')
    .option('--advertise <addr>', 'with --etcd: this Controller\'s peer address tcp://IP:PORT (listened on too)')
    .option('--lease-ttl-ms <ms>', 'with --etcd: membership lease TTL (whole seconds, at least 2000)', '2000')
    .option('--etcd-prefix <prefix>', 'with --etcd: key prefix', '/fractos')
    .option('--names-timeout-ms <ms>', 'with --etcd: bound on one kv_put/kv_get through etcd (ETIMEDOUT beyond)', '3000')
    .action(async (o: { listen: string[]; id: string; stateDir: string; peer: Map<number, string>; clusterSecretFile?: string; servedTimeoutMs: string; helloTimeoutMs: string; etcd?: string; advertise?: string; leaseTtlMs: string; etcdPrefix: string; namesTimeoutMs: string }) => {
      try {
        const clusterSecret = o.clusterSecretFile ? readClusterSecretFile(o.clusterSecretFile, (m) => log.warn(m)) : undefined;
        if (o.etcd !== undefined) {
          if (o.peer.size) throw new FractosError('EINVAL', '--etcd and --peer are exclusive (two sources of peers)');
          if (!o.advertise) throw new FractosError('EINVAL', '--etcd needs --advertise tcp://IP:PORT');
          if (!clusterSecret) throw new FractosError('EINVAL', '--etcd needs the cluster secret (--cluster-secret-file)');
          if (!o.listen.includes(o.advertise)) o.listen.push(o.advertise);
        }
        // One PeerSource for either membership: the --peer list is listed at start (`initial`), etcd members come later.
        const staticPeers = new StaticPeers(o.peer);
        const c = await Controller.start({
          clusterSecret,
          id: Number(o.id),
          listen: o.listen.length ? o.listen : [DEFAULT_CONTROLLER],
          stateDir: o.stateDir,
          peers: o.etcd === undefined ? new Map(staticPeers.initial) : new Map(),
          servedTimeoutMs: Number(o.servedTimeoutMs),
          helloTimeoutMs: Number(o.helloTimeoutMs),
          ...(o.etcd !== undefined ? { externalNames: { timeoutMs: Number(o.namesTimeoutMs) } } : {}),
          log,
        });
        let source: PeerSource = staticPeers;
        let names: EtcdNames | null = null;
        if (o.etcd !== undefined) {
          // loaded only here: etcd3 pulls in gRPC, too heavy for every fractos start
          const { EtcdMembership } = await import('../controller/membership.js');
          const { EtcdNames } = await import('../controller/names-etcd.js');
          const members = new EtcdMembership({
            endpoints: o.etcd.split(','), id: c.id, epoch: c.epoch, advertise: o.advertise!, ttlMs: Number(o.leaseTtlMs), prefix: o.etcdPrefix, log,
            listen: c.addresses,
            onFenced: (why) => {
              // The others have failed this epoch: stop serving with it (fail-stop; a restart gets a new epoch).
              log.error({ id: c.id, epoch: c.epoch }, `controller ${c.id} epoch ${c.epoch} fenced: ${why}; exiting 75`);
              void c.close().finally(() => process.exit(75));
            },
          });
          source = members;
          try {
            await members.start(c);
            // bootstrap names in etcd, bound to this Controller's membership lease
            names = new EtcdNames({
              client: members.client, lease: members.lease!, id: c.id, epoch: c.epoch, prefix: o.etcdPrefix,
              memberEpoch: (id) => members.memberEpoch(id), timeoutMs: Number(o.namesTimeoutMs), log,
            });
            c.setNameStore(names);
          } catch (err) {
            await members.close();
            await c.close();
            throw err;
          }
        } else {
          await source.start(c);
        }
        superviseService({
          name: 'controller',
          close: async () => {
            names?.close();
            await source.close();
            await c.close();
          },
        });
        // One line on stdout that scripts and tests wait for (a stop is handled from here on).
        process.stdout.write(`controller ${c.id} epoch ${c.epoch} listening ${c.addresses.join(' ')}\n`);
      } catch (err) {
        die(err);
      }
    });

  program
    .command('stats')
    .description('print frames and bytes per link of a Controller')
    .option('--controller <addr>', 'Controller address', DEFAULT_CONTROLLER)
    .option('--json', 'print JSON')
    .action(async (o: { controller: string; json?: boolean }) => {
      try {
        const p = await connect(o.controller, { name: 'stats' });
        const s = await p.stats();
        await p.close();
        const links = s.links.filter((l) => l.name !== 'stats' || l.kind !== 'process');
        if (o.json) {
          process.stdout.write(JSON.stringify({ controller: s.controller, epoch: s.epoch, links }, null, 2) + '\n');
          return;
        }
        process.stdout.write(`controller ${s.controller} epoch ${s.epoch}\n`);
        process.stdout.write(`${'kind'.padEnd(8)} ${'id'.padStart(4)} ${'name'.padEnd(20)} ${'state'.padEnd(6)} ${'frames in'.padStart(10)} ${'frames out'.padStart(10)} ${'bytes in'.padStart(12)} ${'bytes out'.padStart(12)}\n`);
        for (const l of links) {
          process.stdout.write(`${l.kind.padEnd(8)} ${String(l.id).padStart(4)} ${l.name.slice(0, 20).padEnd(20)} ${(l.live ? 'live' : 'closed').padEnd(6)} ${String(l.framesIn).padStart(10)} ${String(l.framesOut).padStart(10)} ${String(l.bytesIn).padStart(12)} ${String(l.bytesOut).padStart(12)}\n`);
        }
      } catch (err) {
        die(err);
      }
    });
}

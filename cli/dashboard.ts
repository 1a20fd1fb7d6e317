/** Subcommand `dashboard`: the live view of a cluster in the browser (dashboard/, docs/dashboard.md). */
import type { Command } from 'commander';
import { DEFAULT_CONTROLLER } from './core.js';
import { superviseService } from './lifecycle.js';
import { die, log } from './log.js';

function collect(v: string, acc: string[]): string[] {
  acc.push(v);
  return acc;
}

export function register(program: Command): void {
  program
    .command('dashboard')
    .description('serve a live view of the cluster (nodes, Processes, links, invocations) over HTTP until killed')
    .option('--port <n>', 'TCP port of the web page (0: any free one)', '8080')
    .option('--host <addr>', 'address to listen on (the page shows every Process: keep it local unless you mean it)', '127.0.0.1')
    .option('--controller <addr>', 'unix:PATH of a Controller to watch, of the same uid (repeatable)', collect, [])
    .option('--etcd <urls>', 'also watch every Controller registered in this etcd (URL[,URL...]), nodes added later included')
    .option('--etcd-prefix <prefix>', 'with --etcd: key prefix', '/fractos')
    .option('--interval-ms <ms>', 'poll period', '500')
    .option('--window-ms <ms>', 'invocations shown: those of the last window', '10000')
    .action(async (o: { port: string; host: string; controller: string[]; intervalMs: string; windowMs: string; etcd?: string; etcdPrefix: string }) => {
      try {
        // Loaded here: fastify is not paid for by every other fractos command.
        const { startDashboard } = await import('../dashboard/server.js');
        const d = await startDashboard({
          port: Number(o.port),
          host: o.host,
          controllers: o.controller.length || o.etcd !== undefined ? o.controller : [DEFAULT_CONTROLLER],
          discovered: o.etcd !== undefined,
          intervalMs: Number(o.intervalMs),
          windowMs: Number(o.windowMs),
        });
        let discovery: { close(): Promise<void> } | null = null;
        if (o.etcd !== undefined) {
          const { EtcdDiscovery } = await import('../dashboard/discover.js');
          const e = new EtcdDiscovery(d.collector, { endpoints: o.etcd.split(','), prefix: o.etcdPrefix, log });
          discovery = e;
          try {
            await e.start();
          } catch (err) {
            await e.close();
            await d.close();
            throw err;
          }
        }
        superviseService({
          name: 'dashboard',
          close: async () => {
            await discovery?.close();
            await d.close();
          },
        });
        process.stdout.write(`dashboard listening ${d.url}\n`);
      } catch (err) {
        die(err);
      }
    });
}

/** Subcommand `dashboard`: the live view of a cluster in the browser (dashboard/, docs/dashboard.md). */
import type { Command } from 'commander';
import { DEFAULT_CONTROLLER } from './core.js';
import { superviseService } from './lifecycle.js';
import { die } from './log.js';

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
    .option('--interval-ms <ms>', 'poll period', '500')
    .option('--window-ms <ms>', 'invocations shown: those of the last window', '10000')
    .action(async (o: { port: string; host: string; controller: string[]; intervalMs: string; windowMs: string }) => {
      try {
        // Loaded here: fastify is not paid for by every other fractos command.
        const { startDashboard } = await import('../dashboard/server.js');
        const d = await startDashboard({
          port: Number(o.port),
          host: o.host,
          controllers: o.controller.length ? o.controller : [DEFAULT_CONTROLLER],
          intervalMs: Number(o.intervalMs),
          windowMs: Number(o.windowMs),
        });
        superviseService({ name: 'dashboard', close: () => d.close() });
        process.stdout.write(`dashboard listening ${d.url}\n`);
      } catch (err) {
        die(err);
      }
    });
}

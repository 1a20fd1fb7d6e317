/** `fractos bench micro`: the core microbenchmarks (bench/micro.ts); `fractos bench queue`: the shared-memory queues (bench/queue-pingpong.ts); `fractos bench null`: null op and invoke over socket vs queue pair vs poll mode (bench/queue-stack.ts). */
import type { Command } from 'commander';
import { formatMicro, runMicro } from '../bench/micro.js';
import { formatQueueBench, runQueueBench } from '../bench/queue-pingpong.js';
import { formatStackBench, runStackBench } from '../bench/queue-stack.js';
import { cleanupOnSignals } from '../testbed/scratch.js';
import { die } from './log.js';

export function register(program: Command): void {
  const bench = program.command('bench').description('benchmarks');
  bench
    .command('micro')
    .description('core microbenchmarks next to the raw transport, measured in the same run')
    .option('--json', 'print DESIGN.md §6 records as one JSON array')
    .option('--max-time <s>', 'seconds per measurement', '0.5')
    .option('--trials <n>', 'revocation trials per N', '5')
    .option('--rounds <n>', 'passes over 0..8 delegated caps for the per-cap slope (reported only where significant)', '3')
    .option('--max-revoke-n <n>', 'largest N for revocation', '1000')
    .option('--only <groups>', 'comma-separated: null,invoke,delegate,revoke,memcpy')
    .action(async (o: { json?: boolean; maxTime: string; trials: string; rounds: string; maxRevokeN: string; only?: string }) => {
      cleanupOnSignals('fractos bench micro');
      try {
        const records = await runMicro({
          maxTime: Number(o.maxTime),
          trials: Number(o.trials),
          rounds: Number(o.rounds),
          maxRevokeN: Number(o.maxRevokeN),
          only: o.only?.split(',').map((x) => x.trim()),
          progress: (l) => process.stderr.write(`bench: ${l}\n`),
        });
        if (o.json) process.stdout.write(JSON.stringify(records, null, 2) + '\n');
        else process.stdout.write(formatMicro(records) + '\n');
      } catch (err) {
        die(err);
      }
    });
  bench
    .command('null')
    .description('null operation and invoke round trip over the socket, the queue pair and poll mode, next to the C ping-pong and a raw Node unix socket; idle stack CPU')
    .option('--json', 'print DESIGN.md §6 records as one JSON array')
    .option('--seconds <s>', 'seconds per case', '1')
    .option('--idle-seconds <s>', 'seconds of the idle-CPU measurement', '5')
    .action(async (o: { json?: boolean; seconds: string; idleSeconds: string }) => {
      cleanupOnSignals('fractos bench null');
      try {
        const records = await runStackBench({ seconds: Number(o.seconds), idleSeconds: Number(o.idleSeconds), progress: (l) => process.stderr.write(`bench: ${l}\n`) });
        if (o.json) process.stdout.write(JSON.stringify(records, null, 2) + '\n');
        else process.stdout.write(formatStackBench(records) + '\n');
      } catch (err) {
        die(err);
      }
    });
  bench
    .command('queue')
    .description('shared-memory queue round trips: C ping-pong, Node client over the queue, raw Node unix socket, same run')
    .option('--json', 'print DESIGN.md §6 records as one JSON array')
    .option('--seconds <s>', 'seconds per case', '0.5')
    .action(async (o: { json?: boolean; seconds: string }) => {
      cleanupOnSignals('fractos bench queue');
      try {
        const records = await runQueueBench({ seconds: Number(o.seconds), progress: (l) => process.stderr.write(`bench: ${l}\n`) });
        if (o.json) process.stdout.write(JSON.stringify(records, null, 2) + '\n');
        else process.stdout.write(formatQueueBench(records) + '\n');
      } catch (err) {
        die(err);
      }
    });
}

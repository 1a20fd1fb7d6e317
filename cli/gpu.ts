/** Subcommands `gpu` (the GPU adaptor service) and `facever enroll|serve|bench`. */
import type { Command } from 'commander';
import { openBackend, type BackendKind } from '../gpu-adaptor/backend.js';
import { GpuService } from '../gpu-adaptor/service.js';
import { connect, FractosError } from '../libfractos/index.js';
import { DEFAULT_CONTROLLER } from './core.js';
import { die, log } from './log.js';
import { registerFacever } from '../facever-app/cli.js';

export function register(program: Command): void {
  program
    .command('gpu')
    .description('run the GPU adaptor service until killed (publishes NAME.init)')
    .option('--backend <kind>', 'cuda | cpu | auto', 'auto')
    .option('--controller <addr>', 'Controller address', DEFAULT_CONTROLLER)
    .option('--name <name>', 'bootstrap prefix', 'gpu')
    .option('--barrier-timeout <ms>', 'how long a barrier waits for its invocations', '10000')
    .action(async (o: { backend: string; controller: string; name: string; barrierTimeout: string }) => {
      try {
        if (!['cuda', 'cpu', 'auto'].includes(o.backend)) throw new FractosError('EINVAL', `--backend must be cuda, cpu or auto, got '${o.backend}'`);
        const backend = openBackend(o.backend as BackendKind | 'auto');
        const p = await connect(o.controller, { name: `${o.name}-adaptor` });
        const svc = await GpuService.start(p, backend, { name: o.name, barrierTimeoutMs: Number(o.barrierTimeout), log });
        p.on('handlerError', (err: unknown) => log.warn({ err: String(err) }, 'handler error'));
        p.on('close', () => {
          log.warn('controller channel closed; exiting');
          process.exit(1);
        });
        process.stdout.write(`ready gpu backend=${backend.kind} device=${backend.deviceName}\n`);
        const stop = (): void => {
          svc.close().finally(() => p.close().finally(() => process.exit(0)));
        };
        process.on('SIGTERM', stop);
        process.on('SIGINT', stop);
      } catch (err) {
        die(err);
      }
    });
  registerFacever(program);
}

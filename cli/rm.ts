/** Subcommand `rm`: the resource manager service (rm/, docs/rm.md). */
import type { Command } from 'commander';
import { connect, FractosError } from '../libfractos/index.js';
import { DEFAULT_RM_LIMITS, RmService, keepRegistered, type KeptRegistration } from '../rm/index.js';
import type { Process } from '../libfractos/index.js';
import { DEFAULT_CONTROLLER } from './core.js';
import { startService } from './start-service.js';
import { die, log } from './log.js';

function count(name: string, x: string, min = 1): number {
  const n = Number(x);
  if (!Number.isInteger(n) || n < min) throw new FractosError('EINVAL', `--${name} must be an integer >= ${min}, got '${x}'`);
  return n;
}

export function register(program: Command): void {
  program
    .command('rm')
    .description('run the resource manager until killed (publishes NAME.open): adaptors register, apps acquire a live instance by policy')
    .option('--controller <addr>', 'Controller address', DEFAULT_CONTROLLER)
    .option('--name <name>', 'bootstrap prefix', 'rm')
    .option('--max-sessions <n>', 'open sessions, all callers', String(DEFAULT_RM_LIMITS.maxSessions))
    .option('--max-registrations <n>', 'live registrations, all sessions', String(DEFAULT_RM_LIMITS.maxRegistrations))
    .option('--max-grants <n>', 'live grants, all sessions', String(DEFAULT_RM_LIMITS.maxGrants))
    .action(async (o: { controller: string; name: string; maxSessions: string; maxRegistrations: string; maxGrants: string }) => {
      try {
        const limits = { maxSessions: count('max-sessions', o.maxSessions), maxRegistrations: count('max-registrations', o.maxRegistrations), maxGrants: count('max-grants', o.maxGrants) };
        const started = await startService('rm', async () => {
          const p = await connect(o.controller, { name: `${o.name}-rm` });
          try {
            return { p, svc: await RmService.start(p, { name: o.name, limits, log }) };
          } catch (err) {
            await p.close().catch(() => {});
            throw err;
          }
        }, ({ p, svc }) => ({ proc: p, close: () => svc.close().finally(() => p.close()) }));
        if (!started) return;
        started.p.on('handlerError', (err: unknown) => log.warn({ err: String(err) }, 'handler error'));
        process.stdout.write(`ready rm name=${o.name} controller=${started.p.controllerId}\n`);
      } catch (err) {
        die(err);
      }
    });
}

/** Help of a service's `--rm` option. */
export const RM_HELP = 'register with the resource manager NAME (waits for it; re-registers when it restarts). Without it: registers with \'rm\' when one is published at start';

/**
 * Register a service's Requests with the RM: with `--rm NAME` wait for it; without, register
 * with `rm` only when it is published at start. Failures are logged, the service keeps serving.
 */
export function registerWithRm(p: Process, rmName: string | undefined, spec: Parameters<typeof keepRegistered>[2], load?: () => number): KeptRegistration {
  return keepRegistered(p, rmName ?? 'rm', spec, {
    once: rmName === undefined,
    load,
    onError: (e) => log.warn({ err: e.message, rm: rmName ?? 'rm' }, 'resource manager registration failed'),
    onRegistered: (r) => log.info({ id: r.id, kind: spec.kind, name: spec.name }, 'registered with the resource manager'),
  });
}

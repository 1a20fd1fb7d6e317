/**
 * Starting a long-running `fractos` service with its stop handling in place from the first
 * moment: a SIGINT (Ctrl-C) or SIGTERM that arrives while the service is still starting
 * (the FS waits up to 30 s for the blockdev's admin_claim) aborts the start (the `signal`
 * passed to `start`), closes whatever did start, prints `NAME: stopped on SIGNAL` on stderr
 * and exits 0, as a stop after `ready` does (lifecycle.ts, which takes over once started).
 */
import { STOP_GRACE_MS, superviseService, type Exit, type ServiceLife } from './lifecycle.js';
import { log } from './log.js';

/**
 * Run `start(signal)`, with SIGINT/SIGTERM handled meanwhile (see the module comment); once
 * it resolves without a stop asked for, hand the service to `superviseService(life(s))` and
 * return it. Returns null when a stop ended the start (the exit is already on its way).
 * Errors: `start`'s, when no stop was asked for.
 */
export async function startService<S>(name: string, start: (signal: AbortSignal) => Promise<S>, life: (s: S) => Omit<ServiceLife, 'name'>, exit: Exit = (c) => process.exit(c)): Promise<S | null> {
  const ac = new AbortController();
  let stopOn: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopOn) return;
    stopOn = sig;
    const guard = setTimeout(() => {
      process.stderr.write(`${name}: stop on ${sig} did not finish in ${STOP_GRACE_MS} ms; exiting\n`);
      exit(1);
    }, STOP_GRACE_MS);
    guard.unref();
    ac.abort(new Error(`${name}: stopped on ${sig} while starting`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const stopped = (sig: NodeJS.Signals): null => {
    process.stderr.write(`${name}: stopped on ${sig}\n`);
    exit(0);
    return null;
  };
  // The early handlers stay installed (ignoring repeats) until the exit or superviseService's take over.
  const unhook = (): void => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
  let s: S;
  try {
    s = await start(ac.signal);
  } catch (err) {
    if (stopOn) return stopped(stopOn);
    unhook();
    throw err;
  }
  if (stopOn) {
    await life(s).close().catch((err: unknown) => log.warn({ err: String(err) }, `${name}: error while stopping`));
    return stopped(stopOn);
  }
  unhook();
  superviseService({ name, ...life(s) }, exit);
  return s;
}

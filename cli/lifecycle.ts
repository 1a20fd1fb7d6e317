/**
 * How a long-running `fractos` service ends (controller, blockdev, fs, gpu, facever serve).
 *
 * - A requested stop (SIGINT = Ctrl-C, SIGTERM = `kill`, SIGHUP = its terminal closed)
 *   closes the service, prints one line `NAME: stopped on SIGINT` on stderr and exits 0.
 *   The service's own channel closing during that stop is expected and is not reported.
 * - A loss of the Controller (the Process channel closes without a stop being asked for)
 *   is an error: warn `controller channel closed; exiting` and exit 1.
 */
import type { EventEmitter } from 'node:events';
import { log } from './log.js';

/** Most time a requested stop may take before the process exits anyway (ms). */
export const STOP_GRACE_MS = 10_000;

export interface ServiceLife {
  /** Service name in the stop line (`blockdev`, `fs`, `gpu`, `controller`, `facever`). */
  name: string;
  /** Close everything the service holds (channel, device, sockets). Errors are logged, the exit stays 0. */
  close(): Promise<void>;
  /**
   * The Process whose `close` event means the Controller went away (absent for the
   * Controller itself). `onLost` runs before the exit(1) (e.g. to close a device).
   */
  proc?: EventEmitter;
  onLost?: () => Promise<void>;
}

/** How the process ends with an exit code (default `process.exit`). */
export type Exit = (code: number) => void;

/**
 * Install the stop and loss handlers of a service (see the module comment). Returns a
 * function that runs a requested stop as if `signal` had arrived (used by the handlers).
 */
export function superviseService(s: ServiceLife, exit: Exit = (c) => process.exit(c)): (signal: NodeJS.Signals) => void {
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    const guard = setTimeout(() => {
      process.stderr.write(`${s.name}: stop on ${signal} did not finish in ${STOP_GRACE_MS} ms; exiting\n`);
      exit(1);
    }, STOP_GRACE_MS);
    guard.unref();
    s.close()
      .catch((err: unknown) => log.warn({ err: String(err) }, `${s.name}: error while stopping`))
      .finally(() => {
        clearTimeout(guard);
        process.stderr.write(`${s.name}: stopped on ${signal}\n`);
        exit(0);
      });
  };
  s.proc?.on('close', () => {
    if (stopping) return;
    stopping = true;
    log.warn('controller channel closed; exiting');
    (s.onLost?.() ?? Promise.resolve()).catch(() => {}).finally(() => exit(1));
  });
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGHUP', () => stop('SIGHUP'));
  return stop;
}

/** The CLI's logger: pino to stderr, level from FRACTOS_LOG (default 'info'). */
import pino from 'pino';

export const log = pino({ level: process.env.FRACTOS_LOG ?? 'info', base: { pid: process.pid } }, pino.destination(2));

/** Print a FractosError (or any error) as `fractos: CODE: message` and exit 1. */
export function die(err: unknown): never {
  const e = err as { code?: string; message?: string };
  process.stderr.write(`fractos: ${e.message ?? String(err)}\n`);
  process.exit(1);
}

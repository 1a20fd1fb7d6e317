/** The CLI's logger: pino to stderr, level from FRACTOS_LOG (default 'info'). */
import pino from 'pino';

/** The levels FRACTOS_LOG may name (pino's). */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * The level named by `value` (FRACTOS_LOG), 'info' when unset. A name that is not a level is
 * refused at once with one line naming the variable and the levels (exit 2), never a stack.
 */
export function logLevel(value: string | undefined): string {
  if (value === undefined || value === '') return 'info';
  const v = value.toLowerCase();
  if ((LOG_LEVELS as readonly string[]).includes(v)) return v;
  process.stderr.write(`fractos: EINVAL: FRACTOS_LOG='${value}' is not a log level (${LOG_LEVELS.join(', ')})\n`);
  process.exit(2);
}

export const log = pino({ level: logLevel(process.env.FRACTOS_LOG), base: { pid: process.pid } }, pino.destination(2));

/** Print a FractosError (or any error) as `fractos: CODE: message` and exit 1. */
export function die(err: unknown): never {
  const e = err as { code?: string; message?: string };
  process.stderr.write(`fractos: ${e.message ?? String(err)}\n`);
  process.exit(1);
}

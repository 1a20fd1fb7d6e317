/** The CLI's logger: pino to stderr, level from FRACTOS_LOG (default 'info'). */
import pino from 'pino';
import { FractosError, errorCodeFromErrno, withoutCode } from '../libfractos/errors.js';

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

/**
 * Make a failed write of a command's output (stdout to a full device, `> /dev/full`: ENOSPC;
 * to a closed pipe: EPIPE) end it with `fractos: CODE: cannot write the output: ...` on stderr
 * and exit 1, instead of an unhandled 'error' event and a stack trace. Install once, early.
 */
export function guardStdout(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    const code = errorCodeFromErrno(err.code ?? 'EIO');
    die(new FractosError(code, `cannot write the output: ${withoutCode(err.code ?? code, err.message)}`));
  });
}

/** The CLI's logger: pino to stderr, level from FRACTOS_LOG (default 'info'). */
import pino from 'pino';
import { FractosError, errorCodeFromErrno, withoutCode } from '../libfractos/errors.js';

export const log = pino({ level: process.env.FRACTOS_LOG ?? 'info', base: { pid: process.pid } }, pino.destination(2));

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

/** Assertions on typed errors (FractosError codes). */
import { FractosError } from '../../libfractos/errors.js';

/** The FractosError code `p` rejects with, or 'OK' when it resolves. Other errors are rethrown. */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (err) {
    if (err instanceof FractosError) return err.code;
    throw err;
  }
}

/** Assert that `p` rejects with the FractosError `expected` (the error's message is shown on a mismatch). */
export async function expectCode(t: { is: (a: unknown, b: unknown, m?: string) => void }, p: Promise<unknown>, expected: string): Promise<void> {
  try {
    await p;
    t.is('no error', expected);
  } catch (err) {
    t.is((err as FractosError).code, expected, (err as Error).message);
  }
}

/** FRACTOS_LOG: a level name (any case) is taken; anything else is one clear line and exit 2, never a stack trace. */
import test from 'ava';
import { run } from './helpers/cli.js';
import { FRACTOS_BIN } from './helpers/spawn.js';

test('FRACTOS_LOG=bogus: one line naming the variable and the levels, exit 2', async (t) => {
  const r = run([FRACTOS_BIN, 'stats', '--controller', 'unix:/nonexistent.sock'], { FRACTOS_LOG: 'bogus' });
  const e = await r.exit;
  t.is(e.code, 2, r.out());
  t.regex(r.out(), /^fractos: EINVAL: FRACTOS_LOG='bogus' is not a log level \(fatal, error, warn, info, debug, trace, silent\)$/m);
  t.notRegex(r.out(), /\n\s+at /, 'no stack trace');
});

test('FRACTOS_LOG=WARN (upper case) is the warn level', async (t) => {
  const r = run([FRACTOS_BIN, 'stats', '--controller', 'unix:/nonexistent.sock'], { FRACTOS_LOG: 'WARN' });
  const e = await r.exit;
  t.is(e.code, 1, r.out());
  t.regex(r.out(), /EDISCONNECTED/);
});

/** A Controller whose start is refused (its socket answers) leaves nothing behind: no state dir it made. */
import test from 'ava';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { expectCode } from './helpers/errors.js';
import { removeTempDir, tempDir } from './helpers/spawn.js';

test('a refused start (EADDRINUSE) does not create its state dir, and leaves an existing one as it was', async (t) => {
  const dir = tempDir('fractos-refused-');
  t.teardown(() => removeTempDir(dir));
  const addr = `unix:${join(dir, 'c.sock')}`;
  const a = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'a') });
  t.teardown(() => a.close());
  const fresh = join(dir, 'b', 'state');
  await expectCode(t, Controller.start({ id: 2, listen: [addr], stateDir: fresh }), 'EADDRINUSE');
  t.false(existsSync(fresh), 'no state dir made by a refused start');
  const kept = join(dir, 'kept');
  mkdirSync(kept);
  await expectCode(t, Controller.start({ id: 2, listen: [addr], stateDir: kept }), 'EADDRINUSE');
  t.deepEqual(readdirSync(kept), [], 'an existing state dir: kept, nothing written (no epoch, no lock)');
});

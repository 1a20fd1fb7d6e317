/** `stats` tells live links from closed ones (closed links keep their counters). */
import test from 'ava';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect } from '../libfractos/index.js';
import { until } from './helpers/cli.js';
import { removeTempDir, tempDir } from './helpers/spawn.js';

test('stats: a closed Process link is reported closed with its counters; live ones live', async (t) => {
  const dir = tempDir('fractos-stats-');
  t.teardown(() => removeTempDir(dir));
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'state') });
  t.teardown(() => c.close());
  const gone = await connect(addr, { name: 'gone' });
  await gone.memoryCreateShared(4096);
  await gone.close();
  const me = await connect(addr, { name: 'me' });
  t.teardown(() => me.close());
  t.true(await until(() => c.stats().some((l) => l.name === 'gone' && l.closed === true), 5000));
  const s = await me.stats();
  const g = s.links.find((l) => l.name === 'gone');
  const m = s.links.find((l) => l.name === 'me');
  t.truthy(g);
  t.false(g!.live);
  t.true(g!.framesIn >= 2, 'its counters are kept');
  t.true(m!.live);
});

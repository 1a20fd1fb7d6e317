/**
 * `fractos dashboard --etcd`: the dashboard finds its Controllers in etcd (their member
 * keys publish their Process addresses) and a Controller started later appears without a
 * restart; a killed one stays on the page, down. Skips with the reason without etcd.
 */
import anyTest, { type TestFn } from 'ava';
import { EtcdDiscovery } from '../dashboard/discover.js';
import { startDashboard } from '../dashboard/server.js';
import { bed, noEtcd } from './helpers/etcd.js';
import { until } from './helpers/wait.js';

const test = (noEtcd ? anyTest.skip : anyTest.serial) as TestFn;
if (noEtcd) anyTest(`dashboard etcd tests skipped: ${noEtcd}`, (t) => t.pass());

test('the dashboard discovers Controllers from etcd, one started later included; a killed one shows down', async (t) => {
  const b = await bed(t);
  await b.start(1);
  const d = await startDashboard({ port: 0, controllers: [], discovered: true, intervalMs: 100 });
  t.teardown(() => d.close());
  const disc = new EtcdDiscovery(d.collector, { endpoints: [b.url] });
  t.teardown(() => disc.close());
  await disc.start();
  const ids = (): [number, boolean][] => d.collector.snapshot.nodes.filter((n) => n.address).map((n) => [n.id, n.up]);
  t.true(await until(() => ids().some(([id, up]) => id === 1 && up), 10_000), JSON.stringify(d.collector.snapshot.nodes));
  const c2 = await b.start(2);
  t.true(await until(() => ids().some(([id, up]) => id === 2 && up), 10_000), JSON.stringify(d.collector.snapshot.nodes));
  t.deepEqual(d.collector.watched.sort(), [b.unix(1), b.unix(2)].sort());
  await c2.kill9();
  t.true(await until(() => ids().some(([id, up]) => id === 2 && !up), 10_000), JSON.stringify(d.collector.snapshot.nodes));
  // the page still lists it (down), and the other stays up
  t.true(ids().some(([id, up]) => id === 1 && up));
});

/**
 * KV_LIST (`Process.kvList`, `fractos names --controller`): the names a Controller holds,
 * sorted, with origin Controller, epoch and publishing Process; paged past 64 KiB; only
 * for Processes of the Controller's uid on a unix socket (EPERM over tcp).
 */
import test from 'ava';
import { connect } from '../libfractos/index.js';
import { codeOf } from './helpers/errors.js';
import { run } from './helpers/cli.js';
import { cluster } from './helpers/inproc-cluster.js';

test('kvList: every name of the replicated map on either Controller, sorted, with its origin; paged; fractos names --controller', async (t) => {
  const c = await cluster(2);
  try {
    const a = await c.proc(0, 'a');
    const b = await c.proc(1, 'b');
    const q = await a.requestCreate(1);
    await a.kvPut('svc.a', q);
    await b.kvPut('svc.b', await b.requestCreate(2));
    const want = (l: { names: { name: string; controller: number }[] }): [string, number][] => l.names.map((n) => [n.name, n.controller]);
    let l1 = await a.kvList();
    for (let i = 0; i < 300 && l1.names.length < 2; i++) {
      await new Promise((r) => setTimeout(r, 10)); // the peer's P_KV_PUT is on its way
      l1 = await a.kvList();
    }
    t.false(l1.external);
    t.deepEqual(want(l1), [['svc.a', 1], ['svc.b', 2]]);
    t.like(l1.names[0], { proc: 1, epoch: c.ctl[0]!.epoch });
    t.deepEqual(want(await b.kvList()), [['svc.a', 1], ['svc.b', 2]]);
    // more than one reply's worth (64 KiB): 1000 names of 100 bytes
    for (let i = 0; i < 1000; i++) await a.kvPut(`bulk.${String(i).padStart(4, '0')}.${'x'.repeat(91)}`, q);
    const all = await a.kvList();
    t.is(all.names.length, 1002);
    t.deepEqual(all.names.map((n) => n.name), all.names.map((n) => n.name).sort());
    t.is(new Set(all.names.map((n) => n.name)).size, 1002);
    // the CLI
    const cli = run(['bin/fractos.js', 'names', '--controller', c.addr[1]!, '--json']);
    t.is((await cli.exit).code, 0, cli.out());
    t.is((JSON.parse(cli.out()) as { names: unknown[] }).names.length >= 2, true);
    // not over tcp
    const tcp = await connect(c.ctl[0]!.addresses[1]!, { name: 'remote' });
    t.is(await codeOf(tcp.kvList()), 'EPERM');
    await tcp.close();
  } finally {
    await c.stop();
  }
});

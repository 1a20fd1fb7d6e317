/**
 * INTROSPECT (docs/protocol.md "Introspection"): golden bytes of a reply, the counts and
 * the invocation records of two in-process Controllers (local and remote invocations), the
 * ring's overwrite, and EPERM over tcp.
 */
import test from 'ava';
import { Controller } from '../controller/index.js';
import { connect, decodeIntrospect, FractosError } from '../libfractos/index.js';
import { cluster } from './helpers/inproc-cluster.js';
import { tempDir } from './helpers/spawn.js';
import { until } from './helpers/wait.js';
import { join } from 'node:path';

test('golden: an INTROSPECT reply with one Process and one invocation record decodes field by field', (t) => {
  const hex = [
    '71000000', '7f00', '0000', '07000000', '0000', '0000', // header: length 113, REPLY, seq 7
    '02000000', '03000000', '00000000', // controller 2, epoch 3, flags 0
    '05000000', '06000000', '01000000', '02000000', // objects 5, caps 6, proxies 1, names 2
    '0100', '0100', // 1 process, 1 record
    '0900000000000000', '0a00000000000000', // firstSeq 9, nextSeq 10
    '04000000', '39300000', '02000000', '03000000', '04', '6d696e65', // proc 4, pid 12345, 2 objects, 3 caps, 'mine'
    '01', '00', '0000', '01000000', '02000000', '04000000', '2a00000001000000', 'e8030000', // peer 1 -> ctl 2 obj 2^32+42 provider 4, 1000 ms
  ].join('');
  t.is(hex.length / 2, 113, 'the header length is the whole frame');
  const r = decodeIntrospect(Buffer.from(hex, 'hex'));
  t.deepEqual(r, {
    controller: 2, epoch: 3, procsTruncated: false, objects: 5, caps: 6, proxies: 1, names: 2,
    processes: [{ id: 4, pid: 12345, objects: 2, caps: 3, name: 'mine' }],
    invocations: [{ seq: 9, invokerKind: 'peer', invokerId: 1, targetController: 2, targetObject: 2 ** 32 + 42, provider: 4, ageMs: 1000 }],
    firstSeq: 9, nextSeq: 10,
  });
  // The Controller's encoder and ring: the same bytes in controller/src/test/core_test.cc (testWire).
  // Truncated or overlong replies are EPROTO.
  for (const bad of [hex.slice(0, -2), hex + '00', hex.slice(0, 2 * 40)]) {
    t.is(t.throws(() => decodeIntrospect(Buffer.from(bad, 'hex')), { instanceOf: FractosError })?.code, 'EPROTO');
  }
});

test('INTROSPECT lists Processes with object and cap counts and records local and remote invocations', async (t) => {
  const c = await cluster(2);
  t.teardown(() => c.stop());
  const provider = await c.proc(1, 'provider');
  const client = await c.proc(0, 'client');
  let got = 0;
  provider.onRequest(5, () => {
    got++;
  });
  const req = await provider.requestCreate(5);
  await provider.kvPut('svc', req);
  const local = await client.requestCreate(6);
  client.onRequest(6, () => {});
  const remote = await client.kvWait('svc');
  for (let i = 0; i < 3; i++) await client.requestInvoke(remote);
  await client.requestInvoke(local);
  t.true(await until(() => got === 3));

  const a = await client.introspect();
  t.is(a.controller, 1);
  t.is(a.nextSeq, 4);
  const me = a.processes.find((p) => p.name === 'client')!;
  t.is(me.pid, process.pid);
  t.is(me.objects, 1);
  t.is(me.caps, 2);
  t.is(a.invocations.length, 4);
  t.like(a.invocations[0], { seq: 0, invokerKind: 'process', invokerId: me.id, targetController: 2, provider: 0 });
  t.like(a.invocations[3], { seq: 3, invokerKind: 'process', invokerId: me.id, targetController: 1, provider: me.id });

  const pb = await c.proc(1, 'observer');
  const b = await pb.introspect();
  const prov = b.processes.find((p) => p.name === 'provider')!;
  t.is(b.invocations.length, 3);
  for (const r of b.invocations) t.like(r, { invokerKind: 'peer', invokerId: 1, targetController: 2, provider: prov.id });
  // The remote record at controller 1 names the same object as the record at controller 2.
  t.is(a.invocations[0]!.targetObject, b.invocations[0]!.targetObject);
  // Asking from nextSeq returns nothing new.
  t.is((await pb.introspect(b.nextSeq)).invocations.length, 0);
});

test('INTROSPECT over tcp is EPERM (no kernel uid), the channel stays usable', async (t) => {
  const dir = tempDir();
  const ctl = await Controller.start({ id: 1, listen: ['tcp://127.0.0.1:0'], stateDir: join(dir, 's') });
  t.teardown(() => ctl.close());
  const p = await connect(ctl.addresses[0]!);
  t.teardown(() => p.close());
  const err = await t.throwsAsync(p.introspect());
  t.is((err as { code?: string }).code, 'EPERM');
  t.is((await p.stats()).controller, 1);
});

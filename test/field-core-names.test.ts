/**
 * Review item 1 of issue #7: a bootstrap name belongs to the Process that published it, on
 * its Controller and on every peer. Another Process (local or on a peer) gets EEXIST; the
 * publisher replaces its own name; the name goes away with its publisher; a restarted
 * service publishes its names again.
 */
import test from 'ava';
import { defineReply, defineRequest, type Process } from '../libfractos/index.js';
import { cluster } from './helpers/inproc-cluster.js';
import { codeOf } from './helpers/errors.js';

const Who = defineRequest('field.names.who', {}, ['onSuccess', 'onError'] as const);
const WhoReply = defineReply('field.names.who.reply', { id: 'u32' }, [] as const);

/** Serve Who on `p` (answers `id`) and return a Request cap for it. */
async function who(p: Process, id: number): Promise<number> {
  p.serve(Who, async ({ caps }) => {
    await p.invoke(caps.onSuccess, WhoReply, { id });
  });
  return p.createRequest(Who);
}

/** Which server answers the Request published as `name`, asked by `p`. */
async function ask(p: Process, name: string): Promise<number> {
  const cid = await p.kvGet(name);
  try {
    return WhoReply.decode(await p.rpc(cid, Who, {}, {}, { timeoutMs: 3000 })).imms.id;
  } finally {
    await p.capDrop(cid);
  }
}

/** Poll until `p` gets ENOENT for `name` (the removal reached its Controller). */
async function gone(p: Process, name: string): Promise<boolean> {
  for (let i = 0; i < 300; i++) {
    const code = await codeOf(p.kvGet(name).then((c) => p.capDrop(c)));
    if (code === 'ENOENT') return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return false;
}

test('a local Process cannot take over a published name; the publisher can replace it', async (t) => {
  const c = await cluster(1);
  try {
    const owner = await c.proc(0, 'fs');
    const mallory = await c.proc(0, 'mallory');
    const bob = await c.proc(0, 'bob');
    await owner.kvPut('fs.open', await who(owner, 1));
    const err = await mallory.kvPut('fs.open', await who(mallory, 666)).then(() => null, (e: Error) => e);
    t.is((err as { code?: string } | null)?.code, 'EEXIST');
    t.regex(err!.message, /^EEXIST: 'fs\.open' is published by process \d+ \(fs\); only its publisher can replace it$/);
    t.is(await ask(bob, 'fs.open'), 1);
    // The publisher replaces its own entry.
    await owner.kvPut('fs.open', await who(owner, 2));
    t.is(await ask(bob, 'fs.open'), 2);
    t.is(await codeOf(mallory.kvPut('fs.open', await mallory.requestCreate(9))), 'EEXIST');
  } finally {
    await c.stop();
  }
});

test('a name goes away with its publisher; a restarted publisher (republish) gets it back at once', async (t) => {
  const c = await cluster(1);
  try {
    const first = await c.proc(0, 'svc');
    const bob = await c.proc(0, 'bob');
    await first.kvPut('svc.echo', await who(first, 1));
    t.is(await ask(bob, 'svc.echo'), 1);
    // Restart: the new run puts right away, before the Controller may have seen the old channel close.
    const second = await c.proc(0, 'svc');
    const closing = first.close();
    await second.kvPut('svc.echo', await who(second, 2), { republish: true });
    await closing;
    t.is(await ask(bob, 'svc.echo'), 2);
    await second.close();
    t.true(await gone(bob, 'svc.echo'));
  } finally {
    await c.stop();
  }
});

test('a Process on another Controller cannot take over a name; getters on both reach the publisher', async (t) => {
  const c = await cluster(2);
  try {
    const owner = await c.proc(0, 'echo');
    const mallory = await c.proc(1, 'mallory');
    const bob1 = await c.proc(0, 'bob1');
    const bob2 = await c.proc(1, 'bob2');
    await owner.kvPut('echo', await who(owner, 1));
    t.is(await mallory.kvWait('echo', 5000).then((cid) => mallory.capDrop(cid)), undefined);
    const err = await mallory.kvPut('echo', await who(mallory, 666)).then(() => null, (e: Error) => e);
    t.is((err as { code?: string } | null)?.code, 'EEXIST');
    t.regex(err!.message, /^EEXIST: 'echo' is published by process \d+ of controller 1;/);
    t.is(await ask(bob1, 'echo'), 1);
    t.is(await ask(bob2, 'echo'), 1);
    // The reverse direction: a name published on controller 2 is refused on controller 1.
    await mallory.kvPut('m.echo', await who(mallory, 2));
    await bob1.kvWait('m.echo', 5000).then((cid) => bob1.capDrop(cid));
    t.is(await codeOf(owner.kvPut('m.echo', await owner.requestCreate(3))), 'EEXIST');
    // The publisher goes away: the name goes on both Controllers, and someone else may take it.
    await owner.close();
    t.true(await gone(bob2, 'echo'));
    t.true(await gone(bob1, 'echo'));
    await mallory.kvPut('echo', await who(mallory, 7), { republish: true });
    t.is(await ask(bob1, 'echo'), 7);
  } finally {
    await c.stop();
  }
});

test('concurrent claims of one name on two Controllers converge on one publisher', async (t) => {
  const c = await cluster(2);
  try {
    const a = await c.proc(0, 'a');
    const b = await c.proc(1, 'b');
    const [ra, rb] = [await who(a, 1), await who(b, 2)];
    const res = await Promise.allSettled([a.kvPut('race', ra), b.kvPut('race', rb)]);
    t.true(res.some((r) => r.status === 'fulfilled'));
    const bob1 = await c.proc(0, 'bob1');
    const bob2 = await c.proc(1, 'bob2');
    let x = 0;
    let y = -1;
    for (let i = 0; i < 100 && x !== y; i++) {
      await new Promise((r) => setTimeout(r, 20));
      [x, y] = [await ask(bob1, 'race'), await ask(bob2, 'race')];
    }
    t.is(x, y);
    // The winner's name stands against the loser's later put.
    const loser = x === 1 ? b : a;
    t.is(await codeOf(loser.kvPut('race', await loser.requestCreate(5))), 'EEXIST');
  } finally {
    await c.stop();
  }
});

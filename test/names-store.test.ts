/**
 * The Controller's external name store bridge (ControllerOptions.externalNames,
 * Controller.setNameStore; native host_names.* and the addon's thread-safe function), with
 * an in-memory store instead of etcd: EAGAIN until a store is set; puts and gets answered by
 * the store, its records turned into caps across the bridge; its typed errors passed on; a
 * store that never answers fails the call with ETIMEDOUT within the bound, and other calls go
 * on meanwhile (the loop never waits); removal when the publisher goes. Runs without etcd.
 */
import test from 'ava';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import type { ExternalNameStore, NameRecord, StoredName } from '../controller/names-etcd.js';
import { connect, FractosError } from '../libfractos/index.js';
import { codeOf } from './helpers/errors.js';
import { tempDir } from './helpers/spawn.js';
import { until } from './helpers/wait.js';

class MemStore implements ExternalNameStore {
  readonly names = new Map<string, StoredName>();
  readonly removed: string[] = [];
  rev = 0;
  hang = false;
  async put(name: Buffer, r: NameRecord): Promise<StoredName> {
    const k = name.toString();
    const had = this.names.get(k);
    if (had && had.proc !== r.proc) throw new FractosError('EEXIST', `'${k}' is held by process ${had.proc}`);
    const s = { ...r, name: k, revision: ++this.rev, createRevision: had?.createRevision ?? this.rev, lease: '' };
    this.names.set(k, s);
    return s;
  }
  async get(name: Buffer): Promise<StoredName> {
    if (this.hang) return new Promise(() => {});
    const s = this.names.get(name.toString());
    if (!s) throw new FractosError('ENOENT', `no cap published as '${name}'`);
    return s;
  }
  remove(name: Buffer, r: NameRecord): void {
    const k = name.toString();
    if (this.names.get(k)?.proc === r.proc) this.names.delete(k);
    this.removed.push(k);
  }
}

test('names through an external store: EAGAIN until set, answered by the store, typed errors, ETIMEDOUT when it never answers, removed with the publisher', async (t) => {
  const dir = tempDir();
  const sock = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [sock], stateDir: join(dir, 's'), externalNames: { timeoutMs: 300 } });
  t.teardown(() => c.close());
  const a = await connect(sock, { name: 'a' });
  const b = await connect(sock, { name: 'b' });
  t.teardown(async () => {
    await a.close().catch(() => {});
    await b.close().catch(() => {});
  });
  const q = await a.requestCreate(1);
  t.is(await codeOf(a.kvPut('svc', q)), 'EAGAIN');
  const store = new MemStore();
  c.setNameStore(store);
  await a.kvPut('svc', q);
  t.like(store.names.get('svc'), { controller: 1, epoch: c.epoch, proc: 1, revision: 1 });
  t.regex(store.names.get('svc')!.ref, new RegExp(`^1:${c.epoch}:\\d+$`));
  t.is(c.tableSizes().names, 1);
  const got = await b.kvGet('svc');
  t.true(got > 0);
  // another local Process: EEXIST from the core, without asking the store
  const local = await b.kvPut('svc', await b.requestCreate(2)).then(() => null, (err: Error) => err);
  t.regex(local!.message, /^EEXIST: 'svc' is published by process 1 \(a\)/);
  // a name the store holds for another Controller's Process: the store's EEXIST, passed on
  store.names.set('other', { name: 'other', controller: 9, epoch: 1, proc: 7, ref: '9:1:1', revision: 0, createRevision: 0, lease: '' });
  const e = await b.kvPut('other', await b.requestCreate(3)).then(() => null, (err: Error) => err);
  t.is((e as { code?: string } | null)?.code, 'EEXIST');
  t.regex(e!.message, /^EEXIST: 'other' is held by process 7$/);
  t.is(await codeOf(b.kvGet('nope')), 'ENOENT');
  // the publisher's own republish goes to the store again (revision grows)
  await a.kvPut('svc', q);
  t.is(store.names.get('svc')!.revision, 2);
  // a store that never answers: ETIMEDOUT within the bound, and the Controller serves on
  store.hang = true;
  const t0 = performance.now();
  let settled = false;
  const slow = codeOf(b.kvGet('svc')).finally(() => (settled = true));
  await b.nullOp();
  t.false(settled, 'a null op after it is answered first: the pending kv_get holds nothing up');
  t.is(await slow, 'ETIMEDOUT');
  const ms = performance.now() - t0;
  t.true(ms >= 280 && ms < 2000, `${ms} ms`);
  store.hang = false;
  // the publisher goes: its name is removed from the store
  await a.close();
  await until(() => !store.names.has('svc'), 10_000);
  t.false(store.names.has('svc'));
  t.deepEqual(store.removed, ['svc']);
  t.is(c.tableSizes().names, 0);
  // only with externalNames
  const dir2 = tempDir();
  const plain = await Controller.start({ id: 2, listen: [`unix:${join(dir2, 'c.sock')}`], stateDir: join(dir2, 's') });
  t.throws(() => plain.setNameStore(store), { message: /EINVAL/ });
  await plain.close();
});

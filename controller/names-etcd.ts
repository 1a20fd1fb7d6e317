/**
 * Bootstrap names in etcd (docs/cluster.md "Names in etcd"): the external name store of a
 * Controller run with `--etcd` (the native core's `NameStore`, controller/src/host.h).
 *
 * `PREFIX/names/NAME` = `{"controller","epoch","proc","ref"}` (JSON; `ref` is the published
 * object's ref `C:E:ID`, a cap cannot leave its Controller): one value per name
 * cluster-wide, put with the publishing Controller's membership lease attached, so that the
 * names of a failed Controller disappear with its lease.
 *
 * - put: a txn `create_revision == 0` → put; otherwise the current value is read in the
 *   same txn: its own publisher (same Controller, epoch and Process) replaces it, and so
 *   does anyone when the holder's Controller has restarted since (an older epoch than its
 *   current member key, or this Controller's own earlier epoch: those objects are gone),
 *   each with a txn `mod_revision == R` (retried at most 3 times when it races); anyone
 *   else gets EEXIST naming the holder and the revision.
 * - get: a linearizable (quorum) range read; the answer carries the key's mod and create
 *   revisions.
 * - remove (the publishing Process went): a txn `value == V` → delete, so that only the
 *   publisher's own value goes; retried every 500 ms while etcd is unreachable.
 *
 * Every etcd call has a deadline (`timeoutMs`); a failure is EAGAIN (etcd unavailable) or
 * ETIMEDOUT (the deadline passed), and the native side bounds every request again.
 * Algorithm: etcd's compare-and-swap transactions, as in etcd's own lock and election
 * recipes (etcd docs, "KV API guarantees").
 */
import type { Etcd3, Lease } from 'etcd3';
import { FractosError } from '../libfractos/errors.js';

/** A name's value as stored (and as `fractos names` lists it). */
export interface NameRecord {
  /** Publishing Controller id, its epoch, and the publishing Process's id there. */
  controller: number;
  epoch: number;
  proc: number;
  /** The published object's ref: `CONTROLLER:EPOCH:ID` (ID a decimal u64). */
  ref: string;
}

/** A stored name: its record and etcd revisions. */
export interface StoredName extends NameRecord {
  name: string;
  /** etcd mod_revision of the value (grows with every put of any key). */
  revision: number;
  /** etcd create_revision (the revision at which this value was first published). */
  createRevision: number;
  /** The lease the key is bound to (hex), '' when none. */
  lease: string;
}

/** What the Controller asks of an external name store (controller.ts setNameStore). */
export interface ExternalNameStore {
  /** Errors: EEXIST, EAGAIN, ETIMEDOUT. */
  put(name: Buffer, r: NameRecord): Promise<StoredName>;
  /** Errors: ENOENT, EAGAIN, ETIMEDOUT, EIO (a value that is not a record). */
  get(name: Buffer): Promise<StoredName>;
  /** Best effort, retried while etcd is unreachable; never throws. */
  remove(name: Buffer, r: NameRecord): void;
}

/** Default deadline of one etcd call of the name store (ms). */
export const DEFAULT_NAMES_TIMEOUT_MS = 2000;
/** Removals waiting for etcd to come back, at most (the oldest are dropped: their lease still bounds them). */
const MAX_PENDING_REMOVES = 65_536;

/** `PREFIX/names/` as bytes. */
export function namesPrefix(prefix: string): Buffer {
  return Buffer.from(`${prefix}/names/`);
}

/** The value stored for `r` (stable field order: `remove` compares it byte for byte). */
export function encodeName(r: NameRecord): string {
  return JSON.stringify({ controller: r.controller, epoch: r.epoch, proc: r.proc, ref: r.ref });
}

/** A stored value back, or null when it is not one. */
export function decodeName(value: string): NameRecord | null {
  try {
    const v = JSON.parse(value) as NameRecord;
    const u32 = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;
    if (!u32(v.controller) || !u32(v.epoch) || !u32(v.proc) || typeof v.ref !== 'string' || !/^\d+:\d+:\d+$/.test(v.ref)) return null;
    return { controller: v.controller, epoch: v.epoch, proc: v.proc, ref: v.ref };
  } catch {
    return null;
  }
}

interface Kv {
  key: Buffer;
  value: Buffer;
  mod_revision: string;
  create_revision: string;
  lease: string;
}

/** One listed name from an etcd key-value (null when the value is not a record). */
export function storedName(prefix: Buffer, kv: Kv): StoredName | null {
  const r = decodeName(kv.value.toString());
  if (!r) return null;
  return {
    ...r, name: kv.key.subarray(prefix.length).toString(), revision: Number(kv.mod_revision), createRevision: Number(kv.create_revision),
    lease: kv.lease && kv.lease !== '0' ? BigInt(kv.lease).toString(16) : '',
  };
}

/**
 * Every name under `prefix` (a linearizable read), sorted by name: what `fractos names --etcd` prints.
 * Errors: EAGAIN (etcd unreachable).
 */
export async function listNames(client: Etcd3, prefix: string): Promise<StoredName[]> {
  const p = namesPrefix(prefix);
  let res;
  try {
    res = await client.getAll().prefix(p).exec();
  } catch (err) {
    throw new FractosError('EAGAIN', `etcd: list ${prefix}/names/: ${(err as Error).message}`);
  }
  const out: StoredName[] = [];
  for (const kv of res.kvs) {
    const s = storedName(p, kv);
    if (s) out.push(s);
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

export interface EtcdNamesOptions {
  client: Etcd3;
  /** The Controller's membership lease (names vanish with it). */
  lease: Lease;
  id: number;
  epoch: number;
  prefix: string;
  /** The current epoch of member `id` (its member key), undefined when not known. */
  memberEpoch: (id: number) => number | undefined;
  timeoutMs?: number;
  log?: { warn(o: object, m: string): void };
}

/** The etcd name store of one Controller (module comment). */
export class EtcdNames implements ExternalNameStore {
  readonly timeoutMs: number;
  readonly #o: EtcdNamesOptions;
  readonly #prefix: Buffer;
  readonly #removes = new Map<string, { key: Buffer; value: string }>();
  #removeTimer: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(o: EtcdNamesOptions) {
    this.#o = o;
    this.timeoutMs = o.timeoutMs ?? DEFAULT_NAMES_TIMEOUT_MS;
    this.#prefix = namesPrefix(o.prefix);
  }

  #key(name: Buffer): Buffer {
    return Buffer.concat([this.#prefix, name]);
  }

  #opts(): { deadline: number } {
    return { deadline: Date.now() + this.timeoutMs };
  }

  async #call<T>(what: string, p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (err) {
      const e = err as Error;
      const code = /deadline/i.test(e.name + e.message) ? 'ETIMEDOUT' : 'EAGAIN';
      throw new FractosError(code, `etcd: ${what}: ${e.message}`);
    }
  }

  /** Whether `r`'s Controller has restarted since it published `r` (its objects are gone). */
  #stale(r: NameRecord): boolean {
    if (r.controller === this.#o.id) return r.epoch < this.#o.epoch;
    const cur = this.#o.memberEpoch(r.controller);
    return cur !== undefined && cur > r.epoch;
  }

  async put(name: Buffer, r: NameRecord): Promise<StoredName> {
    const c = this.#o.client;
    const key = this.#key(name);
    const value = encodeName(r);
    const done = (rev: string, created: string): StoredName => ({ ...r, name: name.toString(), revision: Number(rev), createRevision: Number(created), lease: '' });
    for (let attempt = 0; attempt < 3; attempt++) {
      const res = await this.#call(`put '${name}'`,
        c.if(key, 'Create', '==', 0).then(this.#o.lease.put(key).value(value)).else(c.get(key)).options(this.#opts()).commit());
      if (res.succeeded) return done(res.header.revision, res.header.revision);
      const kv = res.responses[0]?.response_range.kvs[0];
      if (!kv) continue; // deleted in between
      const had = decodeName(kv.value.toString());
      const own = had && had.controller === r.controller && had.epoch === r.epoch && had.proc === r.proc;
      if (!own && had && !this.#stale(had)) {
        throw new FractosError('EEXIST', `'${name}' is published by process ${had.proc} of controller ${had.controller} (epoch ${had.epoch}) at revision ${kv.mod_revision}; only its publisher can replace it`);
      }
      const swap = await this.#call(`put '${name}'`,
        c.if(key, 'Mod', '==', kv.mod_revision).then(this.#o.lease.put(key).value(value)).options(this.#opts()).commit());
      if (swap.succeeded) return done(swap.header.revision, kv.create_revision); // a put on an existing key keeps its create revision
    }
    throw new FractosError('EAGAIN', `put '${name}': the key kept changing under 3 attempts`);
  }

  async get(name: Buffer): Promise<StoredName> {
    const res = await this.#call(`get '${name}'`, this.#o.client.get(this.#key(name)).options(this.#opts()).exec());
    const kv = res.kvs[0];
    if (!kv) throw new FractosError('ENOENT', `no cap published as '${name}'`);
    const s = storedName(this.#prefix, kv);
    if (!s) throw new FractosError('EIO', `etcd: the value of ${this.#prefix.toString()}${name} is not a name record`);
    return s;
  }

  remove(name: Buffer, r: NameRecord): void {
    if (this.#closed) return;
    const key = this.#key(name);
    const id = key.toString('hex');
    this.#removes.delete(id);
    if (this.#removes.size >= MAX_PENDING_REMOVES) this.#removes.delete(this.#removes.keys().next().value!);
    this.#removes.set(id, { key, value: encodeName(r) });
    this.#flushRemoves();
  }

  #flushRemoves(): void {
    if (this.#removeTimer || this.#closed) return;
    const batch = [...this.#removes];
    const c = this.#o.client;
    void Promise.all(batch.map(async ([id, { key, value }]) => {
      try {
        await c.if(key, 'Value', '==', value).then(c.delete().key(key)).options(this.#opts()).commit();
        if (this.#removes.get(id)?.value === value) this.#removes.delete(id);
      } catch (err) {
        this.#o.log?.warn({ name: key.subarray(this.#prefix.length).toString() }, `etcd: removing a name failed (retried in 500 ms): ${(err as Error).message}`);
      }
    })).then(() => {
      if (!this.#removes.size || this.#closed) return;
      this.#removeTimer = setTimeout(() => {
        this.#removeTimer = null;
        this.#flushRemoves();
      }, 500);
      this.#removeTimer.unref();
    });
  }

  /** Removals still waiting for etcd. */
  get pendingRemoves(): number {
    return this.#removes.size;
  }

  /** Stop retrying (the lease's revoke removes what is left). */
  close(): void {
    this.#closed = true;
    if (this.#removeTimer) clearTimeout(this.#removeTimer);
    this.#removeTimer = null;
  }
}

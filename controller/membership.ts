/**
 * Where a Controller learns its peers: one interface (`PeerSource`), two implementations.
 *
 * - `StaticPeers`: the `--peer ID=tcp://HOST:PORT` list, all given at start, never failed.
 * - `EtcdMembership`: the Controller registers `PREFIX/members/ID` = `{"addr","epoch","listen"}`
 *   under a lease of `ttlMs` (default 2 s) that it keeps alive (etcd3 client; keepalive
 *   every ttl/3), reads the members and watches the prefix from the revision it read
 *   (nothing missed in between): a put is a peer to link to (`addPeer`), a delete (the
 *   member's lease expired: crash, partition, SIGSTOP; or it left) is a failed peer
 *   (`failPeer`: its objects are revoked for their holders and monitors fire
 *   'owner-failed', whether or not its TCP link is still up). Only ids listed under
 *   `PREFIX/allowed/ID` may register (written by `fractos cluster up`): a Controller that is
 *   not listed is refused (EPERM) and never becomes anyone's peer (the members' hosts refuse
 *   and log its links: not in the peer list; and every link proves the cluster secret).
 *
 * Fencing: a Controller whose lease is gone (etcd answers a keepalive with TTL 0, its own
 * member key is deleted, or no keepalive was answered for 2 TTLs) calls `onFenced` and must
 * stop serving with this epoch (the CLI exits 75; `fractos cluster start` starts it again,
 * with a new epoch). Until then the others have already failed it and refuse its links at
 * that epoch, so serving on meanwhile harms nobody but its own Processes' view. While etcd
 * is briefly unreachable nothing is failed: the leases are still valid, and an etcd
 * restart keeps them (the new leader extends every lease by its TTL).
 *
 * Algorithm: leases as failure detectors with self-fencing, as Chubby sessions (Burrows,
 * OSDI '06) and etcd's own lease/election recipes.
 */
import { Etcd3, type IOptions } from 'etcd3';
import { FractosError } from '../libfractos/errors.js';
import { DEFAULT_ETCD_PREFIX, type PeerSink, type PeerSource } from './peer-source.js';

export { DEFAULT_ETCD_PREFIX, StaticPeers, type PeerSink, type PeerSource } from './peer-source.js';

export const DEFAULT_LEASE_TTL_MS = 2000;

export interface EtcdMembershipOptions {
  endpoints: string[];
  id: number;
  epoch: number;
  /** This Controller's peer address, tcp://IP:PORT. */
  advertise: string;
  /** Where its Processes connect (`unix:PATH`, tcp://...), published in the member value for `fractos dashboard --etcd`. */
  listen?: string[];
  /** Lease TTL, ms (rounded up to whole seconds, etcd's unit; at least 2 s: etcd's minimum with its default election timeout). */
  ttlMs?: number;
  prefix?: string;
  log?: { info(o: object, m: string): void; warn(o: object, m: string): void };
  /** The lease may have expired (see the module comment): stop serving with this epoch. */
  onFenced: (why: string) => void;
}

/**
 * A cockatiel-shaped policy that runs the call once (no retries, no circuit breaker: the
 * default breaker would stop every call for 5 s after 3 failures, longer than a lease).
 * Async: etcd3 also runs a function that throws at once through it and expects a rejection.
 */
const ONCE = {
  execute: async <T>(fn: (ctx: { signal: AbortSignal; attempt: number }) => Promise<T>): Promise<T> => fn({ signal: new AbortController().signal, attempt: 0 }),
};
/** A constant 100 ms backoff for re-establishing a watch after etcd comes back. */
const WATCH_BACKOFF: { duration: number; next(): unknown } = { duration: 100, next: () => WATCH_BACKOFF };

/** The value of a member key. */
export interface Member {
  addr: string;
  epoch: number;
  /** Process addresses of that Controller (absent from older members). */
  listen?: string[];
}

/** Membership on etcd (module comment). */
export class EtcdMembership implements PeerSource {
  /** None: every member comes from etcd once registered. */
  readonly initial: ReadonlyMap<number, string> = new Map();
  readonly ttlMs: number;
  readonly prefix: string;
  #client: Etcd3;
  #lease: ReturnType<Etcd3['lease']> | null = null;
  #watcher: Awaited<ReturnType<ReturnType<ReturnType<Etcd3['watch']>['prefix']>['create']>> | null = null;
  #fenced = false;
  #closed = false;
  #members = new Map<number, Member>();

  constructor(readonly o: EtcdMembershipOptions) {
    if (!o.endpoints.length) throw new FractosError('EINVAL', '--etcd wants at least one URL');
    if (!/^tcp:\/\/[^:]+:\d+$/.test(o.advertise)) throw new FractosError('EINVAL', `--advertise wants tcp://IP:PORT, got '${o.advertise}'`);
    this.ttlMs = Math.max(2000, Math.ceil((o.ttlMs ?? DEFAULT_LEASE_TTL_MS) / 1000) * 1000);
    this.prefix = o.prefix ?? DEFAULT_ETCD_PREFIX;
    const opts: IOptions = {
      hosts: o.endpoints,
      dialTimeout: 1000,
      faultHandling: { host: () => ONCE as never, global: ONCE as never, watchBackoff: WATCH_BACKOFF as never },
    };
    this.#client = new Etcd3(opts);
  }

  /** Key of member `id`. */
  memberKey(id: number): string {
    return `${this.prefix}/members/${id}`;
  }

  /**
   * Register (refused with EPERM when `PREFIX/allowed/ID` is missing; EEXIST when a live
   * member holds this id), read the members, hand them to `sink`, then watch.
   * @throws FractosError EPERM, EEXIST, ETIMEDOUT (etcd unreachable).
   */
  async start(sink: PeerSink): Promise<void> {
    const o = this.o;
    const c = this.#client;
    const call = async <T>(what: string, p: Promise<T>): Promise<T> => {
      try {
        return await p;
      } catch (err) {
        throw new FractosError('ETIMEDOUT', `etcd ${o.endpoints.join(',')}: ${what}: ${(err as Error).message}`);
      }
    };
    if ((await call('read the allowed members', c.get(`${this.prefix}/allowed/${o.id}`).string())) === null) {
      throw new FractosError('EPERM', `controller ${o.id} is not a member of the cluster (no ${this.prefix}/allowed/${o.id} in etcd); refused`);
    }
    const lease = c.lease(this.ttlMs / 1000, { autoKeepAlive: true });
    this.#lease = lease;
    const value = JSON.stringify({ addr: o.advertise, epoch: o.epoch, ...(o.listen ? { listen: o.listen } : {}) } satisfies Member);
    // One live registration per id. A key of this id with an older epoch (this Controller's
    // previous life, its lease not expired yet) is taken over: the others see the new epoch
    // (its old objects stay revoked); a key with this or a newer epoch is a live duplicate.
    const key = this.memberKey(o.id);
    const cur = (await call('read this member', c.get(key).exec())).kvs[0];
    if (cur) {
      const had = this.#parse(cur.value.toString());
      if (!had || had.epoch >= o.epoch) {
        await lease.revoke().catch(() => {});
        throw new FractosError('EEXIST', `controller ${o.id}: ${key} is held by a live member at epoch ${had?.epoch ?? '?'} (another controller with this id?)`);
      }
    }
    const txn = cur ? c.if(key, 'Mod', '==', String(cur.mod_revision)) : c.if(key, 'Create', '==', 0);
    const r = await call('register', txn.then(lease.put(key).value(value)).commit());
    if (!r.succeeded) {
      await lease.revoke().catch(() => {});
      throw new FractosError('EEXIST', `controller ${o.id}: ${key} changed while registering (another controller with this id?)`);
    }
    lease.on('lost', (err) => this.#fence(`lease lost: ${err.message}`));
    const res = await call('read the members', c.getAll().prefix(`${this.prefix}/members/`).exec());
    for (const kv of res.kvs) this.#put(sink, kv.key.toString(), kv.value.toString());
    const rev = BigInt(res.header.revision) + 1n;
    const w = await call('watch the members', c.watch().prefix(`${this.prefix}/members/`).startRevision(rev.toString()).create());
    this.#watcher = w;
    w.on('put', (kv) => this.#put(sink, kv.key.toString(), kv.value.toString()));
    w.on('delete', (kv) => this.#delete(sink, kv.key.toString()));
  }

  #parse(value: string): Member | null {
    try {
      const m = JSON.parse(value) as Member;
      return typeof m.addr === 'string' && Number.isInteger(m.epoch) ? { addr: m.addr, epoch: m.epoch } : null;
    } catch {
      return null;
    }
  }

  #idOf(key: string): number | null {
    const id = Number(key.slice(`${this.prefix}/members/`.length));
    return Number.isInteger(id) && id >= 1 && id <= 0xffffffff ? id : null;
  }

  #put(sink: PeerSink, key: string, value: string): void {
    const id = this.#idOf(key);
    if (id === null) return this.o.log?.warn({ key }, `etcd: ignoring member key ${key} (not a controller id)`);
    if (id === this.o.id) return;
    const m = this.#parse(value);
    if (!m) return this.o.log?.warn({ key }, `etcd: ignoring member ${id}: its value is not {"addr","epoch"}`);
    const old = this.#members.get(id);
    if (old && old.epoch === m.epoch && old.addr === m.addr) return;
    this.#members.set(id, m);
    this.o.log?.info({ peer: id, addr: m.addr, epoch: m.epoch }, `etcd: member ${id} at ${m.addr} epoch ${m.epoch}`);
    sink.addPeer(id, m.addr, m.epoch);
  }

  #delete(sink: PeerSink, key: string): void {
    const id = this.#idOf(key);
    if (id === null) return;
    if (id === this.o.id) return this.#fence('this controller\'s member key was deleted (its lease expired)');
    const m = this.#members.get(id);
    if (!m) return;
    this.#members.delete(id);
    this.o.log?.warn({ peer: id, epoch: m.epoch }, `etcd: member ${id} is gone (lease expired or left): failed`);
    sink.failPeer(id, m.epoch, 'its etcd lease expired');
  }

  #fence(why: string): void {
    if (this.#fenced || this.#closed) return;
    this.#fenced = true;
    this.o.onFenced(why);
  }

  /** The etcd client (the Controller's name store shares it, controller/names-etcd.ts). */
  get client(): Etcd3 {
    return this.#client;
  }

  /** The membership lease once `start` registered (names are put with it). */
  get lease(): ReturnType<Etcd3['lease']> | null {
    return this.#lease;
  }

  /** The epoch of member `id` as last seen in etcd (this Controller's own for its id); undefined when not a member. */
  memberEpoch(id: number): number | undefined {
    return id === this.o.id ? this.o.epoch : this.#members.get(id)?.epoch;
  }

  /** Ids of the members seen (not this one). */
  members(): number[] {
    return [...this.#members.keys()];
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#watcher?.cancel().catch(() => {});
    // a clean leave: the key goes now, not at the TTL
    if (this.#lease && !this.#fenced) await this.#lease.revoke().catch(() => {});
    this.#client.close();
  }
}

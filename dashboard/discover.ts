/**
 * The dashboard's Controllers from etcd (`fractos dashboard --etcd URL`): reads
 * `PREFIX/members/` and watches it from the read revision, and hands every member's
 * Process address (`listen`, the first `unix:` one: INTROSPECT needs a unix socket of the
 * Controller's uid) to the Collector, so that a node started later appears without
 * restarting the dashboard. A member that leaves stays watched (it shows down: that is
 * what the page is for); it is polled again when it comes back.
 */
import { Etcd3 } from 'etcd3';
import { DEFAULT_ETCD_PREFIX } from '../controller/peer-source.js';
import { FractosError } from '../libfractos/errors.js';
import type { Collector } from './collector.js';

export interface DiscoveryOptions {
  endpoints: string[];
  prefix?: string;
  log?: { warn(o: object, m: string): void };
}

/** Feeds `collector` from etcd until `close` (module comment). */
export class EtcdDiscovery {
  readonly #client: Etcd3;
  readonly #prefix: string;
  #watcher: { cancel(): Promise<void> } | null = null;

  constructor(readonly collector: Collector, readonly o: DiscoveryOptions) {
    if (!o.endpoints.length) throw new FractosError('EINVAL', '--etcd wants at least one URL');
    this.#client = new Etcd3({ hosts: o.endpoints, dialTimeout: 2000 });
    this.#prefix = `${o.prefix ?? DEFAULT_ETCD_PREFIX}/members/`;
  }

  /** Read the members and start watching. Errors: EAGAIN (etcd unreachable). */
  async start(): Promise<void> {
    let res;
    try {
      res = await this.#client.getAll().prefix(this.#prefix).exec();
      for (const kv of res.kvs) this.#member(kv.key.toString(), kv.value.toString());
      const w = await this.#client.watch().prefix(this.#prefix).startRevision(String(BigInt(res.header.revision) + 1n)).create();
      w.on('put', (kv) => this.#member(kv.key.toString(), kv.value.toString()));
      this.#watcher = w;
    } catch (err) {
      throw new FractosError('EAGAIN', `etcd ${this.o.endpoints.join(',')}: members: ${(err as Error).message}`);
    }
  }

  #member(key: string, value: string): void {
    let listen: unknown;
    try {
      listen = (JSON.parse(value) as { listen?: unknown }).listen;
    } catch {
      listen = undefined;
    }
    const unix = Array.isArray(listen) ? listen.find((a): a is string => typeof a === 'string' && a.startsWith('unix:')) : undefined;
    if (!unix) return this.o.log?.warn({ key }, `dashboard: member ${key} publishes no unix: Process address; not watched`);
    try {
      this.collector.watch(unix);
    } catch (err) {
      this.o.log?.warn({ key }, `dashboard: ${(err as Error).message}`);
    }
  }

  async close(): Promise<void> {
    await this.#watcher?.cancel().catch(() => {});
    this.#client.close();
  }
}

/**
 * Client side of the resource manager (schema.ts, docs/rm.md): a session, registering an
 * instance (and keeping it registered across RM restarts), acquiring and releasing grants.
 * Imports only libfractos and the schema: services and apps import this, never the service.
 */
import { FractosError } from '../libfractos/errors.js';
import type { MonitorEvent, Process } from '../libfractos/process.js';
import {
  Acquire, AcquireReply, Affinity, Close, MAX_REQUESTS, Open, OpenReply, R_SLOTS, Register, RegisterReply, Release, Unregister, Update,
} from './schema.js';

/** What an instance registers. */
export interface InstanceSpec {
  /** `gpu`, `fs`, `blockdev`, ...: [a-z][a-z0-9-]{0,15}. */
  kind: string;
  /** Unique among live instances: [A-Za-z0-9._-]{1,64} (e.g. the bootstrap prefix). */
  name: string;
  /** Node (default: the registrant's Controller id). */
  node?: number;
  /** Capacity in the kind's units (default 1); the policy compares load / capacity. */
  capacity?: number;
  load?: number;
  /** Request name -> cid (at most MAX_REQUESTS; names [a-z][a-z0-9_]{0,31}). */
  requests: Record<string, number>;
}

/** How an app asks (default: least loaded anywhere). */
export interface AcquireOptions {
  /** Node to prefer or require (Controller id). */
  node?: number;
  /** 'prefer' (default when `node` is given) or 'require' (ENOENT when none there). */
  affinity?: 'prefer' | 'require';
  /** Retry ENOENT (no live instance yet) every 50 ms for this long (ms, default 0). */
  waitMs?: number;
  timeoutMs?: number;
}

const T = 10_000;

/** A registered instance, held by its registrant. */
export class Registration {
  #gone = false;
  constructor(
    readonly client: RmClient,
    readonly id: number,
    readonly updateCid: number,
    readonly unregisterCid: number,
  ) {}

  /** Report the current load (one-way: no reply, nothing to wait for). `capacity` 0 keeps it. Errors: EREVOKED (unregistered). */
  async update(load: number, capacity = 0): Promise<void> {
    await this.client.p.invoke(this.updateCid, Update, { load, capacity });
  }

  /** End the registration: every grant of it is revoked. */
  async unregister(): Promise<void> {
    if (this.#gone) return;
    this.#gone = true;
    try {
      await this.client.p.rpc(this.unregisterCid, Unregister, {}, {}, { timeoutMs: T });
    } finally {
      this.client.p.capDrop(this.updateCid, this.unregisterCid).catch(() => {});
    }
  }
}

/** A grant: children of one instance's Requests (cids in the app's space). */
export class Grant {
  constructor(
    readonly client: RmClient,
    readonly id: number,
    readonly name: string,
    readonly node: number,
    readonly load: number,
    readonly capacity: number,
    readonly requests: Readonly<Record<string, number>>,
  ) {}

  /** The cid of the Request named `name`. Errors: ENOENT. */
  request(name: string): number {
    const c = this.requests[name];
    if (!c) throw new FractosError('ENOENT', `instance '${this.name}' registered no Request '${name}'`);
    return c;
  }

  /** `cb` fires once when the grant is revoked or the instance fails. Errors: EREVOKED when it already is. */
  async onLost(cb: (ev: MonitorEvent) => void): Promise<void> {
    const first = Object.values(this.requests)[0];
    if (first) await this.client.p.monitorReceive(first, cb);
  }

  /** Give it back (the RM revokes it) and drop our cids; a grant already gone is not an error. */
  async release(): Promise<void> {
    try {
      await this.client.p.rpc(this.client.releaseCid, Release, { grant: this.id }, {}, { timeoutMs: T });
    } catch (err) {
      if (!(err instanceof FractosError) || (err.code !== 'ENOENT' && err.code !== 'EREVOKED' && err.code !== 'EDISCONNECTED')) throw err;
    } finally {
      this.drop();
    }
  }

  /** Drop our cids without telling the RM (after the grant was revoked). */
  drop(): void {
    const cids = Object.values(this.requests);
    if (cids.length) this.client.p.capDrop(...cids).catch(() => {});
  }
}

/** A session with the RM published as `${name}.open`. */
export class RmClient {
  #closed = false;
  private constructor(
    readonly p: Process,
    readonly name: string,
    readonly session: number,
    readonly registerCid: number,
    readonly acquireCid: number,
    readonly releaseCid: number,
    readonly closeCid: number,
  ) {}

  /** Open a session with the RM `name` (waiting up to `timeoutMs` for it). Errors: ENOENT, ENOSPC (sessions full), ETIMEDOUT. */
  static async connect(p: Process, name = 'rm', timeoutMs = T): Promise<RmClient> {
    return RmClient.#open(p, name, await p.kvWait(`${name}.open`, timeoutMs), timeoutMs);
  }

  /** A session with the RM `name` when it is published now, else null. Errors: those of `connect` but ENOENT. */
  static async ifPublished(p: Process, name = 'rm', timeoutMs = T): Promise<RmClient | null> {
    let open: number;
    try {
      open = await p.kvGet(`${name}.open`);
    } catch (err) {
      if ((err as FractosError).code === 'ENOENT') return null;
      throw err;
    }
    return RmClient.#open(p, name, open, timeoutMs);
  }

  static async #open(p: Process, name: string, open: number, timeoutMs: number): Promise<RmClient> {
    try {
      const r = OpenReply.decode(await p.rpc(open, Open, {}, {}, { timeoutMs }));
      return new RmClient(p, name, r.imms.session, r.caps.register, r.caps.acquire, r.caps.release, r.caps.close);
    } finally {
      p.capDrop(open).catch(() => {});
    }
  }

  /** Register an instance. Errors: EINVAL, ETYPE, EEXIST, ENOSPC, EREVOKED (see schema.ts Register). */
  async register(spec: InstanceSpec): Promise<Registration> {
    const entries = Object.entries(spec.requests);
    if (entries.length < 1 || entries.length > MAX_REQUESTS) throw new FractosError('EINVAL', `1..${MAX_REQUESTS} Requests, got ${entries.length}`);
    const caps: Record<string, number> = {};
    entries.forEach(([, cid], i) => (caps[R_SLOTS[i]!] = cid));
    const inv = await this.p.rpc(this.registerCid, Register, {
      kind: spec.kind, name: spec.name, node: spec.node ?? this.p.controllerId, capacity: spec.capacity ?? 1, load: spec.load ?? 0,
      names: entries.map(([n]) => n).join(','),
    }, caps as Parameters<typeof Register.caps>[0], { timeoutMs: T });
    const r = RegisterReply.decode(inv);
    return new Registration(this, r.imms.id, r.caps.update, r.caps.unregister);
  }

  /** A live instance of `kind`, chosen by policy. Errors: ENOENT (none, after `waitMs`), EINVAL, ENOSPC, EREVOKED (session closed). */
  async acquire(kind: string, o: AcquireOptions = {}): Promise<Grant> {
    const deadline = Date.now() + (o.waitMs ?? 0);
    const affinity = o.node === undefined ? Affinity.ANY : o.affinity === 'require' ? Affinity.REQUIRE : Affinity.PREFER;
    for (;;) {
      try {
        const inv = await this.p.rpc(this.acquireCid, Acquire, { kind, node: o.node ?? 0, affinity }, {}, { timeoutMs: o.timeoutMs ?? T });
        const { imms, caps } = AcquireReply.decode(inv);
        const requests: Record<string, number> = {};
        imms.names.split(',').forEach((n, i) => {
          const c = (caps as Record<string, number>)[R_SLOTS[i]!];
          if (c) requests[n] = c;
        });
        return new Grant(this, imms.grant, imms.name, imms.node, imms.load, imms.capacity, requests);
      } catch (err) {
        if ((err as FractosError).code !== 'ENOENT' || Date.now() >= deadline) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** `cb` fires once when the RM goes away (its session Requests revoked). */
  async onLost(cb: (ev: MonitorEvent) => void): Promise<void> {
    await this.p.monitorReceive(this.acquireCid, cb);
  }

  /** End the session (its registrations and grants end) and drop its Requests. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.p.rpc(this.closeCid, Close, {}, {}, { timeoutMs: T }).catch(() => {});
    } finally {
      await this.p.capDrop(this.registerCid, this.acquireCid, this.releaseCid, this.closeCid).catch(() => {});
    }
  }
}

/** A registration kept alive by `keepRegistered`. */
export interface KeptRegistration {
  /** Resolves once first registered (never rejects; see `onError`). */
  readonly registered: Promise<void>;
  /** Unregister and close the session. */
  close(): Promise<void>;
}

/**
 * Register `spec` with the RM `rmName` and keep it registered: wait for the RM to be
 * published, register, send `load()` every `loadEveryMs` when it changed, and register again
 * when the RM restarts (its session is revoked). With `once`, give up quietly when the RM is
 * not published right now (services that register only when an RM is there).
 */
export function keepRegistered(
  p: Process,
  rmName: string,
  spec: InstanceSpec,
  o: { once?: boolean; load?: () => number; loadEveryMs?: number; onError?: (e: Error) => void; onRegistered?: (r: Registration) => void } = {},
): KeptRegistration {
  let stopped = false;
  let client: RmClient | null = null;
  let reg: Registration | null = null;
  let timer: NodeJS.Timeout | null = null;
  let first = true;
  let resolveFirst!: () => void;
  const registered = new Promise<void>((r) => (resolveFirst = r));
  const loop = async (): Promise<void> => {
    for (let attempt = 0; !stopped && !p.closed; attempt++) {
      try {
        client = first && o.once ? await RmClient.ifPublished(p, rmName) : await RmClient.connect(p, rmName, 60_000);
        if (!client) return;
        reg = await client.register(spec);
        first = false;
        o.onRegistered?.(reg);
        resolveFirst();
        let last = spec.load ?? 0;
        if (o.load) {
          timer = setInterval(() => {
            const l = o.load!();
            if (l === last || !reg) return;
            last = l;
            reg.update(l).catch(() => {});
          }, o.loadEveryMs ?? 500);
          timer.unref();
        }
        const c = client;
        await new Promise<void>((resolve) => {
          c.onLost(() => resolve()).catch(() => resolve());
        });
        if (timer) clearInterval(timer);
        timer = null;
        reg = null;
        c.p.capDrop(c.registerCid, c.acquireCid, c.releaseCid, c.closeCid).catch(() => {});
        client = null;
      } catch (err) {
        if (stopped || p.closed) return;
        o.onError?.(err as Error);
        if (first && o.once) return;
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * (attempt + 1))));
      }
    }
  };
  const running = loop().finally(() => resolveFirst());
  return {
    registered,
    async close(): Promise<void> {
      stopped = true;
      if (timer) clearInterval(timer);
      await reg?.unregister().catch(() => {});
      await client?.close().catch(() => {});
      void running;
    },
  };
}

/**
 * The resource manager service (docs/rm.md; paper §5: applications get their devices "via a
 * resource management service"). Adaptors register instances (kind, node, capacity, load,
 * their Requests); applications acquire "a gpu" or "the fs" and receive revocation-tree
 * children of a live instance's Requests, chosen by policy; when the instance fails (a
 * monitor on its Requests fires `owner-failed` or `revoked`) or unregisters, the RM revokes
 * every grant of it, so the holders' caps go EREVOKED and they acquire again.
 *
 * Every caller is treated as hostile: all state is per session and bounded (RmLimits), a
 * registration can be changed or ended only through the Requests handed to its registrant,
 * a name is held by one live registration, and the RM never hands out anything but
 * children of the Requests it was given.
 */
import { FractosError, type ErrorCode } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import type { Invocation } from '../libfractos/schema.js';
import {
  Acquire, AcquireReply, Affinity, Close, KIND_BYTES, MAX_REQUESTS, NAME_BYTES, OkReply, Open, OpenReply,
  R_SLOTS, Register, RegisterReply, Release, Unregister, Update,
} from './schema.js';

/** Bounds on what callers can make the RM hold. */
export interface RmLimits {
  /** Open sessions, all callers (default 256). */
  maxSessions: number;
  /** Live registrations of one session (default 8). */
  maxRegistrationsPerSession: number;
  /** Live registrations, all sessions (default 256). */
  maxRegistrations: number;
  /** Live grants of one session (default 64). */
  maxGrantsPerSession: number;
  /** Live grants, all sessions (default 4096; each holds up to MAX_REQUESTS caps). */
  maxGrants: number;
  /** Bytes of kind + name + names of one session's registrations (default 2048). */
  maxMetaBytesPerSession: number;
}

export const DEFAULT_RM_LIMITS: Readonly<RmLimits> = {
  maxSessions: 256,
  maxRegistrationsPerSession: 8,
  maxRegistrations: 256,
  maxGrantsPerSession: 64,
  maxGrants: 4096,
  maxMetaBytesPerSession: 2048,
};

export interface RmServiceOptions {
  /** Bootstrap prefix: publishes `${name}.open`. Default 'rm'. */
  name?: string;
  limits?: Partial<RmLimits>;
  log?: { info(o: object, m: string): void; warn(o: object, m: string): void };
}

interface Session {
  id: number;
  /** Our cids of the session's Requests: register, acquire, release, close. */
  requests: number[];
  live: number;
  regs: Set<number>;
  /** Registrations of this session being set up. */
  pending: number;
  grants: Set<number>;
  metaBytes: number;
  closed: boolean;
}

interface Registration {
  id: number;
  session: number;
  kind: string;
  name: string;
  node: number;
  capacity: number;
  load: number;
  names: string[];
  metaBytes: number;
  /** Our cids of the registrant's Requests (r0..). */
  caps: number[];
  /** Our cids of update and unregister. */
  control: number[];
  grants: Set<number>;
  dead: boolean;
}

interface Grant {
  id: number;
  session: number;
  reg: number;
  /** Our cids of the revocation-tree children handed out. */
  caps: number[];
}

/** A registration as `snapshot()` shows it. */
export interface RmInstance {
  id: number;
  kind: string;
  name: string;
  node: number;
  capacity: number;
  load: number;
  names: string[];
  grants: number;
}

const KIND_RE = /^[a-z][a-z0-9-]{0,15}$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const REQ_NAME_RE = /^[a-z][a-z0-9_]{0,31}$/;

function asFractos(err: unknown): FractosError {
  return err instanceof FractosError ? err : new FractosError('EPROTO', String(err));
}

const fail = (code: ErrorCode, m: string): never => {
  throw new FractosError(code, m);
};

export class RmService {
  readonly #p: Process;
  readonly name: string;
  readonly limits: RmLimits;
  readonly #log: RmServiceOptions['log'];
  readonly #sessions = new Map<number, Session>();
  readonly #regs = new Map<number, Registration>();
  readonly #byName = new Map<string, number>();
  readonly #grants = new Map<number, Grant>();
  /** Registrations being set up (counted against the bounds before their awaits). */
  #pendingRegs = 0;
  #nextSession = 1;
  #nextReg = 1;
  #nextGrant = 1;
  #openCid = 0;
  #closed = false;

  private constructor(p: Process, o: RmServiceOptions) {
    this.#p = p;
    this.name = o.name ?? 'rm';
    this.limits = { ...DEFAULT_RM_LIMITS, ...o.limits };
    this.#log = o.log;
  }

  /** Serve the RM's Requests on `p` and publish `${name}.open`. Errors: EEXIST (name taken), EINVAL. */
  static async start(p: Process, o: RmServiceOptions = {}): Promise<RmService> {
    const s = new RmService(p, o);
    p.serve(Open, ({ caps }) => s.#guard(caps.onError, () => s.#open(caps.onSuccess)));
    p.serve(Register, ({ imms, caps }, inv) => s.#guard(caps.onError, () => s.#register(imms, caps, inv, caps.onSuccess)));
    p.serve(Update, ({ imms, caps }) => s.#guard(caps.onError, async () => {
      const r = s.#regs.get(imms.reg) ?? fail('ENOENT', `registration ${imms.reg} is gone`);
      r.load = imms.load;
      if (imms.capacity) r.capacity = imms.capacity;
      await s.#ok(caps.onSuccess);
    }));
    p.serve(Unregister, ({ imms, caps }) => s.#guard(caps.onError, async () => {
      const r = s.#regs.get(imms.reg) ?? fail('ENOENT', `registration ${imms.reg} is gone`);
      s.#removeRegistration(r, 'unregistered');
      await s.#ok(caps.onSuccess);
    }));
    p.serve(Acquire, ({ imms, caps }) => s.#guard(caps.onError, () => s.#acquire(imms, caps.onSuccess)));
    p.serve(Release, ({ imms, caps }) => s.#guard(caps.onError, async () => {
      const sess = s.#session(imms.session);
      const g = sess.grants.has(imms.grant) ? s.#grants.get(imms.grant) : undefined;
      if (!g) fail('ENOENT', `grant ${imms.grant} is not a live grant of this session`);
      s.#revokeGrant(g!);
      await s.#ok(caps.onSuccess);
    }));
    p.serve(Close, ({ imms, caps }) => s.#guard(caps.onError, async () => {
      s.#endSession(s.#session(imms.session), 'closed');
      await s.#ok(caps.onSuccess);
    }));
    s.#openCid = await p.createRequest(Open);
    await p.kvPut(`${s.name}.open`, s.#openCid, { republish: true });
    return s;
  }

  /** Live registrations and counts (for logs, the CLI and tests). */
  snapshot(): { sessions: number; grants: number; instances: RmInstance[] } {
    const instances = [...this.#regs.values()].map((r) => ({ id: r.id, kind: r.kind, name: r.name, node: r.node, capacity: r.capacity, load: r.load, names: r.names, grants: r.grants.size }));
    return { sessions: this.#sessions.size, grants: this.#grants.size, instances };
  }

  /** Revoke every grant and session, unpublish. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of [...this.#sessions.values()]) this.#endSession(s, 'rm closing');
    if (this.#openCid) await this.#p.capRevoke(this.#openCid).catch(() => {});
  }

  async #guard(onError: number, f: () => Promise<void>): Promise<void> {
    try {
      if (this.#closed) fail('EREVOKED', 'resource manager closing');
      await f();
    } catch (err) {
      const e = asFractos(err);
      await this.#p.replyError(onError, e.code, e.message);
    }
  }

  async #ok(onSuccess: number): Promise<void> {
    if (onSuccess) await this.#p.invoke(onSuccess, OkReply).catch(() => {});
  }

  #session(id: number): Session {
    const s = this.#sessions.get(id);
    if (!s || s.closed) fail('EREVOKED', `session ${id} is closed`);
    return s!;
  }

  // ---------------------------------------------------------------------------------
  // Sessions

  async #open(onSuccess: number): Promise<void> {
    if (this.#sessions.size >= this.limits.maxSessions) fail('ENOSPC', `${this.limits.maxSessions} sessions open`);
    const id = this.#nextSession++;
    const s: Session = { id, requests: [], live: 0, regs: new Set(), pending: 0, grants: new Set(), metaBytes: 0, closed: false };
    this.#sessions.set(id, s);
    try {
      const a = { session: id };
      const [register, acquire, release, close] = await Promise.all([
        this.#p.createRequest(Register, a), this.#p.createRequest(Acquire, a), this.#p.createRequest(Release, a), this.#p.createRequest(Close, a),
      ]);
      s.requests = [register, acquire, release, close];
      // The session ends when the client holds none of its Requests (dropped, or the client failed).
      await Promise.all(s.requests.map((c) => {
        s.live++;
        return this.#p.monitorDelegate(c, (ev) => {
          if (ev === 'delegates-gone' && --s.live === 0) this.#endSession(s, 'client gone');
        });
      }));
      await this.#p.invoke(onSuccess, OpenReply, { session: id }, { register, acquire, release, close });
    } catch (err) {
      this.#endSession(s, 'open failed');
      throw err;
    }
  }

  #endSession(s: Session, why: string): void {
    if (s.closed) return;
    s.closed = true;
    this.#sessions.delete(s.id);
    for (const r of [...s.regs]) {
      const reg = this.#regs.get(r);
      if (reg) this.#removeRegistration(reg, `session ${why}`);
    }
    for (const g of [...s.grants]) {
      const grant = this.#grants.get(g);
      if (grant) this.#revokeGrant(grant);
    }
    this.#dispose(s.requests);
    this.#log?.info({ session: s.id, why }, 'rm: session ended');
  }

  /** Revoke and drop our cids (not awaited: nothing waits on the cleanup). */
  #dispose(cids: number[]): void {
    const live = cids.filter(Boolean);
    if (!live.length) return;
    Promise.all(live.map((c) => this.#p.capRevoke(c).catch(() => {})))
      .then(() => this.#p.capDrop(...live))
      .catch(() => {});
  }

  // ---------------------------------------------------------------------------------
  // Registrations

  async #register(
    imms: { session: number; kind: string; name: string; node: number; capacity: number; load: number; names: string },
    caps: Record<string, number>,
    inv: Invocation,
    onSuccess: number,
  ): Promise<void> {
    const s = this.#session(imms.session);
    if (!KIND_RE.test(imms.kind)) fail('EINVAL', `kind '${imms.kind}': 1..${KIND_BYTES} of [a-z0-9-], starting with a letter`);
    if (!NAME_RE.test(imms.name)) fail('EINVAL', `name '${imms.name}': 1..${NAME_BYTES} of [A-Za-z0-9._-]`);
    if (imms.capacity < 1) fail('EINVAL', 'capacity must be at least 1');
    const names = imms.names.split(',');
    if (names.length > MAX_REQUESTS || names.some((n) => !REQ_NAME_RE.test(n)) || new Set(names).size !== names.length) {
      fail('EINVAL', `names '${imms.names}': 1..${MAX_REQUESTS} distinct comma-separated [a-z0-9_] names`);
    }
    const given: number[] = [];
    R_SLOTS.forEach((slot, i) => {
      const c = caps[slot] ?? 0;
      if ((i < names.length) !== (c !== 0)) fail('EINVAL', `${names.length} names but slot ${slot} is ${c ? 'set' : 'unset'}`);
      if (c) given.push(c);
    });
    const metaBytes = Buffer.byteLength(imms.kind) + Buffer.byteLength(imms.name) + Buffer.byteLength(imms.names);
    if (s.regs.size + s.pending >= this.limits.maxRegistrationsPerSession) fail('ENOSPC', `session holds ${this.limits.maxRegistrationsPerSession} registrations`);
    if (this.#regs.size + this.#pendingRegs >= this.limits.maxRegistrations) fail('ENOSPC', `the RM holds ${this.limits.maxRegistrations} registrations`);
    if (s.metaBytes + metaBytes > this.limits.maxMetaBytesPerSession) fail('ENOSPC', `session metadata over ${this.limits.maxMetaBytesPerSession} bytes`);
    if (this.#byName.has(imms.name)) fail('EEXIST', `'${imms.name}' is registered by a live instance`);
    // Reserve (synchronously: concurrent registrations see it) before the awaits.
    const id = this.#nextReg++;
    this.#byName.set(imms.name, id);
    s.metaBytes += metaBytes;
    this.#pendingRegs++;
    s.pending++;
    const r: Registration = {
      id, session: s.id, kind: imms.kind, name: imms.name, node: imms.node, capacity: imms.capacity, load: imms.load, names, metaBytes,
      caps: given, control: [], grants: new Set(), dead: false,
    };
    let kept = false;
    try {
      // Each must be a live Request: memory_stat says ETYPE for a Request, EREVOKED for a dead object.
      await Promise.all(given.map(async (c, i) => {
        let isMemory = false;
        try {
          await this.#p.memoryStat(c);
          isMemory = true;
        } catch (err) {
          if ((err as FractosError).code !== 'ETYPE') throw err;
        }
        if (isMemory) fail('ETYPE', `${names[i]} (${R_SLOTS[i]}) is a Memory cap, not a Request`);
      }));
      if (s.closed) fail('EREVOKED', `session ${s.id} is closed`);
      for (const c of given) inv.retain(c);
      kept = true;
      this.#pendingRegs--;
      s.pending--;
      this.#regs.set(id, r);
      s.regs.add(id);
      const [update, unregister] = await Promise.all([this.#p.createRequest(Update, { reg: id }), this.#p.createRequest(Unregister, { reg: id })]);
      r.control = [update, unregister];
      // A failed instance: any of its Requests revoked or its owner gone.
      await Promise.all(given.map((c) => this.#p.monitorReceive(c, (ev) => this.#removeRegistration(r, ev))));
      if (r.dead) fail('EREVOKED', `instance '${r.name}' failed while registering`);
      await this.#p.invoke(onSuccess, RegisterReply, { id }, { update, unregister });
    } catch (err) {
      if (kept) this.#removeRegistration(r, 'register failed');
      else {
        this.#byName.delete(imms.name);
        s.metaBytes -= metaBytes;
      }
      throw err;
    } finally {
      if (!kept) {
        this.#pendingRegs--;
        s.pending--;
      }
    }
    this.#log?.info({ id, kind: r.kind, name: r.name, node: r.node, capacity: r.capacity, session: s.id }, 'rm: registered');
  }

  #removeRegistration(r: Registration, why: string): void {
    if (r.dead) return;
    r.dead = true;
    if (this.#regs.get(r.id) === r) this.#regs.delete(r.id);
    if (this.#byName.get(r.name) === r.id) this.#byName.delete(r.name);
    const s = this.#sessions.get(r.session);
    if (s) {
      s.regs.delete(r.id);
      s.metaBytes -= r.metaBytes;
    }
    const n = r.grants.size;
    for (const g of [...r.grants]) {
      const grant = this.#grants.get(g);
      if (grant) this.#revokeGrant(grant);
    }
    this.#dispose(r.control);
    // The registrant's Requests are not ours to revoke: drop our cids only.
    if (r.caps.length) this.#p.capDrop(...r.caps).catch(() => {});
    this.#log?.info({ id: r.id, kind: r.kind, name: r.name, why, grantsRevoked: n }, 'rm: instance removed');
  }

  // ---------------------------------------------------------------------------------
  // Grants

  /** Least loaded first: load / capacity, then fewer live grants, then registration order. */
  #pick(kind: string, node: number, affinity: number): Registration | undefined {
    let all = [...this.#regs.values()].filter((r) => r.kind === kind && !r.dead);
    if (affinity !== Affinity.ANY) {
      const here = all.filter((r) => r.node === node);
      if (here.length || affinity === Affinity.REQUIRE) all = here;
    }
    let best: Registration | undefined;
    for (const r of all) {
      if (!best) {
        best = r;
        continue;
      }
      const a = r.load / r.capacity;
      const b = best.load / best.capacity;
      if (a < b || (a === b && (r.grants.size < best.grants.size || (r.grants.size === best.grants.size && r.id < best.id)))) best = r;
    }
    return best;
  }

  async #acquire(imms: { session: number; kind: string; node: number; affinity: number }, onSuccess: number): Promise<void> {
    const s = this.#session(imms.session);
    if (!KIND_RE.test(imms.kind)) fail('EINVAL', `kind '${imms.kind}': 1..${KIND_BYTES} of [a-z0-9-]`);
    if (imms.affinity > Affinity.REQUIRE) fail('EINVAL', `affinity ${imms.affinity} (0 any, 1 prefer, 2 require)`);
    if (s.grants.size >= this.limits.maxGrantsPerSession) fail('ENOSPC', `session holds ${this.limits.maxGrantsPerSession} grants`);
    if (this.#grants.size >= this.limits.maxGrants) fail('ENOSPC', `the RM holds ${this.limits.maxGrants} grants`);
    // Reserve the grant before the awaits (bounds hold under concurrent acquires).
    const g: Grant = { id: this.#nextGrant++, session: s.id, reg: 0, caps: [] };
    this.#grants.set(g.id, g);
    s.grants.add(g.id);
    try {
      for (;;) {
        const r = this.#pick(imms.kind, imms.node, imms.affinity);
        if (!r) {
          const where = imms.affinity === Affinity.REQUIRE ? ` on node ${imms.node}` : '';
          fail('ENOENT', `no live '${imms.kind}' instance${where}`);
        }
        const made = await Promise.allSettled(r!.caps.map((c) => this.#p.capCreateRevtree(c)));
        const ok = made.flatMap((m) => (m.status === 'fulfilled' ? [m.value] : []));
        const bad = made.find((m) => m.status === 'rejected') as PromiseRejectedResult | undefined;
        if (bad || r!.dead) {
          this.#dispose(ok);
          const code = bad ? (bad.reason as FractosError).code : 'EREVOKED';
          if (code !== 'EREVOKED' && code !== 'EBADCAP') throw bad!.reason;
          this.#removeRegistration(r!, 'found dead on acquire');
          continue;
        }
        if (!this.#grants.has(g.id)) {
          // The session ended meanwhile.
          this.#dispose(ok);
          fail('EREVOKED', `session ${s.id} is closed`);
        }
        g.reg = r!.id;
        g.caps = ok;
        r!.grants.add(g.id);
        const caps: Record<string, number> = {};
        ok.forEach((c, i) => (caps[R_SLOTS[i]!] = c));
        await this.#p.invoke(onSuccess, AcquireReply, { grant: g.id, name: r!.name, node: r!.node, load: r!.load, capacity: r!.capacity, names: r!.names.join(',') }, caps);
        return;
      }
    } catch (err) {
      this.#revokeGrant(g);
      throw err;
    }
  }

  #revokeGrant(g: Grant): void {
    if (!this.#grants.delete(g.id)) return;
    this.#sessions.get(g.session)?.grants.delete(g.id);
    this.#regs.get(g.reg)?.grants.delete(g.id);
    this.#dispose(g.caps);
  }
}

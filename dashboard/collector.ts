/**
 * The dashboard's view of a cluster: a FractOS Process on each Controller it is given,
 * polling STATS (link counters) and INTROSPECT (Processes, object and cap counts, recent
 * invocations) every `intervalMs`, and turning them into one JSON snapshot: nodes and
 * their health, Controller links with rates, and the recent invocation graph (docs/dashboard.md).
 */
import { EventEmitter } from 'node:events';
import { LRUCache } from 'lru-cache';
import { connect, FractosError, type ControllerStats, type Introspection, type Process } from '../libfractos/index.js';

/** Options of `Collector`. */
export interface CollectorOptions {
  /** Controller addresses (`unix:PATH`; INTROSPECT needs a unix socket of the Controller's uid). */
  controllers: string[];
  /** Poll period (ms, 50..60000; default 500). */
  intervalMs?: number;
  /** Invocations counted in the graph: those of the last `windowMs` (ms, default 10000). */
  windowMs?: number;
  /** Process name the dashboard connects with (default 'dashboard'). */
  name?: string;
  /** Controllers come later as well (`watch`, e.g. from etcd: dashboard/discover.ts): `controllers` may be empty. */
  discovered?: boolean;
}

/** Controllers one Collector watches at most (each costs a channel and a poll). */
export const MAX_WATCHED = 1024;

/** One Process in a snapshot. */
export interface ProcessView {
  id: number;
  pid: number;
  name: string;
  objects: number;
  caps: number;
  /** Frames and bytes its channel carried per second in the last poll (both directions). */
  framesPerSec: number;
  bytesPerSec: number;
}

/** One Controller in a snapshot. */
export interface NodeView {
  /** The address the dashboard watches (null: a peer it only heard of from a watched Controller). */
  address: string | null;
  /** Controller id (0 until first reached). */
  id: number;
  epoch: number;
  /** Reachable: its last poll succeeded. */
  up: boolean;
  /** Why it is down (last error), or null. */
  error: string | null;
  /** Wall-clock time (ms) of its last good poll, 0 never. */
  lastSeen: number;
  objects: number;
  caps: number;
  proxies: number;
  names: number;
  processes: ProcessView[];
  procsTruncated: boolean;
  /** Peer Controllers it has a live link to. */
  peers: number[];
  /** Invocation records overwritten in its ring before the dashboard read them (since it started watching). */
  lostInvocations: number;
}

/** One Controller↔Controller link, seen from `from` (the lower id when both are watched). */
export interface LinkView {
  from: number;
  to: number;
  up: boolean;
  /** from → to and to → from, per second over the last poll. */
  framesOutPerSec: number;
  framesInPerSec: number;
  bytesOutPerSec: number;
  bytesInPerSec: number;
  /** Totals since the link came up. */
  framesOut: number;
  framesIn: number;
  bytesOut: number;
  bytesIn: number;
}

/** An end of an invocation edge: a Process (`process` > 0), a Request object whose owner is not known yet, or a peer Controller. */
export interface EdgeEnd {
  controller: number;
  process: number;
  /** Set when `process` is 0 and the end is an object (its id at `controller`). */
  object?: number;
}

/** Invocations from one end to another in the last `windowMs`. */
export interface EdgeView {
  from: EdgeEnd;
  to: EdgeEnd;
  count: number;
  /** Age of the newest one (ms). */
  lastAgeMs: number;
}

/** What `/api/snapshot` and each SSE event carry. */
export interface Snapshot {
  /** Wall-clock time (ms). */
  time: number;
  intervalMs: number;
  windowMs: number;
  nodes: NodeView[];
  links: LinkView[];
  edges: EdgeView[];
}

interface Rec {
  at: number;
  kind: 'process' | 'peer';
  invoker: number;
  targetController: number;
  targetObject: number;
  provider: number;
}

/** Records kept per Controller (bounded: the ring of one Controller holds 1024 by default). */
const MAX_RECORDS = 8192;

class Watched {
  proc: Process | null = null;
  connecting = false;
  view: NodeView;
  since = 0;
  epochSeen = 0;
  lost = 0;
  records: Rec[] = [];
  prevStats: { at: number; s: ControllerStats } | null = null;
  linkRates = new Map<string, { f: [number, number]; b: [number, number] }>();
  stats: ControllerStats | null = null;
  constructor(readonly address: string) {
    this.view = { address, id: 0, epoch: 0, up: false, error: 'not connected yet', lastSeen: 0, objects: 0, caps: 0, proxies: 0, names: 0, processes: [], procsTruncated: false, peers: [], lostInvocations: 0 };
  }
}

/**
 * Polls the Controllers and emits 'snapshot' (a Snapshot) after every round. A Controller
 * that cannot be reached or whose channel closes is marked down and redialled every poll.
 */
export class Collector extends EventEmitter {
  readonly intervalMs: number;
  readonly windowMs: number;
  readonly #name: string;
  readonly #watched: Watched[];
  #timer: NodeJS.Timeout | null = null;
  #round: Promise<unknown> | null = null;
  #closed = false;
  #last: Snapshot;
  /** Owner Process of a Request object, learned from provider-side records: "ctl:obj" -> process id. */
  readonly #owners = new LRUCache<string, number>({ max: 65536 });

  /** Errors: EINVAL (no controllers, bad interval or window). */
  constructor(opts: CollectorOptions) {
    super();
    if (!opts.controllers.length && !opts.discovered) throw new FractosError('EINVAL', 'the dashboard needs at least one --controller (or --etcd)');
    this.intervalMs = opts.intervalMs ?? 500;
    this.windowMs = opts.windowMs ?? 10_000;
    if (!Number.isInteger(this.intervalMs) || this.intervalMs < 50 || this.intervalMs > 60_000) throw new FractosError('EINVAL', `interval must be 50..60000 ms, got ${opts.intervalMs}`);
    if (!Number.isInteger(this.windowMs) || this.windowMs < 100 || this.windowMs > 3_600_000) throw new FractosError('EINVAL', `window must be 100..3600000 ms, got ${opts.windowMs}`);
    this.#name = opts.name ?? 'dashboard';
    this.#watched = [...new Set(opts.controllers)].map((a) => new Watched(a));
    this.#last = { time: Date.now(), intervalMs: this.intervalMs, windowMs: this.windowMs, nodes: [], links: [], edges: [] };
  }

  /**
   * Watch one more Controller from the next poll on (a node found later, dashboard/discover.ts).
   * Returns false when it is watched already. Errors: ENOSPC (MAX_WATCHED).
   */
  watch(address: string): boolean {
    if (this.#watched.some((w) => w.address === address)) return false;
    if (this.#watched.length >= MAX_WATCHED) throw new FractosError('ENOSPC', `the dashboard watches ${MAX_WATCHED} controllers already`);
    this.#watched.push(new Watched(address));
    return true;
  }

  /** Addresses watched. */
  get watched(): string[] {
    return this.#watched.map((w) => w.address);
  }

  /** The latest snapshot. */
  get snapshot(): Snapshot {
    return this.#last;
  }

  /** Poll now and then every `intervalMs`. */
  start(): Promise<unknown> {
    const tick = (): void => {
      this.#round = this.poll().finally(() => {
        if (!this.#closed) this.#timer = setTimeout(tick, this.intervalMs);
      });
    };
    tick();
    return this.#round!;
  }

  /** One round: poll every Controller (in parallel), then build and emit a snapshot. */
  async poll(): Promise<Snapshot> {
    await Promise.all(this.#watched.map((w) => this.#pollOne(w)));
    this.#last = this.#build();
    this.emit('snapshot', this.#last);
    return this.#last;
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    await this.#round?.catch(() => {});
    for (const w of this.#watched) await w.proc?.close().catch(() => {});
  }

  async #pollOne(w: Watched): Promise<void> {
    try {
      if (!w.proc) {
        const p = await connect(w.address, { name: this.#name, timeoutMs: Math.max(1000, this.intervalMs) });
        if (this.#closed) {
          await p.close();
          return;
        }
        w.proc = p;
        p.on('close', () => {
          if (w.proc === p) w.proc = null;
          this.#down(w, 'channel closed');
        });
      }
      const p = w.proc;
      const [s, first] = await Promise.all([p.stats(), p.introspect(w.since)]);
      let i = first;
      // A restarted Controller (new epoch) numbers its records from 0 again.
      if (i.epoch !== w.epochSeen && w.since !== 0) {
        w.since = 0;
        i = await p.introspect(0);
      }
      this.#take(w, s, i);
    } catch (err) {
      const proc = w.proc;
      w.proc = null;
      await proc?.close().catch(() => {});
      this.#down(w, err instanceof Error ? err.message : String(err));
    }
  }

  #down(w: Watched, why: string): void {
    w.view = { ...w.view, up: false, error: why, peers: [] };
    w.prevStats = null;
    w.linkRates.clear();
  }

  #take(w: Watched, s: ControllerStats, i: Introspection): void {
    const now = Date.now();
    if (i.epoch !== w.epochSeen) {
      // First contact, or a restarted Controller (it counts its records from 0 again).
      w.epochSeen = i.epoch;
      w.records = [];
    } else if (i.firstSeq > w.since) w.lost += i.firstSeq - w.since;
    w.since = i.nextSeq;
    for (const r of i.invocations) {
      w.records.push({ at: now - r.ageMs, kind: r.invokerKind, invoker: r.invokerId, targetController: r.targetController, targetObject: r.targetObject, provider: r.provider });
      if (r.provider) this.#owners.set(`${r.targetController}:${r.targetObject}`, r.provider);
    }
    const cut = now - this.windowMs;
    let drop = 0;
    while (drop < w.records.length && w.records[drop]!.at < cut) drop++;
    if (drop || w.records.length > MAX_RECORDS) w.records = w.records.slice(Math.max(drop, w.records.length - MAX_RECORDS));

    // Rates from the previous poll's counters.
    const prev = w.prevStats;
    const dt = prev ? (now - prev.at) / 1000 : 0;
    const rate = (kind: string, id: number, pick: (l: ControllerStats['links'][number]) => number, cur: number): number => {
      if (!prev || dt <= 0) return 0;
      const old = prev.s.links.find((l) => l.kind === kind && l.id === id && l.live);
      return old ? Math.max(0, (cur - pick(old)) / dt) : 0;
    };
    w.linkRates.clear();
    const live = s.links.filter((l) => l.live);
    for (const l of live) {
      w.linkRates.set(`${l.kind}:${l.id}`, {
        f: [rate(l.kind, l.id, (x) => x.framesOut, l.framesOut), rate(l.kind, l.id, (x) => x.framesIn, l.framesIn)],
        b: [rate(l.kind, l.id, (x) => x.bytesOut, l.bytesOut), rate(l.kind, l.id, (x) => x.bytesIn, l.bytesIn)],
      });
    }
    w.prevStats = { at: now, s };
    w.stats = s;
    const self = w.proc?.processId ?? 0;
    const processes: ProcessView[] = i.processes
      .filter((p) => p.id !== self)
      .map((p) => {
        const r = w.linkRates.get(`process:${p.id}`);
        return { ...p, framesPerSec: r ? r.f[0] + r.f[1] : 0, bytesPerSec: r ? r.b[0] + r.b[1] : 0 };
      });
    w.view = {
      address: w.address, id: i.controller, epoch: i.epoch, up: true, error: null, lastSeen: now,
      objects: i.objects, caps: i.caps, proxies: i.proxies, names: i.names, processes, procsTruncated: i.procsTruncated,
      peers: live.filter((l) => l.kind === 'peer').map((l) => l.id).sort((a, b) => a - b),
      lostInvocations: w.lost,
    };
  }

  #build(): Snapshot {
    const now = Date.now();
    const nodes = this.#watched.map((w) => w.view);
    const watchedIds = new Set(nodes.filter((n) => n.id).map((n) => n.id));
    // Peers heard of but not watched: shown as nodes without an address.
    const heard = new Set<number>();
    for (const n of nodes) for (const p of n.peers) if (!watchedIds.has(p)) heard.add(p);
    for (const id of [...heard].sort((a, b) => a - b)) {
      nodes.push({ address: null, id, epoch: 0, up: true, error: 'not watched (a peer of a watched Controller)', lastSeen: now, objects: 0, caps: 0, proxies: 0, names: 0, processes: [], procsTruncated: false, peers: [], lostInvocations: 0 });
    }

    // Links: one per pair, from the lower watched id's view when it is up.
    const links = new Map<string, LinkView>();
    const byId = new Map<number, Watched>();
    for (const w of this.#watched) if (w.view.id) byId.set(w.view.id, w);
    for (const w of [...byId.values()].sort((a, b) => a.view.id - b.view.id)) {
      if (!w.view.up || !w.stats) continue;
      for (const l of w.stats.links) {
        if (l.kind !== 'peer' || !l.live) continue;
        const a = Math.min(w.view.id, l.id);
        const b = Math.max(w.view.id, l.id);
        const key = `${a}-${b}`;
        if (links.has(key)) continue;
        const r = w.linkRates.get(`peer:${l.id}`) ?? { f: [0, 0], b: [0, 0] };
        links.set(key, {
          from: w.view.id, to: l.id, up: true,
          framesOutPerSec: r.f[0], framesInPerSec: r.f[1], bytesOutPerSec: r.b[0], bytesInPerSec: r.b[1],
          framesOut: l.framesOut, framesIn: l.framesIn, bytesOut: l.bytesOut, bytesIn: l.bytesIn,
        });
      }
    }
    // A watched Controller that is down keeps its links in the view, as down.
    for (const w of this.#watched) {
      if (w.view.up || !w.view.id || !w.stats) continue;
      for (const l of w.stats.links) {
        if (l.kind !== 'peer' || !l.live) continue;
        const key = `${Math.min(w.view.id, l.id)}-${Math.max(w.view.id, l.id)}`;
        if (!links.has(key)) links.set(key, { from: w.view.id, to: l.id, up: false, framesOutPerSec: 0, framesInPerSec: 0, bytesOutPerSec: 0, bytesInPerSec: 0, framesOut: l.framesOut, framesIn: l.framesIn, bytesOut: l.bytesOut, bytesIn: l.bytesIn });
      }
    }

    // Invocation edges of the window, joined across Controllers.
    const edges = new Map<string, EdgeView>();
    const add = (from: EdgeEnd, to: EdgeEnd, at: number): void => {
      const key = `${from.controller}:${from.process}:${from.object ?? ''}>${to.controller}:${to.process}:${to.object ?? ''}`;
      const e = edges.get(key);
      const age = Math.max(0, now - at);
      if (e) {
        e.count++;
        e.lastAgeMs = Math.min(e.lastAgeMs, age);
      } else edges.set(key, { from, to, count: 1, lastAgeMs: age });
    };
    const cut = now - this.windowMs;
    for (const w of this.#watched) {
      const here = w.epochSeen ? w.view.id : 0;
      if (!here) continue;
      for (const r of w.records) {
        if (r.at < cut) continue;
        if (r.kind === 'peer') {
          // Counted at the invoker's Controller when that one is watched.
          if (watchedIds.has(r.invoker)) continue;
          add({ controller: r.invoker, process: 0 }, { controller: here, process: r.provider }, r.at);
          continue;
        }
        const owner = r.provider || this.#owners.get(`${r.targetController}:${r.targetObject}`) || 0;
        add({ controller: here, process: r.invoker }, owner ? { controller: r.targetController, process: owner } : { controller: r.targetController, process: 0, object: r.targetObject }, r.at);
      }
    }
    return { time: now, intervalMs: this.intervalMs, windowMs: this.windowMs, nodes, links: [...links.values()], edges: [...edges.values()] };
  }
}

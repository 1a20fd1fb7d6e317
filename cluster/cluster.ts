/**
 * A multi-host FractOS cluster on one machine: etcd and N nodes, each node a network
 * namespace (cluster/netns.ts) running a Controller and the services placed on it, started
 * with `ip netns exec` as detached processes that outlive the command. Everything is
 * recorded in `DIR/cluster.json` (cluster/state.ts) before it is made; `down` removes it
 * all. Fault injection: kill (SIGKILL), pause/resume (SIGSTOP/SIGCONT), partition/heal
 * (the node's veth down/up in the hub), start (a killed node again, with a new epoch).
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ensureClusterSecretFile } from '../controller/index.js';
import { connect } from '../libfractos/index.js';
import { FractosError } from '../libfractos/errors.js';
import { FRACTOS_BIN } from '../testbed/paths.js';
import { deleteNamespace, deleteRootLink, hubEndUp, makeHub, makeMember, netnsUnavailable, setHubEnd } from './netns.js';
import { loadState, saveState, STATE_FILE, type ClusterState, type NodeRecord, type ProcRecord } from './state.js';

export { loadState, type ClusterState, type NodeRecord, type ProcRecord } from './state.js';
export { netnsUnavailable } from './netns.js';

/** Service kinds `--placement` may name. */
export const SERVICE_KINDS = ['blockdev', 'fs', 'gpu'] as const;
export type ServiceKind = (typeof SERVICE_KINDS)[number];

export interface Placement {
  kind: ServiceKind;
  node: number;
}

/** Controller peer port on every node's address. */
export const CONTROLLER_PORT = 7000;
export const ETCD_PORT = 2379;
/** Most nodes on one /24 (addresses .11 .. .210). */
export const MAX_NODES = 200;
/** Size of a blockdev's device file (sparse), bytes. */
export const BLOCKDEV_BYTES = 64 << 20;

/**
 * Parse `--placement KIND@NODE[,KIND@NODE...]` (e.g. `blockdev@1,fs@2,gpu@3`).
 * @throws FractosError EINVAL on an unknown kind, a node outside 1..nodes, or bad syntax.
 */
export function parsePlacement(spec: string, nodes: number): Placement[] {
  if (!spec.trim()) return [];
  return spec.split(',').map((item) => {
    const m = /^\s*([a-z]+)@(\d+)\s*$/.exec(item);
    if (!m) throw new FractosError('EINVAL', `--placement wants KIND@NODE[,KIND@NODE...], got '${item}'`);
    const kind = m[1] as ServiceKind;
    if (!SERVICE_KINDS.includes(kind)) throw new FractosError('EINVAL', `--placement: unknown service '${m[1]}' (${SERVICE_KINDS.join(', ')})`);
    const node = Number(m[2]);
    if (node < 1 || node > nodes) throw new FractosError('EINVAL', `--placement: node ${node} is not in 1..${nodes}`);
    return { kind, node };
  });
}

/** `DIR/cluster.secret` (0600), made if missing (`fractos cluster init`). Returns its path. */
export function initCluster(dir: string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const f = join(resolve(dir), 'cluster.secret');
  ensureClusterSecretFile(f);
  return f;
}

export interface UpOptions {
  dir: string;
  nodes: number;
  /** etcd client URLs to use instead of starting one (must be reachable from the namespaces). */
  etcd?: string[];
  /** Start no etcd at all. */
  noEtcd?: boolean;
  placement?: Placement[];
  /** First three octets of the private /24 (default '10.231.0'). */
  subnet?: string;
  /** Ready timeout of each process, ms (default READY_TIMEOUT_MS). */
  readyTimeoutMs?: number;
  /** Extra environment for every process. */
  env?: NodeJS.ProcessEnv;
  /** Extra arguments for every Controller. */
  controllerArgs?: string[];
  /** Where Controllers learn their peers: 'etcd' (default when etcd runs) or 'static' (--peer lists). */
  membership?: 'etcd' | 'static';
  /** etcd membership lease TTL, ms (default 2000). */
  leaseTtlMs?: number;
}

/** /proc/PID/stat start time, or null when the pid is gone. */
function procStart(pid: number): number | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return null;
  }
}

/** The process state letter (R, S, T, Z, ...) of `p`, or null when it is gone (or its pid was reused). */
export function procState(p: ProcRecord): string | null {
  if (procStart(p.pid) !== p.start) return null;
  try {
    const s = readFileSync(`/proc/${p.pid}/stat`, 'utf8');
    const st = s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3);
    return st === 'Z' || st === 'X' ? null : st;
  } catch {
    return null;
  }
}

function signal(p: ProcRecord, sig: NodeJS.Signals): boolean {
  if (procStart(p.pid) !== p.start) return false;
  try {
    process.kill(p.pid, sig);
    return true;
  } catch {
    return false;
  }
}

/**
 * Default bound on one process's start (its ready line in its log), ms: it catches a hang
 * only. A Controller took over 20 s to start on a machine at load 20 (as testbed/spawn.ts).
 */
export const READY_TIMEOUT_MS = 60_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Start `argv` in namespace `ns`, detached, output to `log`; the record is saved before waiting. */
function startProc(s: ClusterState, role: string, node: number, name: string, ns: string, argv: string[], log: string, env?: NodeJS.ProcessEnv): ProcRecord {
  const logFrom = existsSync(log) ? statSync(log).size : 0;
  const fd = openSync(log, 'a', 0o600);
  const childEnv: NodeJS.ProcessEnv = { FRACTOS_LOG: 'info', ...process.env, ...env };
  // The cluster outlives the command: no parent watch (cli/parent.ts).
  delete childEnv.FRACTOS_PARENT_PID;
  const child = spawn('ip', ['netns', 'exec', ns, ...argv], { detached: true, stdio: ['ignore', fd, fd], env: childEnv });
  closeSync(fd);
  child.unref();
  if (child.pid === undefined) throw new FractosError('EIO', `cannot start ${role} on node ${node}`);
  // `ip netns exec` execs the command in place: this pid is the process itself.
  const rec: ProcRecord = { role, node, name, pid: child.pid, start: procStart(child.pid) ?? 0, log, logFrom, argv };
  s.procs.push(rec);
  saveState(s);
  return rec;
}

/** Wait until `p`'s log has a line matching `ready`; ETIMEDOUT / EIO (it exited) with the log's tail. */
async function waitReady(p: ProcRecord, ready: RegExp, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const text = existsSync(p.log) ? readFileSync(p.log).subarray(p.logFrom).toString('utf8') : '';
    if (text.split('\n').some((l) => ready.test(l))) return;
    const tail = text.split('\n').slice(-15).join('\n');
    if (procState(p) === null) throw new FractosError('EIO', `${p.role} of node ${p.node} exited before ready; ${p.log}:\n${tail}`);
    if (Date.now() > end) throw new FractosError('ETIMEDOUT', `${p.role} of node ${p.node}: not ready in ${timeoutMs} ms; ${p.log}:\n${tail}`);
    await sleep(20);
  }
}

const READY: Record<string, RegExp> = {
  controller: /^controller \d+ epoch \d+ listening/,
  blockdev: /^ready blockdev/,
  fs: /^ready fs/,
  gpu: /^ready gpu/,
  etcd: /ready to serve client requests/,
};

function controllerArgv(s: ClusterState, n: NodeRecord, extra: string[], leaseTtlMs?: number): string[] {
  const argv = [process.execPath, FRACTOS_BIN, 'controller', '--id', String(n.id), '--state-dir', n.stateDir, '--listen', n.unix, '--listen', n.tcp, '--cluster-secret-file', s.secretFile, ...extra];
  if (s.membership === 'etcd') {
    argv.push('--etcd', s.etcd.join(','), '--advertise', n.tcp);
    if (leaseTtlMs) argv.push('--lease-ttl-ms', String(leaseTtlMs));
  } else for (const p of s.nodes) if (p.id !== n.id) argv.push('--peer', `${p.id}=${p.tcp}`);
  return argv;
}

/**
 * `etcdctl ARGS` against the cluster's etcd, run in a namespace that reaches it (etcd's own,
 * else node 1's). @throws FractosError EIO with etcdctl's output.
 */
export function etcdctl(s: ClusterState, args: string[]): string {
  const ns = s.etcdNs ?? s.nodes[0]?.ns;
  if (!ns) throw new FractosError('ENOENT', 'no namespace to run etcdctl in');
  const r = spawnSync('ip', ['netns', 'exec', ns, 'etcdctl', '--endpoints', s.etcd.join(','), '--dial-timeout', '2s', ...args], { encoding: 'utf8', env: { ...process.env, ETCDCTL_API: '3' } });
  if (r.status !== 0) throw new FractosError('EIO', `etcdctl ${args.join(' ')}: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

/**
 * Wait until every Controller reports a live peer link to every other one (its `stats`).
 * @throws FractosError ETIMEDOUT naming the nodes that are short of peers.
 */
export async function waitConverged(s: ClusterState, timeoutMs = 30_000, nodes: NodeRecord[] = s.nodes): Promise<void> {
  const end = Date.now() + timeoutMs;
  const want = s.nodes.length - 1;
  for (;;) {
    const short: string[] = [];
    for (const n of nodes) {
      const live = await peerCount(n).catch(() => -1);
      if (live < want) short.push(`node ${n.id}: ${live < 0 ? 'no answer' : `${live}/${want} peers`}`);
    }
    if (!short.length) return;
    if (Date.now() > end) throw new FractosError('ETIMEDOUT', `cluster not converged in ${timeoutMs} ms: ${short.join('; ')}`);
    await sleep(20);
  }
}

/** Live peer links of node `n`'s Controller (over its unix socket). */
export async function peerCount(n: NodeRecord): Promise<number> {
  const p = await connect(n.unix, { name: 'cluster-probe' });
  try {
    const st = await p.stats();
    return st.links.filter((l) => l.kind === 'peer' && l.live).length;
  } finally {
    await p.close();
  }
}

/**
 * Start a cluster (see the module comment) and return its state once every Controller is
 * linked to every other one and every placed service is ready. On any failure everything
 * made so far is removed (`down`) and the error is thrown.
 * @throws FractosError EEXIST (a cluster is already recorded in `dir`), EINVAL (nodes, subnet),
 *   ENODEV/EPERM (no `ip netns` or not root), EIO/ETIMEDOUT (a process failed to start).
 */
export async function up(o: UpOptions): Promise<ClusterState> {
  const why = netnsUnavailable();
  if (why) throw new FractosError('EPERM', why);
  if (!Number.isInteger(o.nodes) || o.nodes < 1 || o.nodes > MAX_NODES) throw new FractosError('EINVAL', `--nodes must be 1..${MAX_NODES}, got ${o.nodes}`);
  const subnet = o.subnet ?? '10.231.0';
  if (!/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(subnet) || subnet.split('.').some((x) => Number(x) > 255)) throw new FractosError('EINVAL', `--subnet wants the first three octets of a /24 (e.g. 10.231.0), got '${subnet}'`);
  const dir = resolve(o.dir);
  const made: string[] = [];
  if (!existsSync(dir)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    made.push(dir);
  }
  if (existsSync(join(dir, STATE_FILE))) throw new FractosError('EEXIST', `a cluster is recorded in ${dir}; fractos cluster down --dir ${dir} first`);
  const secretExisted = existsSync(join(dir, 'cluster.secret'));
  const secretFile = initCluster(dir);
  const tag = randomBytes(2).toString('hex');
  const t0 = performance.now();
  const s: ClusterState = {
    version: 1, dir, tag, subnet, hub: `fx${tag}-hub`, secretFile, etcd: o.etcd ?? [], etcdNs: null, membership: 'static',
    namespaces: [], rootLinks: [], nodes: [], procs: [], files: [...made], convergedMs: null, createdAt: new Date().toISOString(),
  };
  if (!secretExisted && !made.includes(dir)) s.files.push(secretFile);
  saveState(s);
  try {
    s.namespaces.push(s.hub);
    saveState(s);
    makeHub(s.hub);
    const member = (ns: string, idx: string, host: number): { addr: string; hubEnd: string; nsEnd: string } => {
      const hubEnd = `fx${tag}h${idx}`;
      const nsEnd = `fx${tag}n${idx}`;
      const addr = `${subnet}.${host}`;
      s.namespaces.push(ns);
      s.rootLinks.push(hubEnd);
      saveState(s);
      makeMember(s.hub, ns, hubEnd, nsEnd, addr);
      return { addr, hubEnd, nsEnd };
    };
    // etcd: its own namespace at .2, data in DIR/etcd.
    if (!o.etcd?.length && !o.noEtcd) {
      const ns = `fx${tag}-etcd`;
      const { addr } = member(ns, 'e', 2);
      s.etcdNs = ns;
      const edir = join(dir, 'etcd');
      mkdirSync(edir, { mode: 0o700 });
      s.files.push(edir);
      const url = `http://${addr}:${ETCD_PORT}`;
      s.etcd = [url];
      const argv = ['etcd', '--name', 'e0', '--data-dir', join(edir, 'data'), '--listen-client-urls', url, '--advertise-client-urls', url,
        '--listen-peer-urls', 'http://127.0.0.1:2380', '--initial-advertise-peer-urls', 'http://127.0.0.1:2380', '--initial-cluster', 'e0=http://127.0.0.1:2380'];
      startProc(s, 'etcd', 0, 'etcd', ns, argv, join(edir, 'etcd.log'));
    }
    for (let i = 1; i <= o.nodes; i++) {
      const ns = `fx${tag}-n${i}`;
      const { addr, hubEnd, nsEnd } = member(ns, String(i), 10 + i);
      const ndir = join(dir, `n${i}`);
      mkdirSync(ndir, { recursive: true, mode: 0o700 });
      s.files.push(ndir);
      s.nodes.push({ id: i, ns, addr, hubEnd, nsEnd, tcp: `tcp://${addr}:${CONTROLLER_PORT}`, unix: `unix:${join(ndir, 'controller.sock')}`, stateDir: join(ndir, 'state') });
      saveState(s);
    }
    const timeout = o.readyTimeoutMs ?? READY_TIMEOUT_MS;
    const etcdProc = s.procs.find((p) => p.role === 'etcd');
    s.membership = o.membership ?? (s.etcd.length ? 'etcd' : 'static');
    if (s.membership === 'etcd') {
      if (!s.etcd.length) throw new FractosError('EINVAL', 'etcd membership needs etcd (not --no-etcd)');
      if (etcdProc) await waitReady(etcdProc, READY.etcd!, timeout);
      // the members allowed to join (controller/membership.ts)
      for (const n of s.nodes) etcdctl(s, ['put', `/fractos/allowed/${n.id}`, '']);
    }
    saveState(s);
    const ctl = s.nodes.map((n) => startProc(s, 'controller', n.id, 'controller', n.ns, controllerArgv(s, n, o.controllerArgs ?? [], o.leaseTtlMs), join(dir, `n${n.id}`, 'controller.log'), o.env));
    await Promise.all([...ctl.map((p) => waitReady(p, READY.controller!, timeout)), ...(etcdProc ? [waitReady(etcdProc, READY.etcd!, timeout)] : [])]);
    await waitConverged(s, Math.max(timeout, 30_000));
    s.convergedMs = Math.round(performance.now() - t0);
    saveState(s);
    await startServices(s, o.placement ?? [], timeout, o.env);
    return s;
  } catch (err) {
    await down(dir);
    throw err;
  }
}

function serviceName(kind: ServiceKind, node: number, placement: Placement[]): string {
  return placement.filter((p) => p.kind === kind).length > 1 ? `${kind}-n${node}` : kind;
}

function serviceArgv(s: ClusterState, p: Placement, placement: Placement[]): string[] {
  const n = s.nodes[p.node - 1]!;
  const name = serviceName(p.kind, p.node, placement);
  const base = [process.execPath, FRACTOS_BIN, p.kind, '--controller', n.unix, '--name', name];
  if (p.kind === 'blockdev') return [...base, '--device', join(s.dir, `n${p.node}`, `${name}.img`), '--format'];
  if (p.kind === 'fs') {
    const bds = placement.filter((q) => q.kind === 'blockdev');
    const bd = bds.find((q) => q.node === p.node) ?? bds[0];
    if (!bd) throw new FractosError('EINVAL', '--placement: fs needs a blockdev placed too');
    return [...base, '--blockdev', serviceName('blockdev', bd.node, placement)];
  }
  return [...base, '--backend', 'cpu'];
}

/** Start the placed services, blockdevs first, then FSes, then GPU adaptors; each waits for its ready line. */
async function startServices(s: ClusterState, placement: Placement[], timeoutMs: number, env?: NodeJS.ProcessEnv): Promise<void> {
  for (const kind of SERVICE_KINDS) {
    const started: ProcRecord[] = [];
    for (const p of placement.filter((q) => q.kind === kind)) {
      const n = s.nodes[p.node - 1]!;
      const argv = serviceArgv(s, p, placement);
      if (kind === 'blockdev') {
        // a sparse device file
        const img = argv[argv.indexOf('--device') + 1]!;
        writeFileSync(img, '', { mode: 0o600 });
        truncateSync(img, BLOCKDEV_BYTES);
      }
      started.push(startProc(s, kind, n.id, serviceName(kind, p.node, placement), n.ns, argv, join(s.dir, `n${n.id}`, `${serviceName(kind, p.node, placement)}.log`), env));
    }
    await Promise.all(started.map((p) => waitReady(p, READY[kind]!, timeoutMs)));
  }
}

function nodeOf(s: ClusterState, node: number): NodeRecord {
  const n = s.nodes.find((x) => x.id === node);
  if (!n) throw new FractosError('ENOENT', `no node ${node} in the cluster in ${s.dir} (nodes 1..${s.nodes.length})`);
  return n;
}

/** Processes of node `node` (Controller and services), or of etcd for node 0. */
export function nodeProcs(s: ClusterState, node: number): ProcRecord[] {
  // the latest record per role+name: a restarted node has new ones
  const latest = new Map<string, ProcRecord>();
  for (const p of s.procs) if (p.node === node) latest.set(`${p.role}/${p.name}`, p);
  return [...latest.values()];
}

/** SIGKILL every process of `node` (0: etcd). Returns how many were alive. */
export function kill(dir: string, node: number): number {
  const s = loadState(dir);
  if (node !== 0) nodeOf(s, node);
  let n = 0;
  for (const p of nodeProcs(s, node)) if (signal(p, 'SIGKILL')) n++;
  return n;
}

/** SIGSTOP (pause) or SIGCONT (resume) every process of `node` (0: etcd). Returns how many were signalled. */
export function pause(dir: string, node: number, stop: boolean): number {
  const s = loadState(dir);
  if (node !== 0) nodeOf(s, node);
  let n = 0;
  for (const p of nodeProcs(s, node)) if (signal(p, stop ? 'SIGSTOP' : 'SIGCONT')) n++;
  return n;
}

/**
 * Heal node `node` (its link up); with etcd membership, a Controller that fenced itself
 * meanwhile (its lease expired: exit 75) is started again with its services, with a new
 * epoch (they rejoin). Returns the processes started.
 */
export async function heal(dir: string, node: number, timeoutMs = READY_TIMEOUT_MS): Promise<ProcRecord[]> {
  partition(dir, node, false);
  const s = loadState(dir);
  const procs = nodeProcs(s, node);
  const ctl = procs.find((p) => p.role === 'controller' || p.role === 'etcd');
  if (!ctl) return [];
  // A Controller that logged 'fenced' is on its way out (exit 75): wait for it, then start it again.
  if (procState(ctl) !== null && fencedSince(ctl)) {
    const gone = Date.now() + timeoutMs; // a bound on a hang only: exiting takes seconds on a loaded machine
    while (procState(ctl) !== null && Date.now() < gone) await sleep(20);
  }
  if (procState(ctl) !== null) return [];
  // its services follow their Controller out (lost channel): wait for them, then start all
  const end = Date.now() + timeoutMs;
  while (procs.some((p) => procState(p) !== null) && Date.now() < end) await sleep(20);
  return startNode(dir, node, timeoutMs);
}

/** Whether `p` logged that it fenced itself since it started. */
function fencedSince(p: ProcRecord): boolean {
  try {
    return readFileSync(p.log).subarray(p.logFrom).includes(' fenced: ');
  } catch {
    return false;
  }
}

/** Partition (`up` false: the node's veth end in the hub down) or heal node `node` (0: etcd). */
export function partition(dir: string, node: number, cut: boolean): void {
  const s = loadState(dir);
  const hubEnd = node === 0 ? `fx${s.tag}he` : nodeOf(s, node).hubEnd;
  if (node === 0 && !s.etcdNs) throw new FractosError('ENOENT', `the cluster in ${s.dir} runs no etcd of its own`);
  setHubEnd(s.hub, hubEnd, !cut);
}

/**
 * Start node `node`'s processes again (after `kill`): the Controller (with a new epoch, from
 * its state dir) and its services, each waiting for its ready line; node 0: etcd (same data).
 * @throws FractosError EBUSY when one of them is still alive.
 */
export async function startNode(dir: string, node: number, timeoutMs = READY_TIMEOUT_MS): Promise<ProcRecord[]> {
  const s = loadState(dir);
  const old = nodeProcs(s, node);
  if (node !== 0) nodeOf(s, node);
  const live = old.filter((p) => procState(p) !== null);
  if (live.length) throw new FractosError('EBUSY', `node ${node}: ${live.map((p) => `${p.role} pid ${p.pid}`).join(', ')} still running; fractos cluster kill ${node} first`);
  const ns = node === 0 ? s.etcdNs! : nodeOf(s, node).ns;
  const order = ['etcd', 'controller', ...SERVICE_KINDS];
  const started: ProcRecord[] = [];
  for (const role of order) {
    for (const p of old.filter((q) => q.role === role)) {
      const r = startProc(s, p.role, node, p.name, ns, p.argv, p.log);
      started.push(r);
      await waitReady(r, READY[role]!, timeoutMs);
    }
  }
  return started;
}

export interface NodeStatus {
  id: number;
  ns: string;
  addr: string;
  link: 'up' | 'down';
  procs: { role: string; name: string; pid: number; state: 'running' | 'paused' | 'dead'; log: string }[];
}

/** What runs where, with link and process states. */
export function status(dir: string): { state: ClusterState; nodes: NodeStatus[] } {
  const s = loadState(dir);
  const ids = [...(s.etcdNs ? [0] : []), ...s.nodes.map((n) => n.id)];
  const nodes = ids.map((id): NodeStatus => {
    const n = id === 0 ? { ns: s.etcdNs!, addr: `${s.subnet}.2`, hubEnd: `fx${s.tag}he` } : nodeOf(s, id);
    return {
      id, ns: n.ns, addr: n.addr, link: hubEndUp(s.hub, n.hubEnd) ? 'up' : 'down',
      procs: nodeProcs(s, id).map((p) => {
        const st = procState(p);
        return { role: p.role, name: p.name, pid: p.pid, state: st === null ? 'dead' : st === 'T' ? 'paused' : 'running', log: p.log };
      }),
    };
  });
  return { state: s, nodes };
}

/**
 * Remove everything the cluster in `dir` made: its processes (SIGCONT, SIGTERM, SIGKILL after
 * `graceMs`), namespaces (their links go with them), root-namespace links left by a crash,
 * files, then the state file. Works on the state of a crashed `up`. Returns what it removed.
 * @throws FractosError ENOENT when no cluster is recorded in `dir`.
 */
export async function down(dir: string, graceMs = 3000): Promise<{ procs: number; namespaces: number; files: number }> {
  const s = loadState(dir);
  const live = s.procs.filter((p) => procState(p) !== null);
  for (const p of live) {
    signal(p, 'SIGCONT');
    signal(p, 'SIGTERM');
  }
  const end = Date.now() + graceMs;
  while (live.some((p) => procState(p) !== null) && Date.now() < end) await sleep(20);
  for (const p of live) signal(p, 'SIGKILL');
  while (live.some((p) => procState(p) !== null)) await sleep(10);
  for (const ns of [...s.namespaces].reverse()) deleteNamespace(ns);
  for (const l of s.rootLinks) deleteRootLink(l);
  for (const f of [...s.files].reverse()) rmSync(f, { recursive: true, force: true });
  const stateFile = join(s.dir, STATE_FILE);
  if (existsSync(s.dir) && statSync(s.dir).isDirectory()) rmSync(stateFile, { force: true });
  return { procs: live.length, namespaces: s.namespaces.length, files: s.files.length };
}

/** Run `argv` inside node `node`'s namespace (`ip netns exec`), e.g. a client or a provider. */
export function nsArgv(s: ClusterState, node: number, argv: string[]): string[] {
  return ['ip', 'netns', 'exec', node === 0 ? s.etcdNs! : nodeOf(s, node).ns, ...argv];
}

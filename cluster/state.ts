/**
 * The state file of a cluster (`DIR/cluster.json`, mode 0600): everything `up` made, written
 * before each thing is made (an intent log), so that `down` removes every namespace, link,
 * process and file even after a crash of `up` halfway.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FractosError } from '../libfractos/errors.js';

/** One process `up` started (a Controller, a service or etcd). */
export interface ProcRecord {
  /** 'controller' | 'blockdev' | 'fs' | 'gpu' | 'etcd' */
  role: string;
  /** Node id (1..N); 0 for etcd. */
  node: number;
  /** Service name (bootstrap prefix) for services; the role otherwise. */
  name: string;
  pid: number;
  /** /proc/PID/stat start time (clock ticks since boot): a recycled pid is never signalled. */
  start: number;
  /** stdout+stderr of the process. */
  log: string;
  /** argv after `ip netns exec NS` (to start it again: `fractos cluster start NODE`). */
  argv: string[];
  /** Size of `log` when this process started: its ready line comes after (a restart appends to the same log). */
  logFrom: number;
}

export interface NodeRecord {
  id: number;
  ns: string;
  /** The node's address on the private subnet. */
  addr: string;
  /** Veth end in the hub namespace (partition = this link down). */
  hubEnd: string;
  /** Veth end's name while it is still in the root namespace (teardown after a crash). */
  nsEnd: string;
  /** Controller's peer address, tcp://ADDR:PORT. */
  tcp: string;
  /** Controller's Process address, unix:PATH (reachable from every namespace). */
  unix: string;
  stateDir: string;
}

export interface ClusterState {
  version: 1;
  dir: string;
  /** Short random tag in every namespace and link name of this cluster. */
  tag: string;
  /** First three octets of the /24, e.g. '10.231.0'. */
  subnet: string;
  hub: string;
  secretFile: string;
  /** etcd client URLs (started by `up` in namespace `etcdNs`, or given). */
  etcd: string[];
  etcdNs: string | null;
  /** Where the Controllers learn their peers. */
  membership: 'etcd' | 'static';
  /** Namespaces made (or about to be made): all deleted by `down`. */
  namespaces: string[];
  /** Root-namespace link names made (or about to be): deleted by `down` if still there. */
  rootLinks: string[];
  nodes: NodeRecord[];
  procs: ProcRecord[];
  /** Files and folders made (removed by `down`, last first). */
  files: string[];
  /** ms from the start of `up` until every Controller had a live link to every other one. */
  convergedMs: number | null;
  createdAt: string;
}

export const STATE_FILE = 'cluster.json';

/** Write `s` to `DIR/cluster.json` atomically (a temporary file renamed over it), mode 0600. */
export function saveState(s: ClusterState): void {
  const f = join(s.dir, STATE_FILE);
  writeFileSync(`${f}.tmp`, JSON.stringify(s, null, 1), { mode: 0o600 });
  renameSync(`${f}.tmp`, f);
}

/**
 * The state of the cluster in `dir`.
 * @throws FractosError ENOENT when no cluster is recorded there; EINVAL when the file is not a state file.
 */
export function loadState(dir: string): ClusterState {
  let text: string;
  try {
    text = readFileSync(join(dir, STATE_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new FractosError('ENOENT', `no cluster in ${dir} (no ${STATE_FILE}); fractos cluster up --dir ${dir} first`);
    throw err;
  }
  let s: ClusterState;
  try {
    s = JSON.parse(text) as ClusterState;
  } catch (err) {
    throw new FractosError('EINVAL', `${join(dir, STATE_FILE)} is not a cluster state file: ${(err as Error).message}`);
  }
  if (s.version !== 1 || !Array.isArray(s.procs) || !Array.isArray(s.namespaces)) throw new FractosError('EINVAL', `${join(dir, STATE_FILE)} is not a version-1 cluster state file`);
  return s;
}

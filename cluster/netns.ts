/**
 * Network namespaces, veth pairs and a bridge for a cluster on one machine, with iproute2
 * (`ip`, run synchronously; root needed). Layout for subnet `S` (a /24, `S.0`):
 *
 *   hub namespace  HUB: bridge `br0`, no address, one veth end `H<i>` per member
 *   member namespace NS<i>: `lo` up, `eth0` (the other veth end) with `S.<host>/24`
 *
 * No namespace has a default route and nothing is attached to the root namespace, so the
 * subnet exists only on these veth pairs: traffic goes nowhere but loopback and the other
 * members. Unix sockets (file-system paths) still work across namespaces, which is how the
 * root namespace talks to the Controllers.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { FractosError } from '../libfractos/errors.js';

/** Run `ip ...args`; throws FractosError EIO with ip's stderr when it fails. */
export function ip(...args: string[]): string {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.error) throw new FractosError('ENODEV', `ip ${args.join(' ')}: ${r.error.message} (iproute2 missing?)`);
  if (r.status !== 0) throw new FractosError('EIO', `ip ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.status}`}`);
  return r.stdout;
}

/** Same as `ip`, but a missing object (namespace, link) is not an error: for teardown. */
export function ipQuiet(...args: string[]): void {
  spawnSync('ip', args, { encoding: 'utf8' });
}

/**
 * Why namespaces cannot be made here, or null when they can: not root, or `ip netns` missing
 * or refused (a container without CAP_SYS_ADMIN). Tests skip with this reason.
 */
export function netnsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'network namespaces need root (uid 0); this runs as uid ' + String(process.getuid?.());
  try {
    execFileSync('ip', ['netns', 'list'], { stdio: 'pipe' });
  } catch (err) {
    return `'ip netns' is unavailable: ${(err as Error).message.split('\n')[0]}`;
  }
  return null;
}

/** Make the hub namespace `hub` with an up bridge `br0`. */
export function makeHub(hub: string): void {
  ip('netns', 'add', hub);
  ip('-n', hub, 'link', 'set', 'lo', 'up');
  ip('-n', hub, 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', hub, 'link', 'set', 'br0', 'up');
}

/**
 * Make member namespace `ns` wired to `hub`'s bridge: a veth pair created in the root
 * namespace as `hubEnd`/`nsEnd`, `hubEnd` moved into the hub and enslaved to br0, `nsEnd`
 * moved into `ns`, renamed eth0, given `addr/24` and brought up. `before(link)` is called
 * before the pair exists (the caller records it for teardown after a crash).
 */
export function makeMember(hub: string, ns: string, hubEnd: string, nsEnd: string, addr: string): void {
  ip('netns', 'add', ns);
  ip('-n', ns, 'link', 'set', 'lo', 'up');
  ip('link', 'add', hubEnd, 'type', 'veth', 'peer', 'name', nsEnd);
  ip('link', 'set', hubEnd, 'netns', hub);
  ip('link', 'set', nsEnd, 'netns', ns);
  ip('-n', hub, 'link', 'set', hubEnd, 'master', 'br0');
  ip('-n', hub, 'link', 'set', hubEnd, 'up');
  ip('-n', ns, 'link', 'set', nsEnd, 'name', 'eth0');
  ip('-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0');
  ip('-n', ns, 'link', 'set', 'eth0', 'up');
}

/** Set the hub end of a member's veth down (partition: the member's eth0 loses carrier) or up. */
export function setHubEnd(hub: string, hubEnd: string, up: boolean): void {
  ip('-n', hub, 'link', 'set', hubEnd, up ? 'up' : 'down');
}

/** Whether the hub end `hubEnd` is administratively up (false when it is down or missing). */
export function hubEndUp(hub: string, hubEnd: string): boolean {
  try {
    return /<[^>]*\bUP\b[^>]*>/.test(ip('-n', hub, '-o', 'link', 'show', hubEnd));
  } catch {
    return false;
  }
}

/** Names of the namespaces that exist now (`ip netns list`). */
export function listNamespaces(): string[] {
  return ip('netns', 'list')
    .split('\n')
    .map((l) => l.trim().split(' ')[0]!)
    .filter(Boolean);
}

/** Names of the links of the root namespace. */
export function listRootLinks(): string[] {
  return ip('-o', 'link', 'show')
    .split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
    .filter((x): x is string => !!x);
}

/** Delete namespace `ns` (its links go with it); a missing one is fine. */
export function deleteNamespace(ns: string): void {
  ipQuiet('netns', 'del', ns);
}

/** Delete root-namespace link `name` (a veth left there by a crash; its peer goes with it); a missing one is fine. */
export function deleteRootLink(name: string): void {
  ipQuiet('link', 'del', name);
}

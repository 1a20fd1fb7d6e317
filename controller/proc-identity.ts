/**
 * Who is at the other end of a Process channel, from the kernel, never from what the
 * Process says. On a unix socket the kernel recorded the connecting process's pid, uid and
 * gid (SO_PEERCRED, through the shm addon): that pid is the Process's identity for the
 * region-name rule (`/fractos-<pid>-…`), for cleanup and in logs. A tcp channel has no
 * such record: its pid is 0 (unknown) and the pid in its HELLO is informational only.
 */
import type net from 'node:net';
import { peerCred } from '../native/shm/index.js';

/** A channel's identity as the kernel knows it. */
export interface ChannelIdentity {
  /** OS pid of the Process (0: unknown, a tcp channel or a pid outside this pid namespace). */
  pid: number;
  /** uid of the Process (-1: unknown). */
  uid: number;
  /** Why the pid is unknown (for a log line), or null. */
  unknown: string | null;
}

/**
 * The kernel's identity of the peer of an accepted channel socket: SO_PEERCRED on a unix
 * socket (fd from the socket's handle; Linux); pid 0 for tcp, or when the addon or the fd is
 * unavailable (`unknown` says which). Never throws.
 */
export function channelIdentity(sock: net.Socket): ChannelIdentity {
  if (sock.remoteAddress !== undefined) return { pid: 0, uid: -1, unknown: 'tcp channel' };
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return { pid: 0, uid: -1, unknown: 'socket has no fd' };
  try {
    const c = peerCred(fd);
    return { pid: c.pid, uid: c.uid, unknown: c.pid > 0 ? null : 'kernel knows no pid (another pid namespace?)' };
  } catch (err) {
    return { pid: 0, uid: -1, unknown: `SO_PEERCRED failed: ${(err as Error).message}` };
  }
}

/**
 * Controller-side objects: Memory and Request objects owned by this Controller's
 * Processes, proxies for objects owned by other Controllers, and capability entries.
 */
import type { ImmRange, ObjectRef } from '../libfractos/protocol.js';
import type { ProcConn } from './process-conn.js';

/** Memory payload: where the bytes are and what a holder may do. */
export interface MemoryInfo {
  backing: 0 | 1; // Backing.SHARED | Backing.SERVED
  /** shm region name (shared backing). */
  region: string;
  /** Controller's mapping of the whole region (shared backing), or null. */
  map: Uint8Array | null;
  /** Key the owner gave for served backing. */
  servedKey: number;
  /** Offset of this view in the region / served object (bytes). */
  offset: number;
  size: number;
  perms: number;
}

/** Request payload: handler tag and arguments set so far. Immutable once built. */
export interface RequestInfo {
  tag: number;
  /** Set immediate ranges, sorted by offset, non-overlapping, bytes owned by the object. */
  imms: ImmRange[];
  /** Cap slots set so far (sparse). */
  caps: (Target | undefined)[];
}

/** A monitor registered by a local Process (`proc`) or on behalf of a peer (`peer`). */
export interface Monitor {
  proc: ProcConn | null;
  peer: number; // peer controller id when proc is null
  token: number; // monitor id at the Process, or token at the peer
}

/** An object owned by this Controller. */
export class Obj {
  revoked = false;
  children: Set<Obj> | null = null;
  /** Local cap entries naming this object. */
  readonly entries = new Set<CapEntry>();
  /** Remote Controllers holding caps: peer id -> count of holds. */
  remoteHolds: Map<number, number> | null = null;
  /** Pins: bootstrap names and cap slots of Request objects that name this object. */
  pins = 0;
  recvMonitors: Monitor[] | null = null;
  delegMonitors: { m: Monitor; armed: boolean }[] | null = null;
  constructor(
    readonly id: number,
    readonly kind: 1 | 2,
    readonly owner: ProcConn,
    readonly parent: Obj | null,
    readonly mem: MemoryInfo | null,
    readonly req: RequestInfo | null,
  ) {}

  get isProxy(): false {
    return false;
  }
}

/** A cap target owned by another Controller. */
export class RemoteProxy {
  revoked = false;
  readonly entries = new Set<CapEntry>();
  recvMonitors: Monitor[] | null = null;
  /** Pins: bootstrap names and cap slots of local Request objects that name it. */
  pins = 0;
  /** What a peer told of this Memory object (size, perms and backing never change), or null. */
  mem: RemoteMemory | null = null;
  constructor(
    readonly ref: ObjectRef,
    readonly key: string,
  ) {}
  get isProxy(): true {
    return true;
  }
}

export type Target = Obj | RemoteProxy;

/** Size (bytes), perms and backing of a remote Memory object, as carried on peer links. */
export interface RemoteMemory {
  size: number;
  perms: number;
  backing: 0 | 1;
}

/** One slot of a Process's capability space. */
export interface CapEntry {
  target: Target;
  proc: ProcConn;
  cid: number;
}

/** Key of an ObjectRef in proxy maps. */
export function refKey(r: ObjectRef): string {
  return `${r.controller}:${r.epoch}:${r.id}`;
}

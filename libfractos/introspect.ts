/**
 * INTROSPECT (op 0x04, docs/protocol.md "Introspection"): what a Controller tells an
 * allowed Process about its tables — Processes with their object and cap counts, and the
 * recent invocations from its fixed-size ring. This file holds the reply's layout and its
 * decoder (the Controller encodes it in controller/src/wire.cc, its ring is
 * controller/src/invocations.h); golden bytes in test/dashboard-introspect.test.ts and
 * controller/src/test/core_test.cc.
 *
 * REPLY body (little-endian):
 *   u32 controller, u32 epoch, u32 flags (bit 0: Process list truncated),
 *   u32 objects, u32 caps, u32 proxies, u32 names,
 *   u16 nProcs, u16 nRecords, u64 firstSeq, u64 nextSeq,
 *   nProcs × (u32 id, u32 pid, u32 objects, u32 caps, u8 nameLen, name),
 *   nRecords × 28-byte invocation record (INVOCATION_RECORD_BYTES).
 */
import { FractosError } from './errors.js';
import { HEADER_BYTES, readU64 } from './protocol.js';

/** Bytes of the fixed part of an INTROSPECT REPLY body. */
export const INTROSPECT_FIXED_BYTES = 48;
/** At most this many Processes are listed in one reply (flag bit 0 says more exist). */
export const MAX_INTROSPECT_PROCS = 4096;
/** Bytes of one Process entry without its name. */
export const INTROSPECT_PROC_BYTES = 17;
/** Bytes of one invocation record. */
export const INVOCATION_RECORD_BYTES = 28;
/** INTROSPECT reply flags. */
export const IntrospectFlag = { PROCS_TRUNCATED: 1 } as const;

/** One Process as INTROSPECT lists it. */
export interface IntrospectProcess {
  id: number;
  /** Kernel pid (0: tcp channel or unknown). */
  pid: number;
  name: string;
  /** Live objects (Memory and Request, derived ones included) it owns. */
  objects: number;
  /** Entries of its capability space. */
  caps: number;
}

/** One recent invocation as recorded by the Controller. */
export interface IntrospectInvocation {
  /** Sequence number at this Controller (from 0, per epoch). */
  seq: number;
  /** A local Process (`invokerId` is its id) or a peer Controller's P_INVOKE (`invokerId` is its Controller id). */
  invokerKind: 'process' | 'peer';
  invokerId: number;
  /** Controller owning the invoked Request. */
  targetController: number;
  /** Id of the invoked Request object at `targetController`. */
  targetObject: number;
  /** The local provider Process (owner of the Request); 0 when the Request is remote. */
  provider: number;
  /** Age of the record when the reply was made (ms). */
  ageMs: number;
}

/** A decoded INTROSPECT reply. */
export interface Introspection {
  controller: number;
  epoch: number;
  /** More than MAX_INTROSPECT_PROCS Processes: the list holds the first ones by id. */
  procsTruncated: boolean;
  /** Totals over the whole Controller. */
  objects: number;
  caps: number;
  proxies: number;
  names: number;
  processes: IntrospectProcess[];
  invocations: IntrospectInvocation[];
  /** Seq of the first record returned (> the asked `since` when older ones were overwritten). */
  firstSeq: number;
  /** Seq the next invocation will get: ask `since = nextSeq` next time. */
  nextSeq: number;
}

/** Decode an INTROSPECT REPLY frame (header included). Errors: EPROTO (truncated or overlong). */
export function decodeIntrospect(r: Buffer): Introspection {
  const b = HEADER_BYTES;
  if (r.length < b + INTROSPECT_FIXED_BYTES) throw new FractosError('EPROTO', 'short INTROSPECT reply');
  const nProcs = r.readUInt16LE(b + 28);
  const nRec = r.readUInt16LE(b + 30);
  const processes: IntrospectProcess[] = [];
  let o = b + INTROSPECT_FIXED_BYTES;
  for (let i = 0; i < nProcs; i++) {
    if (o + INTROSPECT_PROC_BYTES > r.length) throw new FractosError('EPROTO', 'truncated INTROSPECT process entry');
    const len = r.readUInt8(o + 16);
    if (o + INTROSPECT_PROC_BYTES + len > r.length) throw new FractosError('EPROTO', 'truncated INTROSPECT process name');
    processes.push({
      id: r.readUInt32LE(o),
      pid: r.readUInt32LE(o + 4),
      objects: r.readUInt32LE(o + 8),
      caps: r.readUInt32LE(o + 12),
      name: r.toString('utf8', o + 17, o + 17 + len),
    });
    o += INTROSPECT_PROC_BYTES + len;
  }
  if (o + nRec * INVOCATION_RECORD_BYTES !== r.length) throw new FractosError('EPROTO', 'INTROSPECT reply length does not match its counts');
  const firstSeq = readU64(r, b + 32);
  const invocations: IntrospectInvocation[] = [];
  for (let i = 0; i < nRec; i++, o += INVOCATION_RECORD_BYTES) {
    invocations.push({
      seq: firstSeq + i,
      invokerKind: r.readUInt8(o) === 0 ? 'process' : 'peer',
      invokerId: r.readUInt32LE(o + 4),
      targetController: r.readUInt32LE(o + 8),
      provider: r.readUInt32LE(o + 12),
      targetObject: readU64(r, o + 16),
      ageMs: r.readUInt32LE(o + 24),
    });
  }
  return {
    controller: r.readUInt32LE(b),
    epoch: r.readUInt32LE(b + 4),
    procsTruncated: (r.readUInt32LE(b + 8) & IntrospectFlag.PROCS_TRUNCATED) !== 0,
    objects: r.readUInt32LE(b + 12),
    caps: r.readUInt32LE(b + 16),
    proxies: r.readUInt32LE(b + 20),
    names: r.readUInt32LE(b + 24),
    processes,
    invocations,
    firstSeq,
    nextSeq: readU64(r, b + 40),
  };
}

/**
 * The FractOS-TS wire protocol: one binary frame format for Process<->Controller channels
 * and Controller<->Controller links. Every op is specified in docs/protocol.md; golden
 * encodings are in test/protocol.test.ts.
 *
 * Frame = 16-byte header + body, little-endian:
 *   u32 length   total frame bytes, header included (16 .. limits.maxFrameBytes)
 *   u16 op       operation (Op)
 *   u16 flags    reserved, must be 0
 *   u32 seq      call sequence number; a REPLY carries the seq of the call it answers
 *   u16 code     REPLY only: 0 = OK, else an ERROR_CODES index; 0 elsewhere
 *   u16 reserved must be 0
 */
import { FractosError, errorCodeFromWire, withoutCode } from './errors.js';

export const HEADER_BYTES = 16;

/** Operations. Calls (Process->Controller) are 0x01..0x7e, Controller->Process 0x80..0x9f, peer 0xa0..0xcf. */
export const Op = {
  REPLY: 0x7f,
  // Process -> Controller calls
  HELLO: 0x01,
  NULL: 0x02,
  STATS: 0x03,
  INTROSPECT: 0x04,
  MEMORY_CREATE: 0x10,
  MEMORY_DIMINISH: 0x11,
  MEMORY_COPY: 0x12,
  MEMORY_STAT: 0x13,
  MEMORY_MAP: 0x14, // reply carries the region's fd (unix channels)
  REQUEST_CREATE: 0x20,
  REQUEST_DERIVE: 0x21,
  REQUEST_INVOKE: 0x22,
  /** REQUEST_INVOKE whose success REPLY wakes nobody by itself (docs/queues.md "No wake-up for nothing"). */
  REQUEST_INVOKE_QUIET: 0x23,
  CAP_REVTREE: 0x30,
  CAP_REVOKE: 0x31,
  CAP_DROP: 0x32,
  MONITOR_DELEGATE: 0x40,
  MONITOR_RECEIVE: 0x41,
  KV_PUT: 0x50,
  KV_GET: 0x51,
  DELIVER_ACK: 0x60, // one-way: credits returned
  CAP_DROP_MANY: 0x61, // one-way: drop a batch of the caller's cids
  // Controller -> Process
  DELIVER: 0x80, // one-way
  MONITOR_FIRE: 0x81, // one-way
  MEM_READ: 0x82, // call: served memory read
  MEM_WRITE: 0x83, // call: served memory write
  // Controller <-> Controller
  PEER_HELLO: 0xa0,
  P_NULL: 0xa1,
  P_INVOKE: 0xa2,
  P_DERIVE: 0xa3,
  P_REVTREE: 0xa4,
  P_REVOKE: 0xa5,
  P_DIMINISH: 0xa6,
  P_COPY: 0xa7,
  P_MEM_WRITE: 0xa9,
  P_STAT: 0xaa,
  P_MONITOR_DELEGATE: 0xab,
  P_MONITOR_FIRE: 0xac, // one-way
  P_HOLD: 0xad, // one-way
  P_REVOKED: 0xae, // one-way
  P_KV_PUT: 0xaf, // one-way
  PEER_AUTH: 0xb0, // handshake: the dialer's proof (controller/peer-auth.ts)
} as const;
export type OpCode = (typeof Op)[keyof typeof Op];

const OP_NAMES = new Map<number, string>(Object.entries(Op).map(([k, v]) => [v, k]));
/** Name of an op code, for logs and errors. */
export function opName(op: number): string {
  return OP_NAMES.get(op) ?? `0x${op.toString(16)}`;
}

/** HELLO feature bits. */
export const Feature = {
  /** DELIVER frames carry a descriptor of each local Memory cap argument (no memory_stat round trip). */
  MEMORY_DESCRIPTORS: 1,
  /**
   * A queue pair (docs/queues.md): unix Processes only; the HELLO reply carries the pair
   * memfd and two eventfds (SCM_RIGHTS) and, after the 7 u32 fields, u32 features granted
   * and u32 ring bytes.
   */
  QUEUE: 2,
} as const;

/** Memory permissions: a bitmask. */
export const Perm = { READ: 1, WRITE: 2, RW: 3 } as const;

/** Memory backings. */
export const Backing = { SHARED: 0, SERVED: 1 } as const;

/** MEMORY_CREATE flags (shared backing): the region's fd is attached; holders of any view may map the whole region. */
export const MemCreateFlag = { FD: 1, SHARE_WHOLE: 2 } as const;

/** Flags of memory_stat replies and DELIVER's Memory descriptors. */
export const MemFlag = { LOCAL: 1, SELF: 2, MAPPABLE: 4 } as const;

/** Object kinds. */
export const Kind = { MEMORY: 1, REQUEST: 2 } as const;

/** Monitor reasons carried by MONITOR_FIRE. */
export const MonitorReason = { REVOKED: 1, OWNER_FAILED: 2, DELEGATES_GONE: 3 } as const;

/** Receive-side limits; a violation closes the offending channel with EPROTO. */
export interface Limits {
  /** Largest frame accepted, header included (bytes). */
  maxFrameBytes: number;
  /** Largest immediate area of a Request: offset + length of every range (bytes). */
  maxImmBytes: number;
  /** Most cap slots in a Request (slot index < maxCapSlots). */
  maxCapSlots: number;
  /** Most entries in one Process's capability space. */
  maxCaps: number;
  /** Most deliveries to one Process not yet acknowledged (credits). */
  maxOutstandingDeliveries: number;
  /**
   * Bytes of DELIVER frames to one Process not yet acknowledged above which no further
   * DELIVER is sent until an acknowledgement (credits in bytes; one DELIVER may pass it).
   */
  maxOutstandingDeliveryBytes: number;
  /** Most invocations queued at a Controller for one Process beyond its credits; more get EAGAIN. */
  maxQueuedDeliveries: number;
  /**
   * Most bytes of invocations queued at a Controller for one provider beyond its credits
   * (`queuedDeliveryBytes` of each); more get EAGAIN.
   */
  maxQueuedDeliveryBytes: number;
  /**
   * Most bytes of invocations one invoker (a local Process, or a peer Controller for all
   * of its Processes) has queued at a Controller, over all providers; more get EAGAIN.
   */
  maxQueuedBytesPerInvoker: number;
  /**
   * Outbound backlog of one Process's channel (bytes the Controller has queued for it and
   * the kernel has not taken: REPLYs, DELIVERs, ...) above which the Controller stops
   * reading that Process until the backlog has drained.
   */
  maxOutboundBytes: number;
  /**
   * Bytes per ring of a unix Process's queue pair (docs/queues.md): a power of two in
   * [4 KiB, 64 MiB]; the most a Process can have in flight on its rings each way.
   */
  queueRingBytes: number;
}

export const DEFAULT_LIMITS: Limits = {
  maxFrameBytes: 16 * 1024 * 1024 + 4096,
  maxImmBytes: 64 * 1024,
  maxCapSlots: 64,
  maxCaps: 1 << 20,
  maxOutstandingDeliveries: 256,
  maxOutstandingDeliveryBytes: 8 * 1024 * 1024,
  maxQueuedDeliveries: 1 << 16,
  maxQueuedDeliveryBytes: 32 * 1024 * 1024,
  maxQueuedBytesPerInvoker: 8 * 1024 * 1024,
  maxOutboundBytes: 4 * 1024 * 1024,
  queueRingBytes: 1024 * 1024,
};

/** What a queued invocation counts against the queued-bytes limits: a fixed cost plus its arguments. */
export const QUEUED_DELIVERY_OVERHEAD_BYTES = 256;

/**
 * Bytes an invocation waiting for credits counts against `maxQueuedDeliveryBytes` and
 * `maxQueuedBytesPerInvoker`: QUEUED_DELIVERY_OVERHEAD_BYTES, plus 8 + length per immediate
 * range and 16 per cap argument it carries (the Request's own arguments are shared, not
 * counted).
 */
export function queuedDeliveryBytes(args: RequestArgs<unknown>): number {
  let n = QUEUED_DELIVERY_OVERHEAD_BYTES + 16 * (args.caps?.length ?? 0);
  if (args.imms) for (const r of args.imms) n += 8 + r.bytes.length;
  return n;
}

/** Data chunk of memory copies and served reads/writes (bytes). */
export const COPY_CHUNK_BYTES = 256 * 1024;
/** Chunks of one copy in flight at once. */
export const COPY_WINDOW = 8;

/** An object reference: the owner Controller, its epoch, the object id there (< 2^53). */
export interface ObjectRef {
  controller: number;
  epoch: number;
  id: number;
}
export const REF_BYTES = 16;

/** Arguments of request_create/derive/invoke: immediate ranges and cap slots. */
export interface ImmRange {
  offset: number;
  bytes: Uint8Array;
}
export interface CapArg<C = number> {
  slot: number;
  cap: C;
}
export interface RequestArgs<C = number> {
  imms?: ImmRange[];
  caps?: CapArg<C>[];
}

// ---------------------------------------------------------------------------------------
// Encoding

/** Allocate a frame with its header written; the body (bodyBytes) follows at HEADER_BYTES. */
export function allocFrame(op: number, seq: number, bodyBytes: number, code = 0): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_BYTES + bodyBytes);
  buf.writeUInt32LE(HEADER_BYTES + bodyBytes, 0);
  buf.writeUInt16LE(op, 4);
  buf.writeUInt16LE(0, 6);
  buf.writeUInt32LE(seq >>> 0, 8);
  buf.writeUInt16LE(code, 12);
  buf.writeUInt16LE(0, 14);
  return buf;
}

/** Write a u64 that is a safe integer (< 2^53). */
export function writeU64(buf: Buffer, value: number, off: number): void {
  buf.writeUInt32LE(value % 0x100000000, off);
  buf.writeUInt32LE(Math.floor(value / 0x100000000), off + 4);
}

/** Read a u64; values >= 2^53 are EPROTO. */
export function readU64(buf: Buffer, off: number): number {
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= 0x200000) throw new FractosError('EPROTO', 'u64 field beyond 2^53');
  return hi * 0x100000000 + buf.readUInt32LE(off);
}

export function writeRef(buf: Buffer, ref: ObjectRef, off: number): void {
  buf.writeUInt32LE(ref.controller, off);
  buf.writeUInt32LE(ref.epoch, off + 4);
  writeU64(buf, ref.id, off + 8);
}

export function readRef(buf: Buffer, off: number): ObjectRef {
  return { controller: buf.readUInt32LE(off), epoch: buf.readUInt32LE(off + 4), id: readU64(buf, off + 8) };
}

/** Bytes that `writeArgs` needs for args whose caps are encoded in `capBytes` bytes each. */
export function argsBytes(args: RequestArgs<unknown> | undefined, capBytes: number): number {
  if (!args) return 4;
  let n = 4 + (args.caps?.length ?? 0) * (4 + capBytes);
  if (args.imms) for (const r of args.imms) n += 8 + r.bytes.length;
  return n;
}

/**
 * Args encoding: u16 nCaps, u16 nImms, then nCaps x (u16 slot, u16 0, cap), then
 * nImms x (u32 offset, u32 length, bytes[length]). A cap is a u32 cid on channels and
 * an ObjectRef (16 bytes) on peer links. Returns the offset after the args.
 */
export function writeArgs<C>(
  buf: Buffer,
  off: number,
  args: RequestArgs<C> | undefined,
  writeCap: (buf: Buffer, cap: C, off: number) => void,
  capBytes: number,
): number {
  const caps = args?.caps;
  const imms = args?.imms;
  buf.writeUInt16LE(caps?.length ?? 0, off);
  buf.writeUInt16LE(imms?.length ?? 0, off + 2);
  off += 4;
  if (caps) {
    for (const c of caps) {
      buf.writeUInt16LE(c.slot, off);
      buf.writeUInt16LE(0, off + 2);
      writeCap(buf, c.cap, off + 4);
      off += 4 + capBytes;
    }
  }
  if (imms) {
    for (const r of imms) {
      buf.writeUInt32LE(r.offset, off);
      buf.writeUInt32LE(r.bytes.length, off + 4);
      buf.set(r.bytes, off + 8);
      off += 8 + r.bytes.length;
    }
  }
  return off;
}

export const writeCid = (buf: Buffer, cid: number, off: number): void => {
  buf.writeUInt32LE(cid, off);
};

/**
 * Decode args written by `writeArgs`, checking every count and range against the frame
 * (EPROTO on a malformed encoding) and, unless `limits` is null, against the limits
 * (ERANGE). The Controller passes null: it checks the limits when it merges the args
 * (`mergeArgs`), after the target's type (ETYPE before ERANGE). Immediate bytes are
 * views into `buf` (no copy).
 */
export function readArgs<C>(
  buf: Buffer,
  off: number,
  end: number,
  readCap: (buf: Buffer, off: number) => C,
  capBytes: number,
  limits: Limits | null,
): { args: RequestArgs<C>; end: number } {
  if (off + 4 > end) throw new FractosError('EPROTO', 'truncated args');
  const nCaps = buf.readUInt16LE(off);
  const nImms = buf.readUInt16LE(off + 2);
  off += 4;
  if (off + nCaps * (4 + capBytes) > end) throw new FractosError('EPROTO', 'truncated cap args');
  const caps: CapArg<C>[] = new Array(nCaps);
  for (let i = 0; i < nCaps; i++) {
    const slot = buf.readUInt16LE(off);
    if (limits && slot >= limits.maxCapSlots) throw new FractosError('ERANGE', `cap slot ${slot} >= ${limits.maxCapSlots}`);
    caps[i] = { slot, cap: readCap(buf, off + 4) };
    off += 4 + capBytes;
  }
  const imms: ImmRange[] = new Array(nImms);
  for (let i = 0; i < nImms; i++) {
    if (off + 8 > end) throw new FractosError('EPROTO', 'truncated immediate header');
    const o = buf.readUInt32LE(off);
    const len = buf.readUInt32LE(off + 4);
    off += 8;
    if (off + len > end) throw new FractosError('EPROTO', 'truncated immediate bytes');
    if (limits && o + len > limits.maxImmBytes) throw new FractosError('ERANGE', `immediate range ${o}+${len} > ${limits.maxImmBytes}`);
    imms[i] = { offset: o, bytes: buf.subarray(off, off + len) };
    off += len;
  }
  return { args: { caps: nCaps ? caps : undefined, imms: nImms ? imms : undefined }, end: off };
}

export const readCid = (buf: Buffer, off: number): number => buf.readUInt32LE(off);

// ---------------------------------------------------------------------------------------
// Stream framing

/** Per-link counters of frames and bytes, both ways. */
export interface LinkCounters {
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
}

/**
 * Splits a byte stream into frames. Complete frames inside one chunk are delivered as
 * views (no copy); only frames straddling chunks are reassembled. A length below the
 * header size or above `maxFrameBytes`, or a non-zero reserved field, throws EPROTO.
 */
export class FrameDecoder {
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  readonly #maxFrameBytes: number;
  /** Ops whose split frames are reassembled in one reused buffer (see the constructor). */
  readonly #scratchOps: ReadonlySet<number> | null;
  #scratch: Buffer | null = null;
  #scratchFill = 0;
  #scratchMode = false;

  /**
   * `scratchOps`: ops whose frames, when split across chunks, are reassembled into one
   * buffer reused for every such frame (no allocation, no garbage per frame). Such a frame
   * is valid only during its `onFrame` call: use only for ops whose handler consumes the
   * bytes synchronously (P_MEM_WRITE writes them into a mapping or a new frame at once).
   */
  constructor(maxFrameBytes: number, scratchOps: ReadonlySet<number> | null = null) {
    this.#maxFrameBytes = maxFrameBytes;
    this.#scratchOps = scratchOps;
  }

  /** Bytes the pending partial frame needs in all (0 while its length is not known yet). */
  #need = 0;

  /** Feed a chunk; `onFrame` is called for every complete frame, in order. */
  push(chunk: Buffer, onFrame: (frame: Buffer) => void): void {
    let buf = chunk;
    if (this.#scratchMode) {
      const scratch = this.#scratch!;
      const n = Math.min(this.#need - this.#scratchFill, chunk.length);
      chunk.copy(scratch, this.#scratchFill, 0, n);
      this.#scratchFill += n;
      if (this.#scratchFill < this.#need) return;
      const len = this.#need;
      this.#scratchMode = false;
      this.#need = 0;
      onFrame(scratch.subarray(0, len));
      if (n === chunk.length) return;
      buf = chunk.subarray(n);
    } else if (this.#pendingBytes) {
      this.#pending.push(chunk);
      this.#pendingBytes += chunk.length;
      // Reassemble only once the partial frame is complete (no quadratic re-copying).
      if (this.#need === 0 && this.#pendingBytes >= 4) {
        const head = this.#pending.length === 1 || this.#pending[0]!.length >= 4 ? this.#pending[0]! : Buffer.concat(this.#pending);
        this.#need = this.#checkLength(head.readUInt32LE(0));
      }
      if (this.#need === 0 || this.#pendingBytes < this.#need) return;
      buf = Buffer.concat(this.#pending, this.#pendingBytes);
      this.#pending = [];
      this.#pendingBytes = 0;
      this.#need = 0;
    }
    let off = 0;
    while (buf.length - off >= HEADER_BYTES) {
      const len = this.#checkLength(buf.readUInt32LE(off));
      if (buf.readUInt16LE(off + 6) !== 0 || buf.readUInt16LE(off + 14) !== 0) {
        throw new FractosError('EPROTO', 'reserved header fields must be 0');
      }
      if (buf.length - off < len) break;
      onFrame(buf.subarray(off, off + len));
      off += len;
    }
    if (off < buf.length) {
      const rest = buf.subarray(off);
      this.#need = rest.length >= 4 ? this.#checkLength(rest.readUInt32LE(0)) : 0;
      if (this.#scratchOps && rest.length >= HEADER_BYTES && this.#scratchOps.has(rest.readUInt16LE(4))) {
        if (!this.#scratch || this.#scratch.length < this.#need) this.#scratch = Buffer.allocUnsafe(this.#need);
        rest.copy(this.#scratch, 0);
        this.#scratchFill = rest.length;
        this.#scratchMode = true;
        return;
      }
      this.#pending.push(rest);
      this.#pendingBytes = rest.length;
    }
  }

  #checkLength(len: number): number {
    if (len < HEADER_BYTES || len > this.#maxFrameBytes) {
      throw new FractosError('EPROTO', `frame length ${len} outside [${HEADER_BYTES}, ${this.#maxFrameBytes}]`);
    }
    return len;
  }
}

/** Header fields of a frame. */
export function frameOp(frame: Buffer): number {
  return frame.readUInt16LE(4);
}
export function frameSeq(frame: Buffer): number {
  return frame.readUInt32LE(8);
}
export function frameCode(frame: Buffer): number {
  return frame.readUInt16LE(12);
}

/** A REPLY frame with an error code and a UTF-8 message (without a leading copy of the code: the receiver adds it). */
export function errorReply(seq: number, code: number, message: string): Buffer {
  const msg = Buffer.from(withoutCode(errorCodeFromWire(code), message).slice(0, 512), 'utf8');
  const f = allocFrame(Op.REPLY, seq, msg.length, code);
  msg.copy(f, HEADER_BYTES);
  return f;
}

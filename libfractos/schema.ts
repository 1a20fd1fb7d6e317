/**
 * Typed Request schemas: one definition per RPC, shared by the service and its clients.
 * Immediates are named fields at fixed offsets (packed in declaration order); caps are
 * named slots (index = position). A derived Request may set any subset of fields/slots
 * that are still unset (paper §3.3), so `imms()`/`caps()` accept partial values.
 */
import { FractosError } from './errors.js';
import type { CapArg, ImmRange } from './protocol.js';

/** Field types: little-endian integers, f64, fixed-size bytes, or a string of at most n UTF-8 bytes (u16 length prefix). */
export type FieldType = 'u8' | 'u16' | 'u32' | 'u64' | 'i32' | 'f64' | { bytes: number } | { str: number };

type FieldValue<T> = T extends 'u8' | 'u16' | 'u32' | 'u64' | 'i32' | 'f64' ? number : T extends { bytes: number } ? Uint8Array : string;

export type ImmValues<I extends Record<string, FieldType>> = { [K in keyof I]: FieldValue<I[K]> };
export type CapValues<C extends readonly string[]> = { [K in C[number]]: number };

/** What a handler receives: the immediate area, the delivered cids by slot (0 = unset). */
export interface Invocation {
  readonly tag: number;
  /**
   * Immediate area: every set range copied at its offset, zeros elsewhere. Built on first
   * access (reply fields sit at 32 KiB and up): prefer `view()` or a schema's `decode()`.
   */
  readonly imms: Buffer;
  /** `length` bytes of the immediate area at `offset` (zeros where unset), without building it whole. */
  view(offset: number, length: number): Buffer;
  /** Set immediate ranges, as delivered. */
  readonly ranges: readonly { offset: number; length: number }[];
  /** cid per cap slot in the receiver's space; 0 where the slot is unset. */
  readonly caps: readonly number[];
  /** Keep `cid` after the handler settles (by default every delivered cid is dropped then). */
  retain(cid: number): void;
  /**
   * What memory_stat would say of the Memory cap in `slot`, carried by the delivery when
   * the Process connected with `memoryDescriptors` (local Memory only); else undefined.
   */
  memory(slot: number): MemoryDescriptor | undefined;
}

/** A Memory cap's description (see Process.memoryStat). */
export interface MemoryDescriptor {
  /** Bytes of the view. */
  size: number;
  /** Perm bits. */
  perms: number;
  backing: 'shared' | 'served';
  /** The object lives on the Controller that answered (offsets and keys below are meaningful). */
  local: boolean;
  /** The asking Process owns it (servedKey is told). */
  self: boolean;
  /** memory_map would hand the asking Process the fd of its region (shared, local, readable, whole or shared whole, unix channel). */
  mappable: boolean;
  /** Where the view starts in its shared region (bytes). */
  regionOffset: number;
  /** The owner's key of served Memory (owner only), else 0. */
  servedKey: number;
  /** The Controller's key of the shared region (unique for the Controller's life; a cache key for memory_map), else 0. */
  regionKey: number;
}

function widthOf(t: FieldType): number {
  if (typeof t === 'string') return t === 'u8' ? 1 : t === 'u16' ? 2 : t === 'u64' || t === 'f64' ? 8 : 4;
  if ('bytes' in t) return t.bytes;
  return 2 + t.str;
}

/** FNV-1a 32-bit hash of a name, high bit cleared (high-bit tags are reserved for libfractos). */
export function tagOf(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) & 0x7fffffff;
}

export interface FieldLayout {
  name: string;
  type: FieldType;
  offset: number;
  width: number;
}

/** A typed Request definition. */
export class RequestSchema<I extends Record<string, FieldType>, C extends readonly string[]> {
  readonly tag: number;
  readonly fields: readonly FieldLayout[];
  readonly #byName: Map<string, FieldLayout>;
  readonly capNames: C;
  readonly #slot: Map<string, number>;
  /** Size of the immediate area (bytes). */
  readonly immBytes: number;

  /** First cap slot of this schema (REPLY_SLOT_BASE for reply schemas). */
  readonly slotBase: number;

  constructor(
    readonly name: string,
    imms: I,
    caps: C,
    opts: { immBase?: number; slotBase?: number } = {},
  ) {
    this.tag = tagOf(name);
    this.slotBase = opts.slotBase ?? 0;
    let off = opts.immBase ?? 0;
    const fields: FieldLayout[] = [];
    for (const [n, t] of Object.entries(imms)) {
      const w = widthOf(t);
      fields.push({ name: n, type: t, offset: off, width: w });
      off += w;
    }
    this.fields = fields;
    this.immBytes = off;
    this.#byName = new Map(fields.map((f) => [f.name, f]));
    this.capNames = caps;
    this.#slot = new Map(caps.map((c, i) => [c, this.slotBase + i]));
  }

  /** Slot index of a named cap. */
  slot(name: C[number]): number {
    return this.#slot.get(name)!;
  }

  /** Encode the given fields as immediate ranges (one per field). Errors: EINVAL, ERANGE. */
  imms(values: Partial<ImmValues<I>>): ImmRange[] {
    const out: ImmRange[] = [];
    for (const [n, v] of Object.entries(values)) {
      if (v === undefined) continue;
      const f = this.#byName.get(n);
      if (!f) throw new FractosError('EINVAL', `${this.name}: no immediate field '${n}'`);
      out.push({ offset: f.offset, bytes: encodeField(this.name, f, v) });
    }
    return out;
  }

  /** Cap arguments for the given named slots. */
  caps(values: Partial<CapValues<C>>): CapArg[] {
    const out: CapArg[] = [];
    for (const [n, cid] of Object.entries(values) as [string, number | undefined][]) {
      if (cid === undefined) continue;
      const slot = this.#slot.get(n);
      if (slot === undefined) throw new FractosError('EINVAL', `${this.name}: no cap slot '${n}'`);
      out.push({ slot, cap: cid });
    }
    return out;
  }

  /** Both, as request args. */
  args(imms: Partial<ImmValues<I>> = {}, caps: Partial<CapValues<C>> = {}): { imms: ImmRange[]; caps: CapArg[] } {
    return { imms: this.imms(imms), caps: this.caps(caps) };
  }

  /**
   * Decode an invocation: every field (zero where unset) and the cid of every slot (0 = unset).
   * Errors: EINVAL (a string's length prefix beyond the field or the set bytes, a u64 of 2^53 or more).
   */
  decode(inv: Invocation): { imms: ImmValues<I>; caps: CapValues<C> } {
    const imms: Record<string, unknown> = {};
    for (const f of this.fields) imms[f.name] = decodeField(this.name, { ...f, offset: 0 }, inv.view(f.offset, f.width));
    const caps: Record<string, number> = {};
    this.capNames.forEach((n, i) => (caps[n] = inv.caps[this.slotBase + i] ?? 0));
    return { imms: imms as ImmValues<I>, caps: caps as CapValues<C> };
  }
}

function encodeField(schema: string, f: FieldLayout, v: unknown): Buffer {
  const b = Buffer.alloc(f.width);
  const t = f.type;
  if (typeof t === 'string') {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new FractosError('EINVAL', `${schema}.${f.name}: expected a number`);
    if (t !== 'f64' && !Number.isInteger(v)) throw new FractosError('EINVAL', `${schema}.${f.name}: expected an integer`);
    switch (t) {
      case 'u8':
      case 'u16':
      case 'u32':
        if (v < 0 || v >= 2 ** (8 * f.width)) throw new FractosError('ERANGE', `${schema}.${f.name}: ${v} does not fit ${t}`);
        b.writeUIntLE(v, 0, f.width);
        break;
      case 'i32':
        if (v < -(2 ** 31) || v >= 2 ** 31) throw new FractosError('ERANGE', `${schema}.${f.name}: ${v} does not fit i32`);
        b.writeInt32LE(v, 0);
        break;
      case 'u64':
        if (v < 0 || !Number.isSafeInteger(v)) throw new FractosError('ERANGE', `${schema}.${f.name}: ${v} is not a u64 below 2^53`);
        b.writeUInt32LE(v % 0x100000000, 0);
        b.writeUInt32LE(Math.floor(v / 0x100000000), 4);
        break;
      case 'f64':
        b.writeDoubleLE(v, 0);
        break;
    }
    return b;
  }
  if ('bytes' in t) {
    if (!(v instanceof Uint8Array) || v.length > t.bytes) throw new FractosError('EINVAL', `${schema}.${f.name}: expected at most ${t.bytes} bytes`);
    b.set(v, 0);
    return b;
  }
  if (typeof v !== 'string') throw new FractosError('EINVAL', `${schema}.${f.name}: expected a string`);
  const s = Buffer.from(v, 'utf8');
  if (s.length > t.str) throw new FractosError('ERANGE', `${schema}.${f.name}: string longer than ${t.str} bytes`);
  b.writeUInt16LE(s.length, 0);
  s.copy(b, 2);
  return b.subarray(0, 2 + s.length);
}

function decodeField(schema: string, f: FieldLayout, imms: Buffer): unknown {
  const t = f.type;
  const have = imms.length - f.offset;
  if (have < f.width && !(typeof t === 'object' && 'str' in t)) {
    if (have <= 0) return typeof t === 'string' ? 0 : new Uint8Array(0);
    const tmp = Buffer.alloc(f.width);
    imms.copy(tmp, 0, f.offset);
    return decodeField(schema, { ...f, offset: 0 }, tmp);
  }
  if (typeof t === 'string') {
    switch (t) {
      case 'u8':
        return imms.readUInt8(f.offset);
      case 'u16':
        return imms.readUInt16LE(f.offset);
      case 'u32':
        return imms.readUInt32LE(f.offset);
      case 'i32':
        return imms.readInt32LE(f.offset);
      case 'f64':
        return imms.readDoubleLE(f.offset);
      case 'u64': {
        const hi = imms.readUInt32LE(f.offset + 4);
        if (hi >= 0x200000) throw new FractosError('EINVAL', `${schema}.${f.name}: u64 of 2^53 or more`);
        return hi * 0x100000000 + imms.readUInt32LE(f.offset);
      }
    }
  }
  if ('bytes' in t) return imms.subarray(f.offset, f.offset + f.width);
  if (have < 2) return '';
  const len = imms.readUInt16LE(f.offset);
  if (len > t.str || f.offset + 2 + len > imms.length) throw new FractosError('EINVAL', `${schema}.${f.name}: bad string length ${len}`);
  return imms.toString('utf8', f.offset + 2, f.offset + 2 + len);
}

/**
 * Where reply schemas put their fields: continuation results land above the arguments a
 * continuation Request was created with, so that any Request can serve as a continuation
 * without EARGSET (immediates at 32 KiB and up, cap slots 32 and up).
 */
export const REPLY_IMM_BASE = 0x8000;
export const REPLY_SLOT_BASE = 32;

/**
 * Define a Request schema.
 * @example const Read = defineRequest('blockdev.read', { offset: 'u64', length: 'u32' }, ['buffer', 'onSuccess', 'onError'] as const);
 */
export function defineRequest<I extends Record<string, FieldType>, const C extends readonly string[]>(
  name: string,
  imms: I,
  caps: C,
): RequestSchema<I, C> {
  return new RequestSchema(name, imms, caps);
}

/**
 * Define a reply schema: the arguments a service adds when it invokes a continuation.
 * Fields start at REPLY_IMM_BASE and cap slots at REPLY_SLOT_BASE (see there).
 */
export function defineReply<I extends Record<string, FieldType>, const C extends readonly string[]>(
  name: string,
  imms: I,
  caps: C,
): RequestSchema<I, C> {
  return new RequestSchema(name, imms, caps, { immBase: REPLY_IMM_BASE, slotBase: REPLY_SLOT_BASE });
}

/** The error continuation every service invokes on failure: a code (ERROR_CODES index) and a message. */
export const ErrorReply = defineReply('fractos.error', { code: 'u16', message: { str: 240 } }, [] as const);

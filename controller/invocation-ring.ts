/**
 * The Controller's record of recent invocations for introspection (INTROSPECT,
 * docs/protocol.md): a fixed-size ring of typed arrays, written on every REQUEST_INVOKE /
 * P_INVOKE with no allocation (seven array stores), read only when a Process allowed to
 * introspect asks. The oldest records are overwritten: a reader that falls more than
 * `capacity` invocations behind sees the gap (`firstSeq` past what it asked for). The
 * record's wire layout is decoded by libfractos/introspect.ts.
 */

/** Who made an invocation: a local Process, or a peer Controller (its P_INVOKE). */
export const InvokerKind = { PROCESS: 0, PEER: 1 } as const;

/** Default ring size (records; 28 bytes each on the wire, 36 in memory). */
export const DEFAULT_INVOCATION_RING = 1024;

export class InvocationRing {
  readonly capacity: number;
  readonly #kind: Uint8Array;
  readonly #invoker: Uint32Array;
  readonly #targetCtl: Uint32Array;
  readonly #provider: Uint32Array;
  readonly #object: Float64Array;
  readonly #at: Float64Array;
  /** Records ever written (the next record's seq). */
  #next = 0;

  /** `capacity`: records kept (1..65535, the wire's u16 count). Errors: RangeError. */
  constructor(capacity = DEFAULT_INVOCATION_RING) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 0xffff) throw new RangeError(`invocation ring capacity must be 1..65535, got ${capacity}`);
    this.capacity = capacity;
    this.#kind = new Uint8Array(capacity);
    this.#invoker = new Uint32Array(capacity);
    this.#targetCtl = new Uint32Array(capacity);
    this.#provider = new Uint32Array(capacity);
    this.#object = new Float64Array(capacity);
    this.#at = new Float64Array(capacity);
  }

  /** Seq of the next record (= records written so far). */
  get nextSeq(): number {
    return this.#next;
  }

  /** Record one invocation (no allocation). `provider` 0 when the Request is remote. */
  record(kind: number, invoker: number, targetController: number, targetObject: number, provider: number): void {
    const i = this.#next % this.capacity;
    this.#kind[i] = kind;
    this.#invoker[i] = invoker;
    this.#targetCtl[i] = targetController;
    this.#object[i] = targetObject;
    this.#provider[i] = provider;
    this.#at[i] = performance.now();
    this.#next++;
  }

  /** First seq still held that is ≥ `since`, and the number of records from there on (at most `max`). */
  window(since: number, max: number): { first: number; count: number } {
    const oldest = Math.max(0, this.#next - this.capacity);
    const first = Math.min(Math.max(since, oldest), this.#next);
    return { first, count: Math.min(this.#next - first, max) };
  }

  /**
   * Write record `seq` (held: within `window`) as 28 bytes at `o` of `buf`: u8 invoker kind,
   * u8 0, u16 0, u32 invoker id, u32 target controller, u32 provider, u64 target object,
   * u32 age (ms, saturated).
   */
  encode(seq: number, buf: Buffer, o: number, now: number): void {
    const i = seq % this.capacity;
    buf.writeUInt8(this.#kind[i]!, o);
    buf.writeUInt8(0, o + 1);
    buf.writeUInt16LE(0, o + 2);
    buf.writeUInt32LE(this.#invoker[i]!, o + 4);
    buf.writeUInt32LE(this.#targetCtl[i]!, o + 8);
    buf.writeUInt32LE(this.#provider[i]!, o + 12);
    const obj = this.#object[i]!;
    buf.writeUInt32LE(obj % 0x100000000, o + 16);
    buf.writeUInt32LE(Math.floor(obj / 0x100000000), o + 20);
    buf.writeUInt32LE(Math.min(0xffffffff, Math.max(0, Math.round(now - this.#at[i]!))), o + 24);
  }
}

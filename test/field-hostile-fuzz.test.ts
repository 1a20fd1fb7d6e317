/**
 * A seeded random-frame fuzzer of the Controller's frame decoders (issue #8, "Tests": a
 * fuzz target runs the frame decoders for a fixed time in CI).
 *
 * Process channels: raw unix and tcp connections that say HELLO (or garbage first) and then
 * send frames built from the real op codes: valid frames made with the real encoders,
 * mutated (bytes flipped, bodies cut or extended, length prefixes random or huge, flags
 * set, random seqs, random cids and cids the connection really holds), unknown ops, REPLYs
 * to nothing, frames split at random points. Peer links: raw tcp connections that send
 * random and mutated PEER_HELLO / PEER_AUTH frames and peer ops, which must all be refused
 * before authentication.
 *
 * Oracles: no uncaught exception or unhandled rejection in this process (the Controller
 * runs in it) and no 'internal error' line in its log; every REPLY answers a seq the
 * connection sent and carries a known code; an EPROTO REPLY is followed by the close of
 * that channel only; a well-behaved client keeps getting correct answers from an echo
 * service during and after the fuzzing; no peer link is ever made and no name appears
 * from the peer side; once the fuzz connections close, the Controller's tables
 * (Controller.tableSizes) are back to their baseline. A last run fuzzes a Controller started
 * as its own OS process, which must still be running and answering afterwards.
 *
 * Budget: FRACTOS_FUZZ_MS (default 20000 ms over all tests of this file); seed:
 * FRACTOS_FUZZ_SEED (default: 1, so that CI is reproducible; `random` draws one), printed by every test so a failure reproduces with
 * `FRACTOS_FUZZ_SEED=<seed> npx ava dist/test/field-hostile-fuzz.test.js`. See docs/core.md.
 */
import test, { type ExecutionContext } from 'ava';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, defineReply, defineRequest, type Process } from '../libfractos/index.js';
import { ERROR_CODES, FractosError, errorCodeFromWire } from '../libfractos/errors.js';
import {
  Feature, FrameDecoder, HEADER_BYTES, Op, REF_BYTES, allocFrame, opName, argsBytes, frameCode, frameOp, frameSeq, writeArgs, writeCid, writeRef, writeU64,
  type RequestArgs,
} from '../libfractos/protocol.js';
import { checkPeerProof, encodePeerAuth, encodePeerHello, peerProof } from '../controller/peer-auth.js';
import { spawnFractos, tempDir } from './helpers/spawn.js';

const TOTAL_MS = Number(process.env.FRACTOS_FUZZ_MS ?? 20_000);
const SEED_ENV = process.env.FRACTOS_FUZZ_SEED ?? '1';
const SEED = SEED_ENV === 'random' ? randomBytes(4).readUInt32LE(0) : Number(SEED_ENV) >>> 0;
/** FRACTOS_FUZZ_ONLY=N[,M...]: run only these connections of each phase (replay), in order. */
const ONLY = process.env.FRACTOS_FUZZ_ONLY ? process.env.FRACTOS_FUZZ_ONLY.split(',').map(Number) : null;
/** FRACTOS_FUZZ_TRACE=1: print every frame written and received (hex) on stderr. */
const TRACE = process.env.FRACTOS_FUZZ_TRACE === '1';
const SECRET = 'field-hostile-fuzz cluster secret';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------
// Seeded randomness (mulberry32): the same seed gives the same frames.

export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)]!;
  }
  u32(): number {
    return this.int(0x100000000);
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  /** A small or boundary integer, as found in lengths, counts and offsets. */
  edgy(): number {
    return this.pick([0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 63, 64, 255, 256, 4095, 4096, 65535, 65536, 0x7fffffff, 0x80000000, 0xffffffff, this.u32(), this.int(64)]);
  }
}

// ---------------------------------------------------------------------------------------
// Frames

const PROC_OPS = [Op.NULL, Op.STATS, Op.MEMORY_CREATE, Op.MEMORY_DIMINISH, Op.MEMORY_COPY, Op.MEMORY_STAT, Op.MEMORY_MAP, Op.REQUEST_CREATE, Op.REQUEST_DERIVE,
  Op.REQUEST_INVOKE, Op.REQUEST_INVOKE_QUIET, Op.CAP_REVTREE, Op.CAP_REVOKE, Op.CAP_DROP, Op.MONITOR_DELEGATE, Op.MONITOR_RECEIVE, Op.KV_PUT, Op.KV_GET, Op.DELIVER_ACK,
  Op.CAP_DROP_MANY] as const;
const OTHER_OPS = [Op.REPLY, Op.HELLO, Op.DELIVER, Op.MONITOR_FIRE, Op.MEM_READ, Op.MEM_WRITE, Op.PEER_HELLO, Op.PEER_AUTH, Op.P_NULL, Op.P_INVOKE,
  Op.P_KV_PUT, Op.P_HOLD, Op.P_REVOKE, 0x00, 0x7e, 0xffff] as const;
const PEER_OPS = [Op.P_NULL, Op.P_INVOKE, Op.P_DERIVE, Op.P_REVTREE, Op.P_REVOKE, Op.P_DIMINISH, Op.P_COPY, Op.P_MEM_WRITE, Op.P_STAT,
  Op.P_MONITOR_DELEGATE, Op.P_MONITOR_FIRE, Op.P_HOLD, Op.P_REVOKED, Op.P_KV_PUT, Op.REPLY, Op.HELLO] as const;

/** A frame with `body` after a header of `op` and `seq`. */
function frame(op: number, seq: number, body: Buffer): Buffer {
  const f = allocFrame(op, seq, body.length);
  body.copy(f, HEADER_BYTES);
  return f;
}

export function helloFrame(name: string, features = 0, seq = 1): Buffer {
  const n = Buffer.from(name);
  const f = allocFrame(Op.HELLO, seq, 8 + n.length);
  f.writeUInt32LE(process.pid, 16);
  f.writeUInt32LE(features, 20);
  n.copy(f, 24);
  return f;
}

/** What a fuzz channel knows: cids it was given, names. */
interface Knowledge {
  cids: number[];
  names: string[];
}

function randomArgs(r: Rng, k: Knowledge, capBytes: 4 | 16, ref: () => Buffer): { args: RequestArgs<Buffer | number>; cap: (b: Buffer, c: Buffer | number, o: number) => void } {
  const caps = [];
  const imms = [];
  for (let i = r.int(3); i > 0; i--) caps.push({ slot: r.chance(0.8) ? r.int(8) : r.edgy() & 0xffff, cap: capBytes === 4 ? cid(r, k) : ref() });
  for (let i = r.int(3); i > 0; i--) imms.push({ offset: r.chance(0.8) ? r.int(64) : r.edgy(), bytes: r.bytes(r.int(24)) });
  const cap = (b: Buffer, c: Buffer | number, o: number): void => {
    if (typeof c === 'number') writeCid(b, c, o);
    else c.copy(b, o);
  };
  return { args: { caps: caps.length ? caps : undefined, imms: imms.length ? imms : undefined }, cap };
}

function cid(r: Rng, k: Knowledge): number {
  if (k.cids.length && r.chance(0.6)) return r.pick(k.cids);
  return r.chance(0.7) ? 1 + r.int(24) : r.edgy();
}

/** A valid-looking body of a Process call (the real encodings, random fields). */
function procBody(r: Rng, op: number, k: Knowledge): Buffer {
  const c = (): number => cid(r, k);
  const u32 = (...v: number[]): Buffer => {
    const b = Buffer.alloc(4 * v.length);
    v.forEach((x, i) => b.writeUInt32LE(x >>> 0, 4 * i));
    return b;
  };
  switch (op) {
    case Op.MEMORY_CREATE: {
      // backing, perms, flags (1 says an fd is attached: none ever is on a raw channel), region id
      const b = Buffer.alloc(r.chance(0.9) ? 32 : 32 + r.int(16));
      b.writeUInt8(r.chance(0.8) ? 1 : r.int(4), 0);
      b.writeUInt8(r.int(4), 1);
      b.writeUInt8(r.chance(0.7) ? 0 : r.int(4), 2);
      b.writeUInt32LE(r.chance(0.8) ? r.int(4) : r.u32(), 4);
      writeU64(b, r.chance(0.8) ? r.int(4096) : r.edgy(), 8);
      writeU64(b, r.chance(0.8) ? r.int(65536) : r.edgy(), 16);
      writeU64(b, r.int(1000), 24);
      return b;
    }
    case Op.MEMORY_DIMINISH: {
      const b = Buffer.alloc(24);
      b.writeUInt32LE(c(), 0);
      b.writeUInt8(r.int(4), 4);
      writeU64(b, r.chance(0.8) ? r.int(4096) : r.edgy(), 8);
      writeU64(b, r.chance(0.8) ? r.int(8192) : r.edgy(), 16);
      return b;
    }
    case Op.MEMORY_COPY:
    case Op.MONITOR_DELEGATE:
    case Op.MONITOR_RECEIVE:
      return u32(c(), op === Op.MEMORY_COPY ? c() : r.u32());
    case Op.MEMORY_STAT:
    case Op.MEMORY_MAP:
    case Op.CAP_REVTREE:
    case Op.CAP_REVOKE:
    case Op.CAP_DROP:
      return u32(c());
    case Op.REQUEST_CREATE:
    case Op.REQUEST_DERIVE:
    case Op.REQUEST_INVOKE:
    case Op.REQUEST_INVOKE_QUIET: {
      const { args, cap } = randomArgs(r, k, 4, () => Buffer.alloc(0));
      const b = Buffer.alloc(4 + argsBytes(args, 4));
      b.writeUInt32LE(op === Op.REQUEST_CREATE ? (r.chance(0.5) ? Echo.tag : r.u32()) : c(), 0);
      writeArgs(b, 4, args, cap, 4);
      return b;
    }
    case Op.KV_PUT: {
      const name = r.chance(0.2) ? 'echo' : `fz${r.int(8)}`;
      return Buffer.concat([u32(c()), Buffer.from(name)]);
    }
    case Op.KV_GET:
      return Buffer.from(r.chance(0.5) ? 'echo' : r.chance(0.5) ? `fz${r.int(8)}` : r.bytes(r.int(8)).toString('latin1'));
    case Op.DELIVER_ACK:
      return u32(r.chance(0.7) ? r.int(3) : r.edgy());
    case Op.CAP_DROP_MANY:
      return u32(...Array.from({ length: r.int(5) }, c));
    default:
      return Buffer.alloc(0);
  }
}

/**
 * Mutate a frame: flip bytes, cut or extend the body (length kept consistent), set flags or
 * reserved bits, or write a random length prefix (then `whole` is false: the Controller
 * waits for bytes that never come, or refuses the length).
 */
function mutate(r: Rng, f: Buffer): { f: Buffer; whole: boolean } {
  switch (r.int(7)) {
    case 0:
    case 1: {
      const g = Buffer.from(f);
      for (let i = 1 + r.int(4); i > 0 && g.length > HEADER_BYTES; i--) g[HEADER_BYTES + r.int(g.length - HEADER_BYTES)] = r.int(256);
      return { f: g, whole: true };
    }
    case 2: {
      const keep = HEADER_BYTES + r.int(f.length - HEADER_BYTES + 1);
      const g = Buffer.from(f.subarray(0, keep));
      g.writeUInt32LE(keep, 0);
      return { f: g, whole: true };
    }
    case 3: {
      const g = Buffer.concat([f, r.bytes(1 + r.int(40))]);
      g.writeUInt32LE(g.length, 0);
      return { f: g, whole: true };
    }
    case 4: {
      const g = Buffer.from(f);
      g.writeUInt16LE(1 + r.int(0xffff), r.chance(0.5) ? 6 : 14);
      return { f: g, whole: true };
    }
    case 5: {
      // A random or huge length prefix: refused (EPROTO) or waited for.
      const g = Buffer.from(f);
      const len = r.pick([0, 1, 15, g.length + 1 + r.int(64), 0xffffffff, 16 * 1024 * 1024 + 4097, r.u32()]);
      g.writeUInt32LE(len, 0);
      return { f: g, whole: len === g.length };
    }
    default: {
      const g = Buffer.from(f);
      g.writeUInt16LE(r.chance(0.5) ? r.pick(OTHER_OPS) : r.int(0x10000), 4);
      return { f: g, whole: true };
    }
  }
}

// ---------------------------------------------------------------------------------------
// A raw fuzz connection

/** A failed oracle, with what reproduces it. */
type Fail = (msg: string) => void;

const CONTROLLER_OPS: ReadonlySet<number> = new Set([Op.REPLY, Op.DELIVER, Op.MONITOR_FIRE, Op.MEM_READ, Op.MEM_WRITE]);

class RawConn {
  readonly s: net.Socket;
  readonly sent = new Set<number>();
  readonly k: Knowledge = { cids: [], names: [] };
  closed = false;
  /** The Controller closed its side (end or reset). */
  ended = false;
  /** An EPROTO REPLY came: the channel must close. */
  eproto = false;
  /** All bytes written formed whole frames (a NULL probe then gets an answer). */
  whole = true;
  frames = 0;
  delivered = 0;
  /** Code of the last REPLY to each seq. */
  readonly codes = new Map<number, number>();
  #buf: Buffer = Buffer.alloc(0);
  readonly #waiting = new Map<number, (f: Buffer) => void>();
  readonly #calls = new Map<number, number>();

  /** Draws for reactions to what the Controller sends (apart from `r`, so that the frames sent do not depend on timing). */
  readonly #rr: Rng;

  constructor(path: string | { host: string; port: number }, readonly label: string, readonly fail: Fail, readonly r: Rng, readonly onFrame?: (f: Buffer) => void) {
    this.#rr = new Rng(r.u32());
    this.s = typeof path === 'string' ? net.createConnection(path) : net.createConnection(path.port, path.host);
    this.s.on('data', (d: Buffer) => this.#data(d));
    this.s.on('end', () => (this.ended = true));
    this.s.on('close', () => {
      this.closed = true;
      this.ended = true;
    });
    this.s.on('error', () => {});
  }

  connected(): Promise<void> {
    return new Promise((res) => {
      if (!this.s.connecting) res();
      else {
        this.s.once('connect', () => res());
        this.s.once('close', () => res());
      }
    });
  }

  #data(d: Buffer): void {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, d]) : d;
    while (this.#buf.length >= 4) {
      const len = this.#buf.readUInt32LE(0);
      if (len < HEADER_BYTES) return this.fail(`${this.label}: Controller sent a frame of length ${len}`);
      if (this.#buf.length < len) return;
      const f = Buffer.from(this.#buf.subarray(0, len));
      this.#buf = this.#buf.subarray(len);
      this.frames++;
      this.#frame(f);
    }
  }

  #frame(f: Buffer): void {
    if (TRACE) process.stderr.write(`${this.label} < ${f.subarray(0, 64).toString('hex')}${f.length > 64 ? `... (${f.length} bytes)` : ''}\n`);
    if (this.onFrame) return this.onFrame(f);
    const op = frameOp(f);
    if (!CONTROLLER_OPS.has(op)) return this.fail(`${this.label}: Controller sent op 0x${op.toString(16)} on a Process channel`);
    if (op === Op.REPLY) {
      const seq = frameSeq(f);
      const code = frameCode(f);
      if (code >= ERROR_CODES.length) this.fail(`${this.label}: REPLY with unknown code ${code}`);
      // Once a frame was not whole, the Controller parses later bytes from a shifted offset: any seq.
      if (seq !== 0 && this.whole && !this.sent.has(seq)) this.fail(`${this.label}: REPLY to seq ${seq}, never sent`);
      if (code === 0 && f.length === HEADER_BYTES + 4 && this.#calls.has(seq)) this.k.cids.push(f.readUInt32LE(16));
      if (code !== 0 && errorCodeFromWire(code) === 'EPROTO') this.eproto = true;
      this.codes.set(seq, code);
      this.#waiting.get(seq)?.(f);
      this.#waiting.delete(seq);
      return;
    }
    if (op === Op.DELIVER) {
      this.delivered++;
      // Caps delivered become this channel's cids.
      if (f.length >= 24) {
        const n = f.readUInt16LE(20);
        for (let i = 0, o = 24; i < n && o + 8 <= f.length; i++, o += 8) this.k.cids.push(f.readUInt32LE(o + 4));
      }
      if (this.#rr.chance(0.7)) {
        this.react(ackFrame(this.delivered));
        this.delivered = 0;
      }
      return;
    }
    if ((op === Op.MEM_READ || op === Op.MEM_WRITE) && this.#rr.chance(0.6)) {
      // Answer a served access: right, or with a wrong length.
      const len = op === Op.MEM_READ && f.length >= 36 ? f.readUInt32LE(32) : 0;
      const n = this.#rr.chance(0.8) ? Math.min(len, 1 << 20) : this.#rr.int(64);
      this.react(frame(Op.REPLY, frameSeq(f), Buffer.alloc(op === Op.MEM_READ ? n : 0)));
    }
  }

  /** A frame is being written in pieces (reactions wait, or they would land inside it). */
  splitting = false;
  #deferred: Buffer[] = [];

  /** Write a whole frame in reaction to the Controller's, after any frame being written in pieces. */
  react(b: Buffer): void {
    if (this.splitting) this.#deferred.push(b);
    else this.write(b, true);
  }

  /** The frame written in pieces is complete: write the reactions that waited. */
  splitDone(): void {
    this.splitting = false;
    const d = this.#deferred;
    this.#deferred = [];
    for (const b of d) this.write(b, true);
  }

  write(b: Buffer, whole: boolean): void {
    if (this.closed) return;
    if (!whole) this.whole = false;
    if (b.length >= 12) this.sent.add(b.readUInt32LE(8));
    if (TRACE) process.stderr.write(`${this.label} > ${b.subarray(0, 96).toString('hex')}${b.length > 96 ? `... (${b.length} bytes)` : ''}\n`);
    this.s.write(b);
  }

  /** Send a call that answers with a cid when it succeeds (REPLY of 4 bytes). */
  noteCall(seq: number, op: number): void {
    if (op === Op.MEMORY_CREATE || op === Op.MEMORY_DIMINISH || op === Op.REQUEST_CREATE || op === Op.REQUEST_DERIVE || op === Op.CAP_REVTREE || op === Op.KV_GET) this.#calls.set(seq, op);
  }

  /** Wait for the REPLY of `seq` (or the close): the frame, or null. */
  reply(seq: number, ms: number): Promise<Buffer | null> {
    return new Promise((res) => {
      const t = setTimeout(() => res(null), ms);
      this.#waiting.set(seq, (f) => {
        clearTimeout(t);
        res(f);
      });
      this.s.once('close', () => {
        clearTimeout(t);
        res(null);
      });
    });
  }

  destroy(): void {
    this.s.destroy();
  }
}

function ackFrame(n: number): Buffer {
  const f = allocFrame(Op.DELIVER_ACK, 0, 4);
  f.writeUInt32LE(n, 16);
  return f;
}

/** Write `b` in random pieces (frames split across chunks and writes). */
async function writeSplit(c: RawConn, b: Buffer, whole: boolean): Promise<void> {
  if (b.length >= 12) c.sent.add(b.readUInt32LE(8));
  if (c.r.chance(0.7)) return c.write(b, whole);
  let off = 0;
  c.splitting = true;
  while (off < b.length && !c.closed) {
    const n = 1 + c.r.int(b.length - off);
    c.write(b.subarray(off, off + n), whole);
    off += n;
    if (c.r.chance(0.3)) await sleep(1);
  }
  c.splitDone();
}

// ---------------------------------------------------------------------------------------
// The well-behaved echo pair

const Echo = defineRequest('fuzz.echo', { x: 'u32' }, ['onSuccess', 'onError'] as const);
const EchoReply = defineReply('fuzz.echo.reply', { y: 'u32' }, [] as const);

interface EchoLoop {
  ok: () => number;
  /** Stop calling (resolves once the call in flight is answered and its continuations are gone). */
  pause: () => Promise<void>;
  resume: () => void;
  stop: () => Promise<void>;
  procs: Process[];
}

/** A provider serving Echo (y = x xor 0x5a5a5a5a) and a client calling it in a loop; a wrong or late answer fails. */
async function echoLoop(addr: string, fail: Fail): Promise<EchoLoop> {
  const b = await connect(addr, { name: 'echo-provider' });
  const a = await connect(addr, { name: 'echo-client' });
  b.serve(Echo, async ({ imms, caps }) => {
    await b.invoke(caps.onSuccess, EchoReply, { y: (imms.x ^ 0x5a5a5a5a) >>> 0 });
  });
  b.on('handlerError', () => {}); // fuzz invocations of echo without continuations
  const echo = await b.createRequest(Echo);
  await b.kvPut('echo', echo);
  const ea = await a.kvGet('echo');
  let ok = 0;
  let running = true;
  let paused = false;
  const gate: { idle: (() => void) | null; wake: (() => void) | null } = { idle: null, wake: null };
  let x = 1;
  const loop = (async () => {
    while (running) {
      if (paused) {
        gate.idle?.();
        await new Promise<void>((r) => (gate.wake = r));
        continue;
      }
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      try {
        const inv = await a.rpc(ea, Echo, { x }, {}, { timeoutMs: 10_000 });
        const y = EchoReply.decode(inv).imms.y;
        if (y !== ((x ^ 0x5a5a5a5a) >>> 0)) fail(`echo of ${x} answered ${y}`);
        else ok++;
      } catch (err) {
        fail(`echo of ${x} failed: ${(err as Error).message}`);
        await sleep(100);
      }
      await sleep(2);
    }
  })();
  return {
    ok: () => ok,
    procs: [a, b],
    pause: async () => {
      paused = true;
      await new Promise<void>((r) => (gate.idle = r));
      gate.idle = null;
      await b.nullOp(); // the rpc's revokes and drops (not awaited by rpc) are done by now
      await a.nullOp();
    },
    resume: () => {
      paused = false;
      gate.wake?.();
    },
    stop: async () => {
      running = false;
      paused = false;
      gate.wake?.();
      await loop;
    },
  };
}

// ---------------------------------------------------------------------------------------
// Fuzz drivers

/** One Process-channel connection: HELLO (or garbage), then `n` frames, then a NULL probe. */
async function fuzzProcChannel(r: Rng, target: string | { host: string; port: number }, label: string, fail: Fail, conns: RawConn[]): Promise<void> {
  const c = new RawConn(target, label, fail, r);
  conns.push(c);
  await c.connected();
  if (c.closed) return;
  const garbage = r.chance(0.1);
  if (garbage) {
    // Garbage before HELLO: a frame of another op, random bytes, or a bad length.
    const g = r.pick([() => r.bytes(1 + r.int(64)), () => frame(r.pick(OTHER_OPS), r.u32(), r.bytes(r.int(40))), () => mutate(r, helloFrame('g')).f]);
    await writeSplit(c, g(), false);
  }
  // Random features, but never QUEUE (bit 2): a Process that asks for a queue pair gets its
  // replies on ring 1, which this raw client does not read (test/queue-stack.test.ts fuzzes rings).
  const hello = helloFrame(`fuzz-${label}`, r.chance(0.5) ? 1 : r.chance(0.5) ? 0 : (r.u32() & ~Feature.QUEUE) >>> 0, 1 + r.int(3));
  const h = r.chance(0.05) ? mutate(r, hello) : { f: hello, whole: true };
  await writeSplit(c, h.f, h.whole);
  let seq = 10;
  let malformed: { seq: number; what: string } | null = null;
  const used = new Set<number>([hello.readUInt32LE(8)]);
  const n = 1 + r.int(30);
  for (let i = 0; i < n && !c.closed; i++) {
    const op = r.chance(0.9) ? r.pick(PROC_OPS) : r.pick(OTHER_OPS);
    const s = r.chance(0.9) ? ++seq : r.chance(0.5) ? r.edgy() : seq;
    let f = frame(op, s, procBody(r, op, c.k));
    let whole = true;
    if (r.chance(0.35)) ({ f, whole } = mutate(r, f));
    c.noteCall(s, op);
    const fresh = !used.has(s);
    used.add(s);
    if (whole && malformed === null && mustRefuse(f)) malformed = { seq: fresh ? s : -1, what: `${opName(f.readUInt16LE(4))} of ${f.length - HEADER_BYTES} body bytes, flags ${f.readUInt16LE(6)}/${f.readUInt16LE(14)}` };
    await writeSplit(c, f, whole);
    if (r.chance(0.4)) await sleep(r.int(4));
    if (!whole) break; // the Controller waits for the rest of this frame (or refused its length)
  }
  // A malformed frame (short body, unknown op, flags) closes the channel, answered EPROTO if at all.
  if (c.whole && malformed) {
    const m = malformed as { seq: number; what: string };
    if (!(await until(() => c.ended, 3000))) fail(`${label}: ${m.what} did not close the channel`);
    const code = c.codes.get(m.seq);
    if (code !== undefined && errorCodeFromWire(code) !== 'EPROTO') fail(`${label}: ${m.what} answered ${errorCodeFromWire(code)}, not EPROTO`);
  }
  // A NULL probe: a channel fed whole frames answers it unless it was closed.
  if (c.whole && !c.closed && !c.eproto && !malformed) {
    const probe = 0x7ffffff0 + r.int(8);
    c.write(allocFrame(Op.NULL, probe, 0), true);
    const got = await c.reply(probe, 10_000);
    if (!got && !c.ended) fail(`${label}: no answer to a NULL probe on a channel fed whole frames (seed ${SEED})`);
  }
  if (r.chance(0.8)) c.destroy(); // else left open until the end
}

/** Shortest body (bytes) of each Process call; shorter is EPROTO (docs/protocol.md). */
const MIN_BODY: ReadonlyMap<number, number> = new Map<number, number>([
  [Op.MEMORY_CREATE, 32], [Op.MEMORY_DIMINISH, 24], [Op.MEMORY_COPY, 8], [Op.MEMORY_STAT, 4], [Op.MEMORY_MAP, 4], [Op.REQUEST_CREATE, 8], [Op.REQUEST_DERIVE, 8],
  [Op.REQUEST_INVOKE, 8], [Op.REQUEST_INVOKE_QUIET, 8], [Op.CAP_REVTREE, 4], [Op.CAP_REVOKE, 4], [Op.CAP_DROP, 4], [Op.MONITOR_DELEGATE, 8], [Op.MONITOR_RECEIVE, 8],
  [Op.KV_PUT, 5], [Op.KV_GET, 1], [Op.DELIVER_ACK, 4], [Op.CAP_DROP_MANY, 0], [Op.NULL, 0], [Op.STATS, 0],
]);

/** Whether a whole frame on an open Process channel must close it: flags set, an op that is no call, a body too short. */
function mustRefuse(f: Buffer): boolean {
  const op = f.readUInt16LE(4);
  const body = f.length - HEADER_BYTES;
  if (f.readUInt16LE(6) !== 0 || f.readUInt16LE(14) !== 0) return true;
  if (op === Op.REPLY) return false; // may answer a served access of this channel's
  const min = MIN_BODY.get(op);
  return min === undefined || body < min || (op === Op.CAP_DROP_MANY && body % 4 !== 0);
}

/** One peer connection: PEER_HELLO variants, then more frames; nothing must be accepted. */
async function fuzzPeerLink(r: Rng, target: { host: string; port: number } | string, label: string, fail: Fail, conns: RawConn[], ctl: { epoch: number }): Promise<void> {
  let hellos = 0;
  let acceptorHello: Buffer | null = null;
  const c: RawConn = new RawConn(target, label, fail, r, (f) => {
    if (frameOp(f) !== Op.PEER_HELLO || ++hellos > 1) fail(`${label}: unauthenticated peer got op 0x${frameOp(f).toString(16)} (hello #${hellos})`);
    acceptorHello = f;
  });
  conns.push(c);
  await c.connected();
  const ref = (): Buffer => {
    const b = Buffer.alloc(REF_BYTES);
    writeRef(b, { controller: r.chance(0.8) ? 1 : r.int(4), epoch: r.chance(0.8) ? ctl.epoch : r.int(4), id: 1 + r.int(40) }, 0);
    return b;
  };
  const id = r.pick([2, 2, 2, 1, 3, 0, r.u32()]);
  const h = encodePeerHello(id, r.chance(0.7) ? 1 : r.u32(), r.bytes(32), r.chance(0.1) ? r.bytes(32) : null);
  const first = r.chance(0.3) ? mutate(r, h).f : h;
  if (first.readUInt16LE(4) === Op.HELLO) first.writeUInt16LE(Op.PEER_HELLO, 4); // a HELLO makes a Process channel, not a peer
  await writeSplit(c, first, true);
  await sleep(r.int(5));
  for (let i = r.int(6); i >= 0 && !c.closed; i--) {
    let f: Buffer;
    const k = r.int(5);
    if (k === 0) f = encodePeerAuth(r.bytes(32));
    else if (k === 1 && acceptorHello) f = encodePeerAuth((acceptorHello as Buffer).subarray(56, 88)); // its own proof reflected
    else if (k === 2) f = mutate(r, encodePeerAuth(r.bytes(32))).f;
    else {
      const op = r.pick(PEER_OPS);
      const body = op === Op.P_KV_PUT ? Buffer.concat([Buffer.alloc(16), Buffer.from([2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), ref(), Buffer.from('evil')])
        : op === Op.P_COPY ? Buffer.concat([ref(), ref()]) : op === Op.P_NULL ? Buffer.alloc(0) : Buffer.concat([ref(), r.bytes(r.int(24))]);
      f = frame(op, r.u32(), body);
      if (r.chance(0.3)) f = mutate(r, f).f;
    }
    await writeSplit(c, f, true);
    await sleep(r.int(4));
  }
  if (r.chance(0.8)) c.destroy();
}

const PEER_CONTROLLER_OPS: ReadonlySet<number> = new Set([Op.REPLY, Op.P_HOLD, Op.P_REVOKED, Op.P_KV_PUT, Op.P_MONITOR_FIRE, Op.P_STAT, Op.P_MEM_WRITE, Op.P_REVTREE]);

/**
 * One authenticated peer link (the fuzzer holds the cluster secret and dials as controller
 * 2): after a real handshake, random and mutated peer ops with refs naming real objects of
 * the Controller and of "controller 2". A malformed frame closes only this link; a semantic
 * error is answered with a typed REPLY.
 */
async function fuzzAuthPeer(r: Rng, target: { host: string; port: number }, label: string, fail: Fail, conns: RawConn[], ctl: { epoch: number }): Promise<void> {
  let acceptor: Buffer | null = null;
  let linked = false;
  const nonce = r.bytes(32);
  const epoch = 1 + r.int(1000);
  const c: RawConn = new RawConn(target, label, fail, r, (f) => {
    const op = frameOp(f);
    if (!linked) {
      if (op !== Op.PEER_HELLO || acceptor) fail(`${label}: op 0x${op.toString(16)} during the handshake`);
      acceptor = f;
      return;
    }
    if (!PEER_CONTROLLER_OPS.has(op)) fail(`${label}: Controller sent op 0x${op.toString(16)} on a peer link`);
    if (op === Op.REPLY) {
      if (frameCode(f) >= ERROR_CODES.length) fail(`${label}: REPLY with unknown code ${frameCode(f)}`);
      if (!c.sent.has(frameSeq(f))) fail(`${label}: REPLY to seq ${frameSeq(f)}, never sent`);
    } else if (op !== Op.P_HOLD && op !== Op.P_REVOKED && op !== Op.P_KV_PUT && op !== Op.P_MONITOR_FIRE && c.r.chance(0.5)) {
      c.react(frame(Op.REPLY, frameSeq(f), op === Op.P_STAT ? Buffer.from([0, 16, 0, 0, 0, 0, 0, 0, 3, 1]) : Buffer.alloc(0)));
    }
  });
  conns.push(c);
  await c.connected();
  c.write(encodePeerHello(2, epoch, nonce), true);
  if (!(await until(() => acceptor !== null || c.ended, 3000)) || !acceptor) return fail(`${label}: no acceptor PEER_HELLO`);
  const a = acceptor as Buffer;
  const tr = { dialerId: 2, dialerEpoch: epoch, dialerNonce: nonce, acceptorId: a.readUInt32LE(16), acceptorEpoch: a.readUInt32LE(20), acceptorNonce: a.subarray(24, 56) };
  if (!checkPeerProof(Buffer.from(SECRET), 'A', tr, a.subarray(56, 88))) return fail(`${label}: the acceptor's proof does not check`);
  linked = true;
  c.write(encodePeerAuth(peerProof(Buffer.from(SECRET), 'D', tr)), true);
  const ref = (): Buffer => {
    const b = Buffer.alloc(REF_BYTES);
    const mine = r.chance(0.75);
    writeRef(b, { controller: mine ? 1 : r.chance(0.8) ? 2 : r.int(5), epoch: mine ? (r.chance(0.9) ? ctl.epoch : r.int(4)) : epoch, id: r.chance(0.9) ? 1 + r.int(40) : r.edgy() }, 0);
    return b;
  };
  const u64 = (v: number): Buffer => {
    const b = Buffer.alloc(8);
    writeU64(b, v, 0);
    return b;
  };
  for (let i = 1 + r.int(25); i > 0 && !c.ended; i--) {
    const op = r.pick(PEER_OPS);
    let body: Buffer;
    switch (op) {
      case Op.P_INVOKE:
      case Op.P_DERIVE: {
        const { args, cap } = randomArgs(r, c.k, 16, ref);
        const a2 = Buffer.alloc(argsBytes(args, 16));
        writeArgs(a2, 0, args, cap, 16);
        const descs = r.chance(0.5) ? Buffer.concat([Buffer.from([1, 0]), Buffer.from([r.int(4), 0, r.int(4), r.int(2), 0, 0, 0, 0]), u64(r.int(65536))]) : Buffer.alloc(0);
        body = Buffer.concat([ref(), a2, descs]);
        break;
      }
      case Op.P_DIMINISH:
        body = Buffer.concat([ref(), Buffer.from([r.int(4)]), u64(r.int(4096)), u64(r.int(8192))]);
        break;
      case Op.P_COPY:
        body = Buffer.concat([ref(), ref()]);
        break;
      case Op.P_MEM_WRITE:
        body = Buffer.concat([ref(), u64(r.int(4096)), u64(r.int(8192)), r.bytes(r.int(64))]);
        break;
      case Op.P_MONITOR_DELEGATE:
      case Op.P_MONITOR_FIRE:
      case Op.P_HOLD:
      case Op.P_REVOKED: {
        const v = Buffer.alloc(4);
        v.writeInt32LE(op === Op.P_HOLD ? r.pick([1, -1, 2, -2, 0x7fffffff, -0x80000000]) : r.u32() | 0, 0);
        body = op === Op.P_MONITOR_FIRE ? Buffer.concat([v, Buffer.from([1, 0, 0, 0])]) : Buffer.concat([ref(), v]);
        break;
      }
      case Op.P_KV_PUT: {
        const head = Buffer.alloc(32);
        writeU64(head, r.int(1e6), 0);
        writeU64(head, r.int(1e6), 8);
        head.writeUInt32LE(r.chance(0.9) ? 2 : r.int(4), 16);
        head.writeUInt32LE(r.int(4), 20);
        head.writeUInt32LE(r.int(2), 24);
        body = Buffer.concat([head, ref(), Buffer.from(r.chance(0.3) ? 'owned' : `pfz${r.int(4)}`)]);
        break;
      }
      case Op.P_NULL:
        body = Buffer.alloc(0);
        break;
      default:
        body = Buffer.concat([ref(), r.bytes(r.int(16))]);
    }
    let f = frame(op, r.chance(0.9) ? 100 + i : r.u32(), body);
    let whole = true;
    if (r.chance(0.25)) ({ f, whole } = mutate(r, f));
    await writeSplit(c, f, whole);
    if (!whole) break;
    await sleep(r.int(3));
  }
  await sleep(r.int(20));
  c.destroy();
}

/**
 * Run fuzz connections (`lanes` at once) for `ms` ms; returns how many ran. `one` makes
 * one connection with its own Rng seeded from the run's seed and the connection's number,
 * so that a failing connection reproduces on its own.
 */
async function runFor(ms: number, lanes: number, one: (r: Rng, i: number) => Promise<void>, seed: number): Promise<number> {
  if (ONLY) {
    for (const i of ONLY) await one(new Rng((seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0), i);
    return ONLY.length;
  }
  const end = Date.now() + ms;
  let n = 0;
  await Promise.all(Array.from({ length: lanes }, async () => {
    while (Date.now() < end) {
      const i = n++;
      await one(new Rng((seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0), i);
      await sleep(1);
    }
  }));
  return n;
}

// ---------------------------------------------------------------------------------------
// Oracles shared by the tests

interface Watch {
  fails: string[];
  fail: Fail;
  warns: string[];
  log: { info: (o: object, m?: string) => void; warn: (o: object, m?: string) => void };
  stop: () => void;
}

function watch(t: ExecutionContext): Watch {
  const fails: string[] = [];
  const warns: string[] = [];
  const fail: Fail = (m) => {
    if (fails.length < 20) fails.push(m);
  };
  const onUncaught = (err: Error): void => fail(`uncaught exception: ${err.stack ?? err}`);
  const onUnhandled = (err: unknown): void => fail(`unhandled rejection: ${(err as Error)?.stack ?? err}`);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUnhandled);
  t.log(`seed ${SEED} (FRACTOS_FUZZ_SEED=${SEED} reproduces), budget ${TOTAL_MS} ms (FRACTOS_FUZZ_MS)`);
  return {
    fails,
    fail,
    warns,
    log: {
      info: () => {},
      warn: (o: object, m?: string) => {
        if (m === 'internal error') fail(`Controller internal error: ${JSON.stringify(o)}`);
        warns.push(m ?? '');
      },
    },
    stop: () => {
      process.off('uncaughtException', onUncaught);
      process.off('unhandledRejection', onUnhandled);
    },
  };
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(20);
  }
  return true;
}

/** Close every fuzz connection; an EPROTO REPLY must have been followed by the close. */
async function closeAll(conns: RawConn[], w: Watch): Promise<void> {
  await until(() => conns.every((c) => !c.eproto || c.ended), 3000);
  for (const c of conns) if (c.eproto && !c.ended) w.fail(`${c.label}: EPROTO REPLY without the close of the channel`);
  for (const c of conns) c.destroy();
  await until(() => conns.every((c) => c.closed), 3000);
}

function tcpOf(addr: string): { host: string; port: number } {
  const m = /^tcp:\/\/([^:]+):(\d+)$/.exec(addr)!;
  return { host: m[1]!, port: Number(m[2]) };
}

/** Stop the echo pair, the fuzz connections and the Controller (`close`), and the detectors. */
async function teardown(echo: EchoLoop | null, conns: RawConn[], w: Watch, close: () => Promise<void>): Promise<void> {
  await echo?.stop();
  for (const p of echo?.procs ?? []) await p.close().catch(() => {});
  for (const x of conns) x.destroy();
  await close();
  w.stop();
}

/** An in-process Controller listening on unix and tcp, with a cluster secret and peer 2 listed (it dials us). */
async function fuzzedController(w: Watch): Promise<{ c: Controller; addr: string; tcp: { host: string; port: number } }> {
  const dir = tempDir();
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({
    id: 1, listen: [addr, 'tcp://127.0.0.1:0'], stateDir: join(dir, 'state'), log: w.log, clusterSecret: SECRET,
    peers: new Map([[2, 'tcp://127.0.0.1:1']]), peerWaitWarnMs: 2 ** 31 - 1, servedTimeoutMs: 300, helloTimeoutMs: 1000,
  });
  return { c, addr, tcp: tcpOf(c.addresses[1]!) };
}

// ---------------------------------------------------------------------------------------
// Tests

test.serial('fuzz: Process channels and peer links of an in-process Controller', async (t) => {
  const w = watch(t);
  const { c, addr, tcp } = await fuzzedController(w);
  const conns: RawConn[] = [];
  let echo: EchoLoop | null = null;
  try {
    echo = await echoLoop(addr, w.fail);
    await until(() => echo!.ok() > 0, 5000);
    await echo.pause();
    const base = c.tableSizes();
    echo.resume();
    const okBefore = echo.ok();
    const procMs = Math.round(TOTAL_MS * 0.45);
    const peerMs = Math.round(TOTAL_MS * 0.2);
    const unix = addr.slice(5);
    const nProc = await runFor(procMs, 3, (r, i) => fuzzProcChannel(r, r.chance(0.8) ? unix : tcp, `proc#${i}`, w.fail, conns), SEED);
    const okMid = echo.ok();
    const nPeer = await runFor(peerMs, 2, (r, i) => fuzzPeerLink(r, r.chance(0.9) ? tcp : unix, `peer#${i}`, w.fail, conns, c), SEED ^ 0x5eed);
    if (c.connectedPeers.length) w.fail(`an unauthenticated connection became peer ${c.connectedPeers.join(',')}`);
    await closeAll(conns, w);
    // The echo pair keeps working during and after the fuzzing.
    t.true(okMid > okBefore, 'echo answered during the Process-channel fuzzing');
    const okAfterFuzz = echo.ok();
    t.true(await until(() => echo!.ok() > okAfterFuzz + 3, 5000), 'echo answers after the fuzzing');
    await echo.pause();
    // Back to the baseline once the fuzz connections are gone.
    const settled = await until(() => JSON.stringify(c.tableSizes()) === JSON.stringify(base), 5000);
    if (!settled) t.log(JSON.stringify(c.stats().filter((l) => !l.closed)));
    t.true(settled, `tables back to the baseline: ${JSON.stringify(base)} -> ${JSON.stringify(c.tableSizes())}`);
    t.log(`${nProc} Process channels, ${nPeer} peer connections; ${echo.ok()} echo calls answered`);
  } finally {
    await teardown(echo, conns, w, () => c.close());
  }
  t.deepEqual(w.fails, [], `seed ${SEED}`);
});

test.serial('fuzz: peer ops on an authenticated link close only that link, and its holds go with it', async (t) => {
  const w = watch(t);
  const { c, addr, tcp } = await fuzzedController(w);
  const conns: RawConn[] = [];
  const procs: Process[] = [];
  try {
    // Objects for the refs to name: shared and served Memory, Requests, a published name.
    const o = await connect(addr, { name: 'owner' });
    procs.push(o);
    for (let i = 0; i < 4; i++) {
      await o.memoryCreateShared(4096 * (i + 1));
      await o.requestCreate(Echo.tag, Echo.args({ x: i }));
    }
    await o.kvPut('owned', await o.requestCreate(Echo.tag));
    const base = c.tableSizes();
    const n = await runFor(Math.round(TOTAL_MS * 0.1), 1, (r, i) => fuzzAuthPeer(r, tcp, `auth-peer#${i}`, w.fail, conns, c), SEED ^ 0xa7);
    await closeAll(conns, w);
    await until(() => c.connectedPeers.length === 0, 3000);
    await o.nullOp(); // the owner still answers
    // Stale proxies of a gone peer are cleaned up asynchronously (off the critical path): give them a moment.
    const above = (): (keyof typeof base)[] => { const now = c.tableSizes(); return (Object.keys(base) as (keyof typeof base)[]).filter((k) => now[k] > base[k]); };
    await until(() => above().length === 0, 5000);
    const s = c.tableSizes();
    const over = above();
    t.deepEqual(over, [], `tables above the baseline once the links closed: ${JSON.stringify(base)} -> ${JSON.stringify(s)}`);
    t.is(s.proxies + s.preheld + s.peers + s.remoteMonitors, 0, JSON.stringify(s));
    t.log(`${n} authenticated peer links`);
  } finally {
    for (const p of procs) await p.close().catch(() => {});
    await teardown(null, conns, w, () => c.close());
  }
  t.deepEqual(w.fails, [], `seed ${SEED}`);
});

test.serial('fuzz: FrameDecoder against a reference splitter (random chunking, scratch ops, one bad frame)', (t) => {
  t.log(`seed ${SEED} (FRACTOS_FUZZ_SEED=${SEED} reproduces)`);
  const r = new Rng(SEED ^ 0xdec0de);
  const end = Date.now() + Math.max(500, Math.round(TOTAL_MS * 0.05));
  const max = 1 << 20;
  let runs = 0;
  while (Date.now() < end) {
    runs++;
    const frames: Buffer[] = [];
    for (let i = 1 + r.int(12); i > 0; i--) {
      const op = r.chance(0.3) ? Op.P_MEM_WRITE : r.pick([...PROC_OPS, ...PEER_OPS]);
      const body = r.chance(0.1) ? 256 * 1024 + r.int(4096) : r.int(r.chance(0.5) ? 64 : 20_000);
      const f = allocFrame(op, r.u32(), body);
      f.fill(r.int(256), HEADER_BYTES);
      frames.push(f);
    }
    // One bad frame (length out of bounds, flags, reserved) somewhere, or none.
    const bad = r.chance(0.5) ? r.int(frames.length + 1) : -1;
    const badFrame = allocFrame(r.chance(0.5) ? Op.P_MEM_WRITE : Op.NULL, 7, r.chance(0.5) ? 8 : 5000);
    const how = r.int(3);
    if (how === 0) badFrame.writeUInt32LE(r.pick([0, 15, max + 1, 0xffffffff]), 0);
    else badFrame.writeUInt16LE(1 + r.int(0xffff), how === 1 ? 6 : 14);
    const stream = Buffer.concat(bad >= 0 ? [...frames.slice(0, bad), badFrame, ...frames.slice(bad)] : frames);
    const d = new FrameDecoder(max, new Set([Op.P_MEM_WRITE]));
    const got: string[] = [];
    let err: unknown = null;
    let off = 0;
    try {
      while (off < stream.length) {
        const n = 1 + r.int(r.chance(0.5) ? 32 : 70_000);
        d.push(stream.subarray(off, off + n), (f) => got.push(f.toString('base64')));
        off += n;
      }
    } catch (e) {
      err = e;
    }
    const want = (bad >= 0 ? frames.slice(0, bad) : frames).map((f) => f.toString('base64'));
    if (bad >= 0) {
      if (!(err instanceof FractosError) || err.code !== 'EPROTO') return t.fail(`run ${runs}: bad frame ${bad} (kind ${how}) gave ${String(err)}`);
    } else if (err) return t.fail(`run ${runs}: ${String(err)}`);
    if (got.length !== want.length || got.some((g, i) => g !== want[i])) return t.fail(`run ${runs}: ${got.length} frames decoded, ${want.length} sent, or different bytes`);
  }
  t.log(`${runs} streams decoded`);
  t.pass();
});

test.serial('fuzz: a Controller started as its own OS process survives the frame fuzzer', async (t) => {
  const w = watch(t);
  const dir = tempDir();
  const unix = join(dir, 'c.sock');
  const secretFile = join(dir, 'secret');
  writeFileSync(secretFile, SECRET, { mode: 0o600 });
  const ctl = await spawnFractos(['controller', '--id', '1', '--state-dir', join(dir, 'state'), '--listen', `unix:${unix}`, '--listen', 'tcp://127.0.0.1:0',
    '--cluster-secret-file', secretFile, '--peer', '2=tcp://127.0.0.1:1', '--served-timeout-ms', '300', '--hello-timeout-ms', '1000'], /^controller \d+ epoch \d+ listening/);
  const conns: RawConn[] = [];
  let echo: EchoLoop | null = null;
  try {
    const tcp = tcpOf(/tcp:\/\/\S+/.exec(ctl.line)![0]);
    const epoch = Number(/epoch (\d+)/.exec(ctl.line)![1]);
    echo = await echoLoop(`unix:${unix}`, w.fail);
    const ms = Math.max(2000, Math.round(TOTAL_MS * 0.25));
    await runFor(ms * 0.7, 2, (r, i) => fuzzProcChannel(r, r.chance(0.8) ? unix : tcp, `os-proc#${i}`, w.fail, conns), SEED ^ 0x05);
    await runFor(ms * 0.3, 1, (r, i) => fuzzPeerLink(r, tcp, `os-peer#${i}`, w.fail, conns, { epoch }), SEED ^ 0x0505);
    await closeAll(conns, w);
    const n = echo.ok();
    t.true(await until(() => echo!.ok() > n + 3, 5000), 'echo answers after the fuzzing');
    t.is(ctl.child.exitCode, null, `the Controller still runs; output:\n${ctl.output()}`);
    t.notRegex(ctl.output(), /internal error|uncaught|unhandled/i);
  } finally {
    await teardown(echo, conns, w, () => ctl.stop());
  }
  t.deepEqual(w.fails, [], `seed ${SEED}`);
});

// ---------------------------------------------------------------------------------------
// Regressions of what the fuzzer found (minimized frames)

/** Send `chunks` on a raw unix connection, one write each, and wait for the Controller to close it. */
async function sendAndWaitClose(path: string, chunks: Buffer[]): Promise<RawConn> {
  const fails: string[] = [];
  const c = new RawConn(path, 'regression', (m) => fails.push(m), new Rng(1));
  await c.connected();
  for (const b of chunks) c.write(b, true);
  await until(() => c.ended, 5000);
  c.destroy();
  return c;
}

function servedMemoryCreate(seq: number): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt8(1, 0); // served
  b.writeUInt8(3, 1);
  writeU64(b, 4096, 16);
  return frame(Op.MEMORY_CREATE, seq, b);
}

test.serial('regression: frames after the one that closed a channel, in the same chunk, are not handled (no leaked Process or objects)', async (t) => {
  const dir = tempDir();
  const path = join(dir, 'c.sock');
  const c = await Controller.start({ id: 1, listen: [`unix:${path}`], stateDir: join(dir, 'state') });
  try {
    // Garbage before HELLO in the same chunk as a HELLO and a call: found by seed 1 as
    // Processes that stayed registered (their link closed before the HELLO was handled).
    await sendAndWaitClose(path, [Buffer.concat([frame(Op.P_NULL, 0, Buffer.alloc(0)), helloFrame('late'), servedMemoryCreate(2)])]);
    // An EPROTO frame after HELLO followed by calls in the same chunk: objects for a gone Process.
    await sendAndWaitClose(path, [Buffer.concat([helloFrame('x'), frame(0x7e, 2, Buffer.alloc(0)), servedMemoryCreate(3), servedMemoryCreate(4)])]);
    await sleep(50);
    const s = c.tableSizes();
    t.is(s.procs, 0, JSON.stringify(s));
    t.is(s.objects, 0, JSON.stringify(s));
  } finally {
    await c.close();
  }
});

/**
 * A framed, counted link over a stream socket (Unix or TCP): the transport under both
 * Process<->Controller channels and Controller<->Controller links.
 */
import net from 'node:net';
import { FractosError } from './errors.js';
import { FrameDecoder, type LinkCounters } from './protocol.js';

/** A parsed transport address. */
export type Address = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/**
 * Parse `unix:PATH` or `tcp://HOST:PORT` (HOST may be `[v6]`). Errors: EINVAL.
 */
export function parseAddress(addr: string): Address {
  if (addr.startsWith('unix:')) {
    const path = addr.slice(5);
    if (!path) throw new FractosError('EINVAL', `empty unix socket path in '${addr}'`);
    return { kind: 'unix', path };
  }
  const m = /^tcp:\/\/(\[[^\]]+\]|[^:/]+):(\d{1,5})$/.exec(addr);
  if (m) {
    const port = Number(m[2]);
    if (port > 65535) throw new FractosError('EINVAL', `bad port in '${addr}'`);
    return { kind: 'tcp', host: m[1]!.replace(/^\[|\]$/g, ''), port };
  }
  throw new FractosError('EINVAL', `bad address '${addr}' (want unix:PATH or tcp://HOST:PORT)`);
}

/** Format an address back to its string form. */
export function formatAddress(a: Address): string {
  return a.kind === 'unix' ? `unix:${a.path}` : `tcp://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}

/** Open a stream socket to an address. Errors: EDISCONNECTED (refused, unreachable). */
export function dial(addr: Address, timeoutMs = 10_000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = addr.kind === 'unix' ? net.createConnection(addr.path) : net.createConnection(addr.port, addr.host);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new FractosError('ETIMEDOUT', `connect to ${formatAddress(addr)} timed out`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(new FractosError('EDISCONNECTED', `connect to ${formatAddress(addr)}: ${err.message}`));
    });
  });
}

/**
 * A framed link. Outgoing frames are queued and written in one batch per tick
 * (cork/uncork: one writev), incoming bytes are split into frames by FrameDecoder.
 * A decoding error closes the link (the caller learns it through `onClose(err)`).
 */
export class Link {
  readonly counters: LinkCounters = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0 };
  readonly socket: net.Socket;
  #decoder: FrameDecoder;
  #closed = false;
  #queue: Uint8Array[] = [];
  #flushScheduled = false;
  onFrame: (frame: Buffer) => void = () => {};
  onClose: (err?: Error) => void = () => {};

  /** `scratchOps`: see FrameDecoder (frames of these ops are valid only during onFrame). */
  constructor(socket: net.Socket, maxFrameBytes: number, scratchOps: ReadonlySet<number> | null = null) {
    this.socket = socket;
    this.#decoder = new FrameDecoder(maxFrameBytes, scratchOps);
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => {
      if (this.#closed) return;
      this.counters.bytesIn += chunk.length;
      try {
        this.#decoder.push(chunk, (frame) => {
          this.counters.framesIn++;
          this.onFrame(frame);
        });
      } catch (err) {
        this.close(err as Error);
      }
    });
    socket.on('error', (err) => this.close(err));
    socket.on('close', () => this.close());
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Queue a frame; takes ownership of `frame` (do not modify it afterwards). */
  send(frame: Buffer): void {
    if (this.#closed) return;
    this.counters.framesOut++;
    this.counters.bytesOut += frame.length;
    this.#queue.push(frame);
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      process.nextTick(this.#flush);
    }
  }

  #flush = (): void => {
    this.#flushScheduled = false;
    const q = this.#queue;
    if (this.#closed || q.length === 0) return;
    this.#queue = [];
    if (q.length === 1) {
      this.socket.write(q[0]!);
      return;
    }
    this.socket.cork();
    for (const f of q) this.socket.write(f);
    this.socket.uncork();
  };

  /**
   * Queue a frame whose last `payload.length` bytes are sent from `payload` itself (no copy
   * into the frame): `head` holds the header and fixed fields, its length field already
   * counting the payload. `payload` must not change until written (like an RDMA send).
   */
  sendv(head: Buffer, payload: Uint8Array): void {
    if (this.#closed) return;
    this.counters.framesOut++;
    this.counters.bytesOut += head.length + payload.length;
    this.#queue.push(head, payload as Buffer);
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      process.nextTick(this.#flush);
    }
  }

  /** Close the link; `err` is passed to onClose (EPROTO for a malformed stream). */
  close(err?: Error): void {
    if (this.#closed) return;
    if (this.#queue.length) this.#flush();
    this.#closed = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.onClose(err);
  }
}

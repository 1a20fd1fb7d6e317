/**
 * A framed, counted link over a stream socket (Unix or TCP): the transport under both
 * Process<->Controller channels and Controller<->Controller links.
 */
import net from 'node:net';
import { FractosError } from './errors.js';
import { FrameDecoder, type LinkCounters } from './protocol.js';

/** Frames below this size (bytes) are copied into one buffer per run when a link flushes. */
const COALESCE_BYTES = 4096;

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
 * What a Process's channel needs from its transport: `Link` (a net.Socket, unix or tcp),
 * `UnixLink` (libfractos/unix-link.ts: the unix socket owned by the queue addon, with fds).
 *
 * Frames with file descriptors (docs/protocol.md "Frames with file descriptors"): `onFrame`
 * gets the fds that came with a frame in `fds` (absent when none); the handler takes an fd
 * by setting its entry to -1, and the link closes every fd still in the array when the
 * handler returns. `sendWithFds(frame, fds)` sends one frame with 1..8 fds attached (the
 * caller keeps its fds); a link that cannot carry fds (tcp) throws ENOTSUP.
 */
export interface FrameLink {
  readonly counters: LinkCounters;
  /** Times reading was paused because the backlog passed its high-water mark. */
  readonly readPauses: number;
  onFrame: (frame: Buffer, fds?: number[]) => void;
  onClose: (err?: Error) => void;
  readonly closed: boolean;
  send(frame: Buffer): void;
  sendv(head: Buffer, payload: Uint8Array): void;
  sendWithFds(frame: Buffer, fds: number[]): void;
  readonly backlogBytes: number;
  limitBacklog(highBytes: number): void;
  /** Stop / start reading (tests of back-pressure). */
  pause(): void;
  resume(): void;
  close(err?: Error): void;
  /** Resolves once the transport released its socket (after `close` or a failure). */
  released(): Promise<void>;
}

/**
 * A framed link. Outgoing frames are queued and written in one batch per tick
 * (cork/uncork: one writev), incoming bytes are split into frames by FrameDecoder.
 * A decoding error closes the link (the caller learns it through `onClose(err)`); no frame
 * is handed to `onFrame` once the link is closed, not even the rest of the chunk that held
 * the frame that closed it.
 */
export class Link implements FrameLink {
  readonly counters: LinkCounters = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0 };
  readonly socket: net.Socket;
  #decoder: FrameDecoder;
  #closed = false;
  #queue: Uint8Array[] = [];
  /** Bytes in `#queue` (frames waiting for the next flush). */
  #queueBytes = 0;
  #flushScheduled = false;
  /** Outbound backlog (bytes) above which reading stops (see `limitBacklog`); 0 = never. */
  #backlogHigh = 0;
  #readPaused = false;
  /** Times reading was paused because the backlog passed its high-water mark. */
  readPauses = 0;
  onFrame: (frame: Buffer, fds?: number[]) => void = () => {};
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
          // A frame that closed the link (EPROTO) ends it: the frames after it in the same
          // chunk are not handled (they would act for a channel that is gone).
          if (this.#closed) return;
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
    this.#queueBytes += frame.length;
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
    this.#queueBytes = 0;
    if (q.length === 1) this.socket.write(q[0]!);
    else {
      // Runs of small frames go out as one buffer: a write buffered in the socket costs
      // about 100 bytes of bookkeeping, more than a 16-byte REPLY, so the backlog's bytes
      // are its memory. Large frames and sendv payloads are written as they are (no copy).
      this.socket.cork();
      let from = 0;
      let runBytes = 0;
      const endRun = (to: number): void => {
        if (to - from === 1) this.socket.write(q[from]!);
        else if (to > from) this.socket.write(Buffer.concat(q.slice(from, to), runBytes));
      };
      for (let i = 0; i < q.length; i++) {
        const f = q[i]!;
        if (f.length < COALESCE_BYTES) {
          if (runBytes === 0) from = i;
          runBytes += f.length;
          continue;
        }
        if (runBytes) endRun(i);
        runBytes = 0;
        this.socket.write(f);
      }
      if (runBytes) endRun(q.length);
      this.socket.uncork();
    }
    // The kernel does not take our frames as fast as we make them: stop reading the other
    // side until it has (its calls are what make most of our frames). 'drain' comes once
    // the socket's write buffer is empty, which needs writableNeedDrain (a write refused).
    if (this.#backlogHigh && !this.#readPaused && this.socket.writableLength > this.#backlogHigh && this.socket.writableNeedDrain) {
      this.#readPaused = true;
      this.readPauses++;
      this.socket.pause();
      this.socket.once('drain', this.#resume);
    }
  };

  #resume = (): void => {
    this.#readPaused = false;
    if (!this.#closed) this.socket.resume();
  };

  /**
   * Bytes queued for the other side and not yet taken by the kernel: frames waiting for
   * the next flush plus the socket's write buffer.
   */
  get backlogBytes(): number {
    return this.#queueBytes + this.socket.writableLength;
  }

  /**
   * Bound the outbound backlog of a link whose other side's frames cause ours (a Process's
   * calls and their REPLYs): once more than `highBytes` (bytes, >= the socket's 16 KiB write
   * high-water mark to take effect) wait in the socket's write buffer, the link stops
   * reading until the buffer has drained into the kernel (low-water mark 0). Only for links
   * where the other side never waits for us to read before it reads (a Process): two sides
   * that both stop reading deadlock, so peer links never use it.
   */
  limitBacklog(highBytes: number): void {
    this.#backlogHigh = highBytes;
  }

  /**
   * Queue a frame whose last `payload.length` bytes are sent from `payload` itself (no copy
   * into the frame): `head` holds the header and fixed fields, its length field already
   * counting the payload. `payload` must not change until written (like an RDMA send).
   */
  sendv(head: Buffer, payload: Uint8Array): void {
    if (this.#closed) return;
    this.counters.framesOut++;
    this.counters.bytesOut += head.length + payload.length;
    this.#queueBytes += head.length + payload.length;
    this.#queue.push(head, payload as Buffer);
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      process.nextTick(this.#flush);
    }
  }

  /** A net.Socket cannot carry fds: ENOTSUP (tcp, or a unix Process without the queue addon). */
  sendWithFds(_frame: Buffer, _fds: number[]): void {
    throw new FractosError('ENOTSUP', 'this link cannot carry file descriptors (tcp, or no queue addon)');
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  released(): Promise<void> {
    return new Promise<void>((r) => {
      if (this.socket.destroyed) r();
      else this.socket.once('close', () => r());
    });
  }

  /** Close the link; `err` is passed to onClose (EPROTO for a malformed stream). */
  close(err?: Error): void {
    if (this.#closed) return;
    if (this.#queue.length) this.#flush();
    this.#closed = true;
    this.#queueBytes = 0;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.onClose(err);
  }
}

/**
 * A Process's channel over a unix socket owned by the queue addon (native/queue/src/sock.cc):
 * the same surface as `Link` (libfractos/link.ts FrameLink) plus file descriptors beside the
 * frames (docs/protocol.md "Frames with file descriptors"). The addon splits the stream into
 * whole frames in C++ and calls JS once per batch; frames queued in one tick leave in one
 * writev. Used by `connect()` for `unix:` addresses when the addon loads. After a HELLO
 * that was granted a queue pair it is also the Process's queue link (`attachQueue`): one
 * class rather than a separate QueueLink because the socket stays under the rings (frames
 * with fds, liveness) and both share the frame splitter, the fds, the backlog and the
 * callbacks in one native object.
 */
import { FractosError, type ErrorCode, ERROR_CODES } from './errors.js';
import type { FrameLink } from './link.js';
import type { LinkCounters } from './protocol.js';
import { closeFd, newNativeSock, type NativeSock } from '../native/queue/index.js';

const KNOWN = new Set<string>(ERROR_CODES);

function linkError(code: string, message: string | null): FractosError {
  return new FractosError((KNOWN.has(code) ? code : 'EIO') as ErrorCode, message ?? code);
}

export class UnixLink implements FrameLink {
  readonly counters: LinkCounters = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0 };
  readPauses = 0;
  onFrame: (frame: Buffer, fds?: number[]) => void = () => {};
  onClose: (err?: Error) => void = () => {};
  readonly #sock: NativeSock;
  #closed = false;
  #released = false;
  #onReleased: (() => void)[] = [];
  #queue: Uint8Array[] = [];
  #queueBytes = 0;
  #flushScheduled = false;
  #backlogHigh = 0;
  #readPaused = false;
  #userPaused = false;
  #queue_ = false;
  /** Some frame of this tick wants its reader woken (all frames but sendQuiet's). */
  #loud = false;
  /** Poll mode: spin this long (ns) after a flush while `outstanding()` (0: off). */
  #pollNs = 0;
  /** Calls waiting for an answer (set by the Process): poll only while some are. */
  outstanding: () => boolean = () => false;

  /**
   * Connect to `unix:path`. Errors: EDISCONNECTED (refused, no such socket), ETIMEDOUT,
   * EINVAL (path too long), ENODEV (no queue addon).
   */
  static connect(path: string, maxFrameBytes: number, timeoutMs: number): Promise<UnixLink> {
    const sock = newNativeSock(maxFrameBytes);
    return new Promise((resolve, reject) => {
      sock.connect(path, timeoutMs, (code, message) => {
        if (code) reject(new FractosError(code === 'ETIMEDOUT' ? 'ETIMEDOUT' : 'EDISCONNECTED', `connect to unix:${path}: ${message}`));
        else resolve(new UnixLink(sock));
      });
    });
  }

  private constructor(sock: NativeSock) {
    this.#sock = sock;
    sock.start(this.#onFrames, this.#onNative);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Whether frames go on a queue pair (attachQueue). */
  get queued(): boolean {
    return this.#queue_;
  }

  /**
   * Switch to the queue pair the Controller sent with the HELLO reply (docs/queues.md):
   * frames (but those with fds) go on ring 0, ring 1's frames arrive through `onFrame` like
   * the socket's. The fds stay the caller's. `budgetFd`: the host's spinner budget page
   * (docs/queues.md "Spinner budget"), -1 for none (spins then use a process-local budget).
   * `pollNs` > 0: poll mode (after each flush with calls outstanding, spin up to that long
   * for their answers and handle them at once; the Controller spins after our activity).
   * Errors: EPROTO (not a sealed pair of `ringBytes` per ring, or not a budget page), EINVAL.
   */
  attachQueue(memfd: number, ownDoorbell: number, peerDoorbell: number, ringBytes: number, budgetFd = -1, pollNs = 0): void {
    this.#sock.attachQueue(memfd, ownDoorbell, peerDoorbell, ringBytes, budgetFd, pollNs);
    this.#queue_ = true;
    this.#pollNs = pollNs;
  }

  /**
   * Let a native I/O loop take frames off this channel before JS (native/include/frame_hook.h;
   * `hook` is the loop's napi External, `owner` its JS object, kept alive while attached);
   * null detaches. Errors: EINVAL, EBUSY (see NativeSock.setFrameHook).
   */
  setFrameHook(hook: object | null, owner?: object): void {
    if (this.#closed) return;
    try {
      this.#sock.setFrameHook(hook, owner);
    } catch (err) {
      const e = err as Error & { code?: string };
      throw linkError(e.code ?? 'EINVAL', e.message);
    }
  }

  /**
   * Which frames wake this Process when it sleeps on its queue pair: all (true, default) or
   * all but quiet replies (false: a Process whose continuations will wake it).
   */
  setWakeAll(all: boolean): void {
    this.#sock.setWakeAll(all);
  }

  /** Counters of the native side (wake-ups, polls). */
  nativeStats(): ReturnType<NativeSock['stats']> {
    return this.#sock.stats();
  }

  #onFrames = (buf: Buffer, fds: number[] | null): void => {
    this.counters.bytesIn += buf.length;
    let fi = 0;
    for (let off = 0; off < buf.length;) {
      const len = buf.readUInt32LE(off);
      if (this.#closed) break;
      this.counters.framesIn++;
      const frame = buf.subarray(off, off + len);
      if (fds && fi < fds.length && fds[fi] === off) {
        const mine: number[] = [];
        while (fi < fds.length && fds[fi] === off) {
          mine.push(fds[fi + 1]!);
          fi += 2;
        }
        try {
          this.onFrame(frame, mine);
        } finally {
          for (const fd of mine) if (fd >= 0) closeFd(fd);
        }
      } else {
        this.onFrame(frame);
      }
      off += len;
    }
    // fds of frames not handled (the link closed inside a handler)
    if (fds) for (; fi < fds.length; fi += 2) closeFd(fds[fi + 1]!);
  };

  #onNative = (code: string, message: string | null): void => {
    if (code === 'drain') {
      this.#readPaused = false;
      if (!this.#userPaused && !this.#closed) this.#sock.setReading(true);
      return;
    }
    this.#release();
    if (code === 'done' || this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#queueBytes = 0;
    // A clean end of the channel is reported without an error, as by Link.
    this.onClose(code === 'EDISCONNECTED' ? undefined : linkError(code, message));
  };

  #release(): void {
    if (this.#released) return;
    this.#released = true;
    for (const r of this.#onReleased) r();
    this.#onReleased = [];
  }

  send(frame: Buffer): void {
    if (this.#closed) return;
    this.#loud = true;
    this.counters.framesOut++;
    this.counters.bytesOut += frame.length;
    this.#queueBytes += frame.length;
    this.#queue.push(frame);
    this.#schedule();
  }

  sendv(head: Buffer, payload: Uint8Array): void {
    if (this.#closed) return;
    this.#loud = true;
    this.counters.framesOut++;
    this.counters.bytesOut += head.length + payload.length;
    this.#queueBytes += head.length + payload.length;
    this.#queue.push(head, payload);
    this.#schedule();
  }

  /**
   * Queue a frame nobody waits for (an acknowledgement): on a queue pair, a tick that holds
   * only such frames is published without ringing the Controller's doorbell; the Controller
   * reads them with its next woken batch (docs/queues.md "No wake-up for nothing").
   */
  sendQuiet(frame: Buffer): void {
    if (this.#closed) return;
    this.counters.framesOut++;
    this.counters.bytesOut += frame.length;
    this.#queueBytes += frame.length;
    this.#queue.push(frame);
    this.#schedule();
  }

  /** One frame with 1..8 fds, after the frames queued before it. Errors: EINVAL (count). */
  sendWithFds(frame: Buffer, fds: number[]): void {
    if (fds.length < 1 || fds.length > 8) throw new FractosError('EINVAL', `sendWithFds: ${fds.length} fds (1..8)`);
    if (this.#closed) return;
    this.#flush();
    this.counters.framesOut++;
    this.counters.bytesOut += frame.length;
    this.#sock.sendWithFds(frame, fds);
    this.#checkBacklog();
  }

  #schedule(): void {
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
    const quiet = !this.#loud;
    this.#loud = false;
    this.#sock.writev(q, quiet);
    this.#checkBacklog();
    if (this.#pollNs) this.#poll();
  };

  /** Poll mode: answers that come within the spin are handled now, not after a doorbell. */
  #poll(): void {
    for (let i = 0; i < 64 && !this.#closed && this.outstanding(); i++) {
      const b = this.#sock.poll(this.#pollNs);
      if (!b) return;
      this.#onFrames(b, null);
    }
  }

  /** Same rule as Link: above the high-water mark, stop reading until the queue drained. */
  #checkBacklog(): void {
    if (this.#backlogHigh && !this.#readPaused && this.#sock.backlog() > this.#backlogHigh) {
      this.#readPaused = true;
      this.readPauses++;
      this.#sock.setReading(false);
      this.#sock.backlog(true);
    }
  }

  get backlogBytes(): number {
    return this.#queueBytes + (this.#released ? 0 : this.#sock.backlog());
  }

  limitBacklog(highBytes: number): void {
    this.#backlogHigh = highBytes;
  }

  pause(): void {
    this.#userPaused = true;
    if (!this.#closed) this.#sock.setReading(false);
  }

  resume(): void {
    this.#userPaused = false;
    if (!this.#closed && !this.#readPaused) this.#sock.setReading(true);
  }

  released(): Promise<void> {
    return this.#released ? Promise.resolve() : new Promise((r) => this.#onReleased.push(r));
  }

  close(err?: Error): void {
    if (this.#closed) return;
    if (this.#queue.length) this.#flush();
    this.#closed = true;
    this.#queueBytes = 0;
    this.#sock.close();
    this.onClose(err);
  }
}

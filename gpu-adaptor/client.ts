/**
 * Client side of the GPU adaptor: bootstrap (`${name}.init` by kv_wait), a context's
 * alloc/load/cleanup as synchronous RPCs (paper §3.4), and failure notice. Uses only
 * libfractos and the schema: applications import this, never the service.
 */
import { FractosError } from '../libfractos/errors.js';
import type { MonitorEvent, Process } from '../libfractos/process.js';
import { Alloc, AllocReply, Cleanup, Init, InitReply, Load, LoadReply } from './schema.js';

/** A GPU context held by a client: its three Requests (cids in the client's space). */
export class GpuContext {
  #closed = false;
  private constructor(
    readonly p: Process,
    readonly context: number,
    readonly backend: 'cpu' | 'cuda',
    readonly device: string,
    readonly allocCid: number,
    readonly loadCid: number,
    readonly cleanupCid: number,
  ) {}

  /**
   * Look up `${name}.init` (waiting up to `timeoutMs` for it to be published) and create a
   * context. Errors: ENOENT (not published in time), the adaptor's codes, ETIMEDOUT.
   */
  static async open(p: Process, name = 'gpu', opts: { timeoutMs?: number } = {}): Promise<GpuContext> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const init = await p.kvWait(`${name}.init`, timeoutMs);
    try {
      return await GpuContext.fromInit(p, init, { timeoutMs });
    } finally {
      p.capDrop(init).catch(() => {});
    }
  }

  /**
   * Create a context through an `init` Request the caller holds (e.g. from a resource-manager
   * grant); the caller keeps `init`. Errors: the adaptor's codes, EREVOKED, ETIMEDOUT.
   */
  static async fromInit(p: Process, init: number, opts: { timeoutMs?: number } = {}): Promise<GpuContext> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const r = InitReply.decode(await p.rpc(init, Init, {}, {}, { timeoutMs }));
    return new GpuContext(p, r.imms.context, r.imms.backend === 1 ? 'cuda' : 'cpu', r.imms.device, r.caps.alloc, r.caps.load, r.caps.cleanup);
  }

  /** Allocate `size` bytes of device memory: a served Memory cid. Errors: EINVAL, ENOSPC, EREVOKED. */
  async alloc(size: number, timeoutMs = 10_000): Promise<number> {
    this.#check();
    return AllocReply.decode(await this.p.rpc(this.allocCid, Alloc, { size }, {}, { timeoutMs })).caps.memory;
  }

  /** An invoke Request for `kernel` (Invoke schema, context and kernel preset). Errors: ENOENT, EREVOKED. */
  async load(kernel: string, timeoutMs = 10_000): Promise<number> {
    this.#check();
    return LoadReply.decode(await this.p.rpc(this.loadCid, Load, { kernel }, {}, { timeoutMs })).caps.invoke;
  }

  /** Free the context at the adaptor (every cap it gave is revoked), then drop ours. */
  async cleanup(timeoutMs = 10_000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.p.rpc(this.cleanupCid, Cleanup, {}, {}, { timeoutMs });
    } finally {
      await this.p.capDrop(this.allocCid, this.loadCid, this.cleanupCid).catch(() => {});
    }
  }

  /** Our cids are dropped after cleanup (and may be reused): refuse locally. */
  #check(): void {
    if (this.#closed) throw new FractosError('EREVOKED', `GPU context ${this.context} was cleaned up`);
  }

  /**
   * `cb` fires once when the context is revoked or the adaptor fails (monitor_receive on the
   * alloc Request). Errors: EREVOKED when it already is.
   */
  async onLost(cb: (ev: MonitorEvent) => void): Promise<void> {
    await this.p.monitorReceive(this.allocCid, cb);
  }
}


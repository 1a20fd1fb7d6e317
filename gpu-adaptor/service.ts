/**
 * The GPU adaptor service (DESIGN.md §5, paper §5): turns `gpu.*` Requests into operations
 * of a compute backend (`backend.ts`: cuda or cpu). Contract: `schema.ts`.
 *
 * - `init` -> a context with {alloc, load, cleanup} Requests (context preset).
 * - `alloc(size)` -> a Memory cap on device memory. cuda: *served* Memory (the Controller
 *   cannot map device memory: it calls this Process for every copy touching it, and the
 *   backing calls backend.read/write). cpu: "device memory" is host memory, so it is a
 *   memfd region registered as *shared* Memory (allocShared + memoryCreate) and wrapped
 *   by the backend (allocExternal): the Controller copies into it, and a same-host blockdev
 *   reads O_DIRECT into it, with no frames to this Process.
 * - `load(kernel)` -> an invoke Request (context and kernel preset).
 * - invoke: Memory caps for the kernel buffers, which must be device memory of this adaptor
 *   (memory_stat: owned by us, served, a key in the allocation table; views are fine),
 *   immediates for scalars, a barrier (`expect`, `batch`), an optional `out` copy of the
 *   scores, then `onSuccess` (InvokeReply) or `onError` (ErrorReply with a code).
 * - Per-client resources are freed on `cleanup` (every Request and Memory cap of the
 *   context is revoked: later use is EREVOKED) or when every cap delegated to the client is
 *   gone (monitor_delegate on each Request and Memory object handed out; fires when the
 *   client drops them or its Process goes away).
 *
 * No client input crashes the service: every handler error becomes an onError reply.
 */
import { FractosError, type ErrorCode } from '../libfractos/errors.js';
import type { Process, SharedRegion } from '../libfractos/process.js';
import { Perm } from '../libfractos/protocol.js';
import type { Invocation, MemoryDescriptor } from '../libfractos/schema.js';
import { IMAGE_BYTES, IMAGE_HEIGHT, IMAGE_WIDTH, histogramBytes, type BufferArg, type GpuBackend, type Kernel, type KernelName } from './backend.js';
import { Alloc, AllocReply, Cleanup, DoneReply, GATHER_MAX, Init, InitReply, Invoke, InvokeReply, Load, LoadReply } from './schema.js';

type InvokeSlot = 'probes' | 'enrolled' | 'scores' | 'histograms';

/** Kernels in load order; the invoke Request carries the index. */
const KERNEL_IDS: readonly KernelName[] = ['lbp_chi2_batch', 'lbp_hist_batch'];

/** Most pairs per launch (bounds the device memory and time one invoke may take). */
export const MAX_PAIRS = 1 << 16;

/** Options of the service. */
export interface GpuServiceOptions {
  /** Bootstrap prefix: publishes `${name}.init`. Default 'gpu'. */
  name?: string;
  /** How long a barrier waits for its `expect` invocations (ms). Default 10000. */
  barrierTimeoutMs?: number;
  /** Most bytes one context may allocate. Default 4 GiB. */
  maxContextBytes?: number;
  /**
   * cpu backend: register device memory as shared Memory (default true when the backend is
   * hostAddressable); false = served Memory as with cuda (comparisons, tests).
   */
  sharedMemory?: boolean;
  /** Logger (pino-like); optional. */
  log?: { info(o: object, msg?: string): void; warn(o: object, msg?: string): void };
}

interface Allocation {
  ctx: Context;
  handle: number;
  size: number;
  cid: number;
  /** Table key: `s:<servedKey>` (served) or `r:<region key>` (shared). */
  key: string;
  /** Shared backing: the region (freed with the allocation). */
  region: SharedRegion | null;
  freed: boolean;
}

interface Context {
  id: number;
  /** Our cids of the context's Requests (alloc, load, cleanup) and invoke Requests. */
  requests: number[];
  allocs: Set<Allocation>;
  bytes: number;
  /** Monitored objects whose delegates are not all gone yet. */
  live: number;
  closed: boolean;
}

interface Barrier {
  arrived: number;
  /** From the first invocation carrying arguments (0 until one arrived). */
  expect: number;
  /** Whether an invocation carrying arguments arrived (it runs the kernel). */
  carrier: boolean;
  timer: NodeJS.Timeout;
  settle: (err: FractosError | null) => void;
  done: Promise<void>;
}

/** A resolved buffer argument: the allocation and the byte range of the view. */
interface DeviceView {
  alloc: Allocation;
  offset: number;
  size: number;
  perms: number;
}

/** Statistics of a running service (tests, logs). */
export interface GpuServiceStats {
  contexts: number;
  allocations: number;
  bytes: number;
  launches: number;
}

export class GpuService {
  readonly #p: Process;
  readonly #backend: GpuBackend;
  readonly #name: string;
  readonly #barrierTimeoutMs: number;
  readonly #maxContextBytes: number;
  readonly #log: GpuServiceOptions['log'];
  readonly #contexts = new Map<number, Context>();
  /** `s:<servedKey>` / `r:<region key>` -> allocation. */
  readonly #allocs = new Map<string, Allocation>();
  readonly #shared: boolean;
  readonly #barriers = new Map<string, Barrier>();
  #nextContext = 1;
  #launches = 0;
  #initCid = 0;

  private constructor(p: Process, backend: GpuBackend, opts: GpuServiceOptions) {
    this.#p = p;
    this.#backend = backend;
    this.#name = opts.name ?? 'gpu';
    this.#barrierTimeoutMs = opts.barrierTimeoutMs ?? 10_000;
    this.#maxContextBytes = opts.maxContextBytes ?? 4 * 1024 ** 3;
    this.#log = opts.log;
    this.#shared = (opts.sharedMemory ?? true) && backend.hostAddressable;
  }

  /**
   * Register the handlers on `p` and publish `${name}.init`.
   * Errors: those of request_create and kv_put.
   */
  static async start(p: Process, backend: GpuBackend, opts: GpuServiceOptions = {}): Promise<GpuService> {
    const s = new GpuService(p, backend, opts);
    p.serve(Init, ({ caps }) => s.#guard(caps.onError, () => s.#init(caps.onSuccess)));
    p.serve(Alloc, ({ imms, caps }) => s.#guard(caps.onError, () => s.#alloc(imms.context, imms.size, caps.onSuccess)));
    p.serve(Load, ({ imms, caps }) => s.#guard(caps.onError, () => s.#load(imms.context, imms.kernel, caps.onSuccess)));
    p.serve(Cleanup, ({ imms, caps }) => s.#guard(caps.onError, () => s.#cleanupRequest(imms.context, caps.onSuccess)));
    // Through serve(): a delivery that does not decode gets onError (EPROTO / its code), as the others.
    p.serve(Invoke, (args, inv) => s.#invoke(args, inv));
    s.#initCid = await p.createRequest(Init);
    await p.kvPut(`${s.#name}.init`, s.#initCid, { republish: true });
    return s;
  }

  get backend(): GpuBackend {
    return this.#backend;
  }

  /** How device memory is handed out: 'shared' (cpu, host shm) or 'served'. */
  get memoryKind(): 'shared' | 'served' {
    return this.#shared ? 'shared' : 'served';
  }

  stats(): GpuServiceStats {
    let bytes = 0;
    for (const c of this.#contexts.values()) bytes += c.bytes;
    return { contexts: this.#contexts.size, allocations: this.#allocs.size, bytes, launches: this.#launches };
  }

  /** Run `f`; turn any error into an onError reply. */
  async #guard(onError: number, f: () => Promise<void>): Promise<void> {
    try {
      await f();
    } catch (err) {
      const e = asFractos(err);
      await this.#p.replyError(onError, e.code, e.message);
    }
  }

  #context(id: number): Context {
    const c = this.#contexts.get(id);
    if (!c || c.closed) throw new FractosError('EREVOKED', `context ${id} was cleaned up`);
    return c;
  }

  /** Watch `cid` (ours): when every cap delegated from it is gone, count it out of the context. */
  async #watch(ctx: Context, cid: number, onGone?: () => void): Promise<void> {
    ctx.live++;
    await this.#p.monitorDelegate(cid, (ev) => {
      if (ev !== 'delegates-gone' || ctx.closed) return;
      onGone?.();
      if (--ctx.live === 0) {
        this.#log?.info({ context: ctx.id }, 'client gone: freeing context');
        this.#free(ctx).catch(() => {});
      }
    });
  }

  async #init(onSuccess: number): Promise<void> {
    const id = this.#nextContext++;
    const ctx: Context = { id, requests: [], allocs: new Set(), bytes: 0, live: 0, closed: false };
    this.#contexts.set(id, ctx);
    const [alloc, load, cleanup] = await Promise.all([
      this.#p.createRequest(Alloc, { context: id }),
      this.#p.createRequest(Load, { context: id }),
      this.#p.createRequest(Cleanup, { context: id }),
    ]);
    ctx.requests.push(alloc, load, cleanup);
    await Promise.all(ctx.requests.map((cid) => this.#watch(ctx, cid)));
    try {
      await this.#p.invoke(onSuccess, InitReply, {
        context: id,
        backend: this.#backend.kind === 'cuda' ? 1 : 0,
        device: truncate(this.#backend.deviceName, 64),
      }, { alloc, load, cleanup });
    } catch (err) {
      await this.#free(ctx);
      throw err;
    }
  }

  async #alloc(context: number, size: number, onSuccess: number): Promise<void> {
    const ctx = this.#context(context);
    if (!Number.isInteger(size) || size < 1 || size > 2 ** 40) throw new FractosError('EINVAL', `alloc size ${size} not in 1..2^40`);
    if (ctx.bytes + size > this.#maxContextBytes) throw new FractosError('ENOSPC', `context ${context} would exceed ${this.#maxContextBytes} bytes`);
    const a = this.#shared ? await this.#allocShared(ctx, size) : await this.#allocServed(ctx, size);
    ctx.allocs.add(a);
    ctx.bytes += size;
    this.#allocs.set(a.key, a);
    await this.#watch(ctx, a.cid, () => this.#freeAlloc(a));
    await this.#p.invoke(onSuccess, AllocReply, { size }, { memory: a.cid });
  }

  /** Served device memory (cuda, or cpu with sharedMemory false). */
  async #allocServed(ctx: Context, size: number): Promise<Allocation> {
    const handle = this.#backend.alloc(size);
    const a: Allocation = { ctx, handle, size, cid: 0, key: '', region: null, freed: false };
    const backend = this.#backend;
    try {
      a.cid = await this.#p.memoryCreateServed(size, Perm.RW, {
        read: (offset, length) => {
          if (a.freed) throw new FractosError('EREVOKED', 'device memory freed');
          return backend.read(handle, offset, length);
        },
        write: (offset, data) => {
          if (a.freed) throw new FractosError('EREVOKED', 'device memory freed');
          return backend.write(handle, offset, data);
        },
      });
      a.key = `s:${(await this.#p.memoryStat(a.cid)).servedKey}`;
    } catch (err) {
      backend.free(handle);
      throw err;
    }
    return a;
  }

  /**
   * cpu: device memory = a page-aligned memfd region (zero-filled) registered as shared
   * Memory, wrapped by the backend in place. Rounded up to 4 KiB so that O_DIRECT reads
   * into block-aligned views of it stay aligned; the Memory object is exactly `size`.
   */
  async #allocShared(ctx: Context, size: number): Promise<Allocation> {
    const region = this.#p.allocShared(Math.ceil(size / 4096) * 4096);
    let handle = 0;
    try {
      handle = this.#backend.allocExternal(region.buffer, 0, size);
      const cid = await this.#p.memoryCreate(region, Perm.RW, 0, size);
      return { ctx, handle, size, cid, key: `r:${region.key}`, region, freed: false };
    } catch (err) {
      if (handle) this.#backend.free(handle);
      this.#p.freeShared(region);
      throw err;
    }
  }

  async #load(context: number, kernel: string, onSuccess: number): Promise<void> {
    const ctx = this.#context(context);
    const k = this.#backend.loadKernel(kernel); // ENOENT
    const idx = KERNEL_IDS.indexOf(k.name);
    const cid = await this.#p.createRequest(Invoke, { context: ctx.id, kernel: idx });
    ctx.requests.push(cid);
    await this.#watch(ctx, cid);
    await this.#p.invoke(onSuccess, LoadReply, {}, { invoke: cid });
  }

  async #cleanupRequest(context: number, onSuccess: number): Promise<void> {
    const ctx = this.#context(context);
    await this.#free(ctx);
    try {
      await this.#p.invoke(onSuccess, DoneReply);
    } catch {
      // The client may be gone.
    }
  }

  /** Revoke every object of the context and free its device memory. Idempotent. */
  async #free(ctx: Context): Promise<void> {
    if (ctx.closed) return;
    ctx.closed = true;
    this.#contexts.delete(ctx.id);
    const cids = [...ctx.requests];
    for (const a of ctx.allocs) cids.push(a.cid);
    await Promise.all(cids.map((cid) => this.#p.capRevoke(cid).catch(() => {})));
    for (const a of [...ctx.allocs]) this.#freeAlloc(a);
    await this.#p.capDrop(...cids).catch(() => {});
  }

  #freeAlloc(a: Allocation): void {
    if (a.freed) return;
    a.freed = true;
    a.ctx.allocs.delete(a);
    a.ctx.bytes -= a.size;
    this.#allocs.delete(a.key);
    if (a.region) this.#p.freeShared(a.region); // the mapping lives on until the last reference goes
    else this.#p.releaseServed(Number(a.key.slice(2)));
    const tryFree = (left: number): void => {
      try {
        this.#backend.free(a.handle);
      } catch (err) {
        // EBUSY: a copy or launch is still using it; try again shortly.
        if ((err as FractosError).code === 'EBUSY' && left > 0) setTimeout(() => tryFree(left - 1), 20).unref();
      }
    };
    tryFree(100);
    if (!a.ctx.closed) this.#p.capRevoke(a.cid).then(() => this.#p.capDrop(a.cid)).catch(() => {});
  }

  /** Resolve a delivered Memory cid to a view of one of our allocations. */
  async #view(cid: number, role: string, need: number, desc?: MemoryDescriptor): Promise<DeviceView> {
    if (!cid) throw new FractosError('EINVAL', `${role} buffer missing`);
    // The delivery's descriptor when the Process asked for them (no round trip), else memory_stat.
    let st = desc;
    if (!st) {
      try {
        st = await this.#p.memoryStat(cid);
      } catch (err) {
        const e = asFractos(err);
        throw new FractosError(e.code, `${role}: ${e.message}`);
      }
    }
    // Ours: owned by this Process, and the served key or the region key is in our table
    // (a region key is only trusted for an object we own: memoryStat's `self`).
    const a = !st.self ? undefined : st.backing === 'served' ? this.#allocs.get(`s:${st.servedKey}`) : st.regionKey ? this.#allocs.get(`r:${st.regionKey}`) : undefined;
    if (!a) throw new FractosError('EPERM', `${role} is not device memory of this adaptor`);
    if (!(st.perms & need)) throw new FractosError('EPERM', `${role} lacks ${need & Perm.WRITE ? 'write' : 'read'} permission`);
    return { alloc: a, offset: st.regionOffset, size: st.size, perms: st.perms };
  }

  #invoke({ imms, caps }: ReturnType<typeof Invoke.decode>, inv: Invocation): Promise<void> | void {
    const desc = (role: InvokeSlot): MemoryDescriptor | undefined => inv.memory?.(Invoke.slotBase + Invoke.capNames.indexOf(role));
    const bare = imms.arrive === 1;
    if (!bare && imms.expect <= 1) return this.#guard(caps.onError, () => this.#run(imms, caps, desc));
    // Barrier of `batch`: `expect` invocations (counted from the first one carrying
    // arguments, which runs the kernel once all have arrived; later carriers only count).
    // A bare arrival (`arrive` = 1) only counts: the chain's read continuations, with no
    // caps to deliver, stat or drop. The others wait with the runner (their delivered cids
    // are dropped when it settles).
    const key = `${imms.context}:${imms.kernel}:${imms.batch}`;
    let b = this.#barriers.get(key);
    if (!b) {
      let settle!: (err: FractosError | null) => void;
      const done = new Promise<void>((resolve, reject) => {
        settle = (err) => (err ? reject(err) : resolve());
      });
      done.catch(() => {});
      const timer = setTimeout(() => {
        this.#barriers.delete(key);
        settle(new FractosError('ETIMEDOUT', `batch ${imms.batch}: ${nb.arrived} of ${nb.expect || '?'} invocations after ${this.#barrierTimeoutMs} ms`));
      }, this.#barrierTimeoutMs);
      timer.unref();
      const nb: Barrier = { arrived: 0, expect: 0, carrier: false, timer, settle, done };
      b = nb;
      this.#barriers.set(key, b);
    }
    const barrier = b;
    barrier.arrived++;
    const runs = !bare && !barrier.carrier;
    if (runs) {
      barrier.carrier = true;
      barrier.expect = Math.max(1, imms.expect);
    }
    if (barrier.carrier && barrier.arrived >= barrier.expect && this.#barriers.get(key) === barrier) {
      clearTimeout(barrier.timer);
      this.#barriers.delete(key);
      barrier.settle(null);
    }
    if (!runs) return barrier.done.catch(() => {});
    return this.#guard(caps.onError, async () => {
      await barrier.done;
      await this.#run(imms, caps, desc);
    });
  }

  async #run(
    imms: ReturnType<typeof Invoke.decode>['imms'],
    caps: ReturnType<typeof Invoke.decode>['caps'],
    desc: (role: InvokeSlot) => MemoryDescriptor | undefined,
  ): Promise<void> {
    const ctx = this.#context(imms.context);
    const kname = KERNEL_IDS[imms.kernel];
    if (!kname) throw new FractosError('ENOENT', `kernel index ${imms.kernel}`);
    const kernel: Kernel = this.#backend.loadKernel(kname);
    const { n, gridX, gridY } = imms;
    if (n < 1 || n > MAX_PAIRS) throw new FractosError('EINVAL', `n = ${n} not in 1..${MAX_PAIRS}`);
    if (gridX < 1 || gridX > IMAGE_WIDTH - 2 || gridY < 1 || gridY > IMAGE_HEIGHT - 2) {
      throw new FractosError('EINVAL', `grid ${gridX}x${gridY} not in 1..${IMAGE_WIDTH - 2} x 1..${IMAGE_HEIGHT - 2}`);
    }
    const stride = imms.stride || IMAGE_BYTES;
    if (stride < IMAGE_BYTES) throw new FractosError('EINVAL', `stride ${stride} < ${IMAGE_BYTES}`);
    const hb = histogramBytes(gridX, gridY);
    const check = (v: DeviceView, role: string, bytes: number): void => {
      if (v.size < bytes) throw new FractosError('ERANGE', `${role} holds ${v.size} bytes, needs ${bytes} for n = ${n}`);
    };
    const arg = (v: DeviceView, extra = 0): BufferArg => ({ handle: v.alloc.handle, offset: v.offset + extra });
    let buffers: BufferArg[];
    let scores: DeviceView | null = null;
    let packNs = 0n;
    const scratch: number[] = [];
    try {
      if (kernel.name === 'lbp_chi2_batch') {
        const [probes, enrolled, sc, hists] = await Promise.all([
          this.#view(caps.probes, 'probes', Perm.READ, desc('probes')),
          this.#view(caps.enrolled, 'enrolled', Perm.READ, desc('enrolled')),
          this.#view(caps.scores, 'scores', Perm.WRITE, desc('scores')),
          caps.histograms ? this.#view(caps.histograms, 'histograms', Perm.WRITE, desc('histograms')) : Promise.resolve(null),
        ]);
        check(probes, 'probes', n * IMAGE_BYTES);
        const slots = imms.slots;
        if (slots > 0) {
          if (n > GATHER_MAX) throw new FractosError('EINVAL', `gather needs n <= ${GATHER_MAX}, got ${n}`);
          for (let i = 0; i < n; i++) if ((imms.gather[i] ?? 0) >= slots) throw new FractosError('EINVAL', `gather[${i}] = ${imms.gather[i]} >= slots ${slots}`);
        }
        const images = slots > 0 ? slots : n;
        check(enrolled, 'enrolled', (images - 1) * stride + IMAGE_BYTES);
        check(sc, 'scores', n * 8);
        if (hists) check(hists, 'histograms', 2 * n * hb);
        scores = sc;
        let enrolledArg = arg(enrolled);
        if (stride !== IMAGE_BYTES || slots > 0) {
          // Pack (and gather) the slots into a scratch buffer: one device read, one write.
          const t0 = process.hrtime.bigint();
          const raw = await this.#backend.read(enrolled.alloc.handle, enrolled.offset, (images - 1) * stride + IMAGE_BYTES);
          const packed = new Uint8Array(n * IMAGE_BYTES);
          for (let i = 0; i < n; i++) {
            const j = slots > 0 ? imms.gather[i]! : i;
            packed.set(raw.subarray(j * stride, j * stride + IMAGE_BYTES), i * IMAGE_BYTES);
          }
          const h = this.#backend.alloc(packed.length);
          scratch.push(h);
          await this.#backend.write(h, 0, packed);
          enrolledArg = { handle: h, offset: 0 };
          packNs = process.hrtime.bigint() - t0;
        }
        buffers = [arg(probes), enrolledArg, arg(sc)];
        if (hists) buffers.push(arg(hists), arg(hists, n * hb));
      } else {
        // lbp_hist_batch: images in `probes`, histograms out in `histograms`.
        const [images, hists] = await Promise.all([
          this.#view(caps.probes, 'probes', Perm.READ, desc('probes')),
          this.#view(caps.histograms, 'histograms', Perm.WRITE, desc('histograms')),
        ]);
        check(images, 'probes', n * IMAGE_BYTES);
        check(hists, 'histograms', n * hb);
        buffers = [arg(images), arg(hists)];
      }
      if (ctx.closed) throw new FractosError('EREVOKED', `context ${ctx.id} was cleaned up`);
      const t0 = process.hrtime.bigint();
      await this.#backend.launch(kernel, { buffers, scalars: { n, gridX, gridY } });
      const kernelNs = process.hrtime.bigint() - t0;
      this.#launches++;
      let copyNs = 0n;
      if (caps.out && scores) {
        const t1 = process.hrtime.bigint();
        await this.#copyOut(caps.scores, scores, n * 8, caps.out);
        copyNs = process.hrtime.bigint() - t1;
      }
      await this.#p.invoke(caps.onSuccess, InvokeReply, { n, kernelNs: Number(kernelNs), packNs: Number(packNs), copyNs: Number(copyNs) });
    } finally {
      for (const h of scratch) {
        try {
          this.#backend.free(h);
        } catch {
          // launch settled: cannot be busy
        }
      }
    }
  }

  /** Copy the first `bytes` of the scores view into the client's `out` Memory. */
  async #copyOut(scoresCid: number, scores: DeviceView, bytes: number, out: number): Promise<void> {
    const src = scores.size === bytes ? scoresCid : await this.#p.memoryDiminish(scoresCid, 0, bytes);
    try {
      await this.#p.memoryCopy(src, out);
    } finally {
      if (src !== scoresCid) this.#p.capDrop(src).catch(() => {});
    }
  }

  /** Revoke everything and release the backend. */
  async close(): Promise<void> {
    for (const ctx of [...this.#contexts.values()]) await this.#free(ctx);
    for (const b of this.#barriers.values()) {
      clearTimeout(b.timer);
      b.settle(new FractosError('EREVOKED', 'adaptor closing'));
    }
    this.#barriers.clear();
    if (this.#initCid) await this.#p.capRevoke(this.#initCid).catch(() => {});
  }
}


function asFractos(err: unknown): FractosError {
  if (err instanceof FractosError) return err;
  const code = (err as { code?: unknown })?.code;
  return new FractosError(typeof code === 'string' && /^E[A-Z]+$/.test(code) ? (code as ErrorCode) : 'EIO', err instanceof Error ? err.message : String(err));
}

function truncate(s: string, max: number): string {
  const b = Buffer.from(s, 'utf8');
  return b.length <= max ? s : b.subarray(0, max).toString('utf8').replace(/\uFFFD$/, '');
}

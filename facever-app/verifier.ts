/**
 * Face-verification batches over FractOS (DESIGN.md §5 facever-app, paper §5 and §6.5):
 * a batch of (enrolled id, probe photo) pairs is scored by the GPU adaptor's
 * `lbp_chi2_batch` kernel (uniform-LBP histograms over a grid, chi-square distance; after
 * Ahonen, Hadid, Pietikäinen, IEEE TPAMI 28(12), 2006) against the enrolled photo of each
 * id, read from the FS service. Three pipelines over the same services (docs/facever.md):
 *
 * - `chain` (the FractOS way): the app copies the probes to the GPU and, at the same time,
 *   invokes one DAX read per enrolled photo whose `buffer` is a view of the pooled GPU
 *   buffer at slot i and whose continuation is the kernel invoke Request derived once per
 *   pool slot as a bare barrier arrival (`arrive`, the slot's barrier key); after the probes
 *   copy the app invokes the kernel with the arguments (`expect` = reads + 1); the kernel's
 *   continuation copies the scores into the app's Memory (`out`) and invokes the app's done
 *   Request. The app sees one completion.
 * - `fast-star`: control through the app, data direct: DAX reads into GPU memory, each
 *   completion returns to the app; then the app invokes the kernel, waits, and copies the
 *   scores back.
 * - `star`: the app reads every photo through the FS (mediated) into its own memory, copies
 *   probes and photos to the GPU, invokes the kernel, copies the scores back; every step
 *   returns to the app.
 *
 * In every design a batch reads each distinct enrolled photo once (a batch of 256 pairs
 * names at most 40 ORL identities) into slot j, and the kernel invocation carries the
 * pair -> slot map (`gather`), which the adaptor applies on the device.
 *
 * Resources: a pool of `slots` pre-allocated GPU buffer sets (probes, enrolled, scores) and
 * host buffers, with their Memory views and continuation Requests made once and reused;
 * a batch takes a slot, or waits in a bounded queue (EBUSY past it: back-pressure).
 * A GPU adaptor that goes away fails the batches in flight (EFAULT, "GPU adaptor went
 * away") and the verifier re-initialises when `${gpu}.init` answers again (kv_wait loop),
 * or, with a resource manager (`rm`), as soon as it grants another live GPU adaptor.
 */
import { EventEmitter } from 'node:events';
import { FractosError, errorCodeFromWire, type ErrorCode } from '../libfractos/errors.js';
import type { Process, SharedRegion } from '../libfractos/process.js';
import { ErrorReply, defineRequest, type Invocation } from '../libfractos/schema.js';
import { FsClient, type OpenFile } from '../fs-service/client.js';
import { Read as FsRead } from '../fs-service/schema.js';
import { VolumeRead } from '../blockdev-adaptor/schema.js';
import { GpuContext } from '../gpu-adaptor/client.js';
import type { Grant, RmClient } from '../rm/index.js';
import { IMAGE_BYTES } from '../gpu-adaptor/backend.js';
import { GATHER_MAX, Invoke, InvokeReply } from '../gpu-adaptor/schema.js';
import { DEFAULT_GRID } from './accuracy.js';
import { DEFAULT_PREFIX, closeAll, openEnrolled } from './store.js';

export type Design = 'chain' | 'fast-star' | 'star';
export const DESIGNS: readonly Design[] = ['chain', 'fast-star', 'star'];

/** Continuations of a pool slot: `slot` and `gen` preset (below the reply fields). */
const GpuDone = defineRequest('facever.gpu_done', { slot: 'u32', gen: 'u32' }, [] as const);
const ReadDone = defineRequest('facever.read_done', { slot: 'u32', gen: 'u32' }, [] as const);
const Failed = defineRequest('facever.failed', { slot: 'u32', gen: 'u32' }, [] as const);

export interface VerifierOptions {
  design: Design;
  /** GPU buffer sets in the pool = batches in flight (default 4). */
  slots?: number;
  /** Most pairs per batch (default 256). */
  maxBatch?: number;
  /** Batches allowed to wait for a slot before EBUSY (default 16). */
  maxQueued?: number;
  /** Bootstrap names (defaults 'gpu', 'fs'). */
  gpuName?: string;
  fsName?: string;
  /** FS prefix of the enrolled files. */
  prefix?: string;
  /** Enrolled ids (from meta.json). */
  ids: number[];
  gridX?: number;
  gridY?: number;
  /** Per-batch timeout (ms, default 15000). */
  timeoutMs?: number;
  /**
   * Get the GPU and the FS from this resource-manager session (docs/rm.md) instead of by
   * bootstrap name: `acquire('gpu')` (least loaded) and `acquire('fs')`; after a GPU failure
   * the verifier acquires again and gets a live instance (the survivor).
   */
  rm?: RmClient;
}

/** Time spent per stage of one batch, µs (stages of the design; overlapping in chain). */
export type StageTimes = Record<string, number>;

export interface BatchResult {
  /** Chi-square distance per pair (smaller = more similar). */
  scores: Float64Array;
  /** End-to-end µs and per-stage µs. */
  totalUs: number;
  stages: StageTimes;
}

interface Waiter {
  kind: 'reads' | 'gpu';
  left: number;
  resolve: (inv: Invocation | null) => void;
  reject: (e: FractosError) => void;
}

interface Slot {
  index: number;
  gen: number;
  busy: boolean;
  poisoned: boolean;
  waiter: Waiter | null;
  // continuations (our Requests)
  done: number;
  readDone: number;
  failed: number;
  /** chain: the GPU invoke Request derived with {batch: barrier key, arrive: 1}: the DAX reads' continuation. */
  arrive: number;
  // GPU memory (served by the adaptor) and views
  gProbes: number;
  gEnrolled: number;
  gScores: number;
  gEnrolledSlot: number[];
  gScoresN: Map<number, number>;
  // host memory
  region: SharedRegion;
  host: number;
  hProbesN: Map<number, number>;
  hEnrolledN: Map<number, number>;
  hOutN: Map<number, number>;
  hEnrolledSlot: number[];
}

const round = (x: number, a: number): number => Math.ceil(x / a) * a;

export class Verifier extends EventEmitter {
  readonly p: Process;
  readonly design: Design;
  readonly slots: number;
  readonly maxBatch: number;
  /** Batches allowed to wait for a buffer set before EBUSY. */
  readonly maxQueued: number;
  readonly gridX: number;
  readonly gridY: number;
  readonly #o: VerifierOptions;
  #fs!: FsClient;
  #files = new Map<number, OpenFile>();
  #gpu: GpuContext | null = null;
  /** With `rm`: the grants the GPU context and the FS came from. */
  #gpuGrant: Grant | null = null;
  #fsGrant: Grant | null = null;
  #invoke = 0;
  #pool: Slot[] = [];
  #queue: { resolve: (s: Slot) => void; reject: (e: Error) => void }[] = [];
  #state: 'ready' | 'recovering' | 'closed' = 'ready';
  /** Bytes between enrolled images in GPU memory (block-aligned for DAX reads). */
  #stride = IMAGE_BYTES;
  /** DAX read length (IMAGE_BYTES rounded up to the block size). */
  #readLen = IMAGE_BYTES;
  #recovering: Promise<void> | null = null;

  private constructor(p: Process, o: VerifierOptions) {
    super();
    this.p = p;
    this.#o = o;
    this.design = o.design;
    this.slots = o.slots ?? 4;
    this.maxBatch = o.maxBatch ?? 256;
    this.maxQueued = o.maxQueued ?? 16;
    this.gridX = o.gridX ?? DEFAULT_GRID.gridX;
    this.gridY = o.gridY ?? DEFAULT_GRID.gridY;
  }

  /**
   * Connect to the FS and the GPU adaptor, open the enrolled files (DAX for chain and
   * fast-star, mediated for star) and build the pool. Errors: ENOENT (services or files
   * missing), the services' codes.
   */
  static async open(p: Process, o: VerifierOptions): Promise<Verifier> {
    if (!DESIGNS.includes(o.design)) throw new FractosError('EINVAL', `unknown design '${o.design}' (chain, fast-star, star)`);
    if (o.maxBatch !== undefined && (!Number.isInteger(o.maxBatch) || o.maxBatch < 1 || o.maxBatch > GATHER_MAX)) {
      throw new FractosError('EINVAL', `maxBatch must be in 1..${GATHER_MAX}`);
    }
    const v = new Verifier(p, o);
    if (o.rm) {
      v.#fsGrant = await o.rm.acquire('fs', { waitMs: 10_000 });
      v.#fs = FsClient.fromRoots(p, v.#fsGrant.requests);
    } else v.#fs = await FsClient.connect(p, o.fsName ?? 'fs');
    v.#files = await openEnrolled(v.#fs, o.ids, o.design !== 'star', o.prefix ?? DEFAULT_PREFIX);
    if (o.design !== 'star') {
      const bs = Math.max(...[...v.#files.values()].map((f) => f.blockSize || 512));
      v.#readLen = round(IMAGE_BYTES, bs);
      v.#stride = round(IMAGE_BYTES, Math.max(bs, 4096));
    }
    v.#handlers();
    try {
      await v.#setupGpu();
    } catch (err) {
      await v.close();
      throw err;
    }
    return v;
  }

  /** Ids that can be verified. */
  get ids(): number[] {
    return [...this.#files.keys()];
  }

  get ready(): boolean {
    return this.#state === 'ready';
  }

  /** The GPU context's backend and device, and the RM instance name when acquired through one (after open / recovery). */
  get gpuInfo(): { backend: string; device: string; instance?: string } {
    return { backend: this.#gpu?.backend ?? '', device: this.#gpu?.device ?? '', instance: this.#gpuGrant?.name ?? '' };
  }

  #handlers(): void {
    const slotOf = (inv: Invocation, schema: typeof GpuDone): Slot | null => {
      const { slot, gen } = schema.decode(inv).imms;
      const s = this.#pool[slot];
      return s && s.gen === gen && s.waiter ? s : null;
    };
    this.p.onRequest(GpuDone.tag, (inv) => {
      const s = slotOf(inv, GpuDone);
      if (!s || s.waiter!.kind !== 'gpu') return;
      const w = s.waiter!;
      s.waiter = null;
      w.resolve(inv);
    });
    this.p.onRequest(ReadDone.tag, (inv) => {
      const s = slotOf(inv, ReadDone);
      if (!s || s.waiter!.kind !== 'reads') return;
      if (--s.waiter!.left === 0) {
        const w = s.waiter!;
        s.waiter = null;
        w.resolve(null);
      }
    });
    this.p.onRequest(Failed.tag, (inv) => {
      const s = slotOf(inv, Failed);
      if (!s) return;
      const e = ErrorReply.decode(inv).imms;
      const w = s.waiter!;
      s.waiter = null;
      w.reject(new FractosError(errorCodeFromWire(e.code), e.message));
    });
  }

  // ---------------------------------------------------------------------------------
  // Pool

  /** A GPU context: through the RM (a new grant, the old one given back) or by bootstrap name. */
  async #openGpu(): Promise<GpuContext> {
    const rm = this.#o.rm;
    if (!rm) return GpuContext.open(this.p, this.#o.gpuName ?? 'gpu', { timeoutMs: 10_000 });
    const old = this.#gpuGrant;
    this.#gpuGrant = null;
    if (old) await old.release().catch(() => {});
    const grant = await rm.acquire('gpu', { waitMs: 10_000 });
    try {
      const gpu = await GpuContext.fromInit(this.p, grant.request('init'), { timeoutMs: 10_000 });
      this.#gpuGrant = grant;
      return gpu;
    } catch (err) {
      await grant.release().catch(() => {});
      throw err;
    }
  }

  async #setupGpu(): Promise<void> {
    const gpu = await this.#openGpu();
    this.#gpu = gpu;
    this.#invoke = await gpu.load('lbp_chi2_batch');
    const m = this.maxBatch;
    const pool: Slot[] = [];
    for (let i = 0; i < this.slots; i++) {
      const old = this.#pool[i];
      const [gProbes, gEnrolled, gScores] = await Promise.all([gpu.alloc(m * IMAGE_BYTES), gpu.alloc(m * this.#stride), gpu.alloc(m * 8)]);
      let region: SharedRegion;
      let host: number;
      if (old) {
        region = old.region;
        host = old.host;
      } else {
        const hostBytes = m * IMAGE_BYTES * 2 + m * 8;
        ({ cid: host, region } = await this.p.memoryCreateShared(hostBytes));
      }
      const s: Slot = {
        index: i,
        gen: (old?.gen ?? 0) + 1,
        busy: false,
        poisoned: false,
        waiter: null,
        done: 0,
        readDone: 0,
        failed: 0,
        arrive: 0,
        gProbes,
        gEnrolled,
        gScores,
        gEnrolledSlot: [],
        gScoresN: new Map(),
        region,
        host,
        hProbesN: old?.hProbesN ?? new Map(),
        hEnrolledN: old?.hEnrolledN ?? new Map(),
        hOutN: old?.hOutN ?? new Map(),
        hEnrolledSlot: old?.hEnrolledSlot ?? [],
      };
      await this.#makeContinuations(s);
      if (this.design === 'star') {
        if (s.hEnrolledSlot.length === 0) {
          s.hEnrolledSlot = await Promise.all(Array.from({ length: m }, (_, k) => this.p.memoryDiminish(host, (m + k) * IMAGE_BYTES, IMAGE_BYTES)));
        }
      } else {
        s.gEnrolledSlot = await Promise.all(Array.from({ length: m }, (_, k) => this.p.memoryDiminish(gEnrolled, k * this.#stride, this.#stride)));
      }
      pool.push(s);
    }
    this.#pool = pool;
    await gpu.onLost((ev) => {
      if (this.#gpu === gpu) this.#gpuLost(ev);
    });
  }

  async #makeContinuations(s: Slot): Promise<void> {
    const old = [s.done, s.readDone, s.failed].filter(Boolean);
    if (old.length) {
      await Promise.all(old.map((c) => this.p.capRevoke(c).catch(() => {})));
      await this.p.capDrop(...old).catch(() => {});
    }
    // A derived Request of the adaptor's: revoking is the adaptor's business; drop ours.
    if (s.arrive) this.p.capDrop(s.arrive).catch(() => {});
    s.arrive = 0;
    const a = { slot: s.index, gen: s.gen };
    [s.done, s.readDone, s.failed] = await Promise.all([
      this.p.createRequest(GpuDone, a),
      this.p.createRequest(ReadDone, a),
      this.p.createRequest(Failed, a),
    ]);
    if (this.design === 'chain' && this.#invoke) {
      s.arrive = await this.p.requestDerive(this.#invoke, Invoke.args({ batch: this.#barrierKey(s), arrive: 1 }));
    }
  }

  /**
   * chain: the barrier key of a slot's batches. Batches on a slot run one at a time and a
   * failed one bumps the generation (new continuations, new key), so no arrival of an
   * earlier batch can count towards a later one.
   */
  #barrierKey(s: Slot): number {
    return ((s.index + 1) * 0x10000 + (s.gen & 0xffff)) >>> 0;
  }

  async #acquire(): Promise<Slot> {
    if (this.#state !== 'ready') throw this.#unavailable();
    const s = this.#pool.find((x) => !x.busy && !x.poisoned);
    if (s) {
      s.busy = true;
      return s;
    }
    if (this.#queue.length >= this.maxQueued) {
      throw new FractosError('EBUSY', `all ${this.slots} GPU buffer sets busy and ${this.#queue.length} batches queued`);
    }
    return new Promise((resolve, reject) => this.#queue.push({ resolve, reject }));
  }

  #release(s: Slot): void {
    s.busy = false;
    if (s.poisoned || this.#state !== 'ready') return;
    const next = this.#queue.shift();
    if (next) {
      s.busy = true;
      next.resolve(s);
    }
  }

  /** A failed or timed-out batch may still get completions: new continuations first. */
  async #recycle(s: Slot): Promise<void> {
    s.poisoned = true;
    s.gen++;
    try {
      if (this.#state === 'ready') await this.#makeContinuations(s);
      s.poisoned = false;
    } catch {
      // The pool is rebuilt on recovery.
    }
    this.#release(s);
  }

  #unavailable(): FractosError {
    return this.#state === 'closed' ? new FractosError('EREVOKED', 'verifier closed') : new FractosError('EAGAIN', 'GPU adaptor unavailable (re-initialising)');
  }

  #view(cache: Map<number, number>, base: number, offset: number, size: number): Promise<number> | number {
    const c = cache.get(size);
    if (c) return c;
    return this.p.memoryDiminish(base, offset, size).then((cid) => {
      cache.set(size, cid);
      return cid;
    });
  }

  #wait(s: Slot, kind: Waiter['kind'], left: number): Promise<Invocation | null> {
    const w = new Promise<Invocation | null>((resolve, reject) => {
      s.waiter = { kind, left, resolve, reject };
    });
    w.catch(() => {}); // may fail before it is awaited (the error also reaches the batch)
    return w;
  }

  // ---------------------------------------------------------------------------------
  // Batches

  /**
   * Score `pairs` (enrolled id, raw 92x112 probe pixels). Resolves with one chi-square
   * distance per pair. Errors: EINVAL (empty, too many pairs, bad image size), ENOENT
   * (unknown id), EBUSY (pool and queue full), EAGAIN (GPU re-initialising), EFAULT (GPU
   * adaptor went away mid-batch, or one of its or the FS's objects was revoked under the
   * batch), ETIMEDOUT, the services' codes.
   */
  async verify(pairs: readonly { id: number; image: Uint8Array }[]): Promise<BatchResult> {
    const n = pairs.length;
    if (n === 0 || n > this.maxBatch) throw new FractosError('EINVAL', `batch of ${n} pairs (1..${this.maxBatch})`);
    for (const pr of pairs) {
      if (!this.#files.has(pr.id)) throw new FractosError('ENOENT', `unknown id ${pr.id}`);
      if (pr.image.length !== IMAGE_BYTES) throw new FractosError('EINVAL', `image of ${pr.image.length} bytes, expected ${IMAGE_BYTES}`);
    }
    const t0 = performance.now();
    const s = await this.#acquire();
    const stages: StageTimes = { queue: (performance.now() - t0) * 1000 };
    let timer: NodeJS.Timeout | undefined;
    let ok = false;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new FractosError('ETIMEDOUT', `batch of ${n} pairs timed out after ${this.#o.timeoutMs ?? 15000} ms`)), this.#o.timeoutMs ?? 15000);
      });
      const run = this.design === 'chain' ? this.#chain(s, pairs, stages) : this.design === 'fast-star' ? this.#fastStar(s, pairs, stages) : this.#star(s, pairs, stages);
      run.catch(() => {});
      await Promise.race([run, timeout]);
      const outOff = 2 * this.maxBatch * IMAGE_BYTES;
      const scores = new Float64Array(s.region.bytes.slice(outOff, outOff + n * 8).buffer);
      ok = true;
      return { scores, totalUs: (performance.now() - t0) * 1000, stages };
    } catch (err) {
      if (s.waiter) {
        const w = s.waiter;
        s.waiter = null;
        w.reject(err as FractosError);
      }
      // A call on the adaptor's (or the FS's) objects can fail before the monitor that
      // reports the adaptor's failure fires: say what it means.
      if (err instanceof FractosError && err.code === 'EREVOKED') {
        throw new FractosError('EFAULT', `batch aborted: a GPU adaptor or FS object was revoked (the service went away?): ${err.message}`);
      }
      throw err;
    } finally {
      clearTimeout(timer);
      if (ok) this.#release(s);
      else void this.#recycle(s);
    }
  }

  /** Distinct enrolled ids of a batch (read once each) and each pair's index among them. */
  #gather(pairs: readonly { id: number }[]): { ids: number[]; gather: Uint8Array } {
    const at = new Map<number, number>();
    const gather = new Uint8Array(pairs.length);
    pairs.forEach((pr, i) => {
      let j = at.get(pr.id);
      if (j === undefined) at.set(pr.id, (j = at.size));
      gather[i] = j;
    });
    return { ids: [...at.keys()], gather };
  }

  #stageProbes(s: Slot, pairs: readonly { image: Uint8Array }[]): void {
    pairs.forEach((pr, i) => s.region.bytes.set(pr.image, i * IMAGE_BYTES));
  }

  /**
   * Common start of chain and fast-star: stage the probes in the slot's host memory, views
   * of the probes (n x 10304 B), of the app's score area and of the GPU scores (n x f64),
   * and the distinct enrolled ids of the batch with the pair -> slot map.
   */
  async #prologue(s: Slot, pairs: readonly { id: number; image: Uint8Array }[]): Promise<{ hProbes: number; hOut: number; gScoresN: number; g: { ids: number[]; gather: Uint8Array } }> {
    const n = pairs.length;
    this.#stageProbes(s, pairs);
    const [hProbes, hOut, gScoresN] = await Promise.all([
      this.#view(s.hProbesN, s.host, 0, n * IMAGE_BYTES),
      this.#view(s.hOutN, s.host, 2 * this.maxBatch * IMAGE_BYTES, n * 8),
      this.#view(s.gScoresN, s.gScores, 0, n * 8),
    ]);
    return { hProbes, hOut, gScoresN, g: this.#gather(pairs) };
  }

  async #chain(s: Slot, pairs: readonly { id: number; image: Uint8Array }[], st: StageTimes): Promise<void> {
    // Per batch: k DAX reads whose continuation is the slot's bare arrival Request (made
    // once per slot: no request_derive, no caps in those deliveries), and one kernel
    // invocation from the app carrying the arguments (expect = k + 1) after the probes copy.
    const n = pairs.length;
    const t = performance.now();
    const { hProbes, hOut, gScoresN, g } = await this.#prologue(s, pairs);
    st.setup = (performance.now() - t) * 1000;
    const t1 = performance.now();
    const done = this.#wait(s, 'gpu', 1);
    const reads = g.ids.map((id, j) => this.p.requestInvoke(this.#files.get(id)!.extents[0]!.read, VolumeRead.args(
      { offset: 0, length: this.#readLen },
      { buffer: s.gEnrolledSlot[j]!, onSuccess: s.arrive, onError: s.failed },
    )));
    const probes = this.p.memoryCopy(hProbes, this.#live(s.gProbes)).then(() => {
      st.probes = (performance.now() - t1) * 1000;
      return this.p.invoke(this.#live(this.#invoke), Invoke, {
        n, gridX: this.gridX, gridY: this.gridY, batch: this.#barrierKey(s), expect: g.ids.length + 1, stride: this.#stride, slots: g.ids.length, gather: g.gather,
      }, { probes: s.gProbes, enrolled: s.gEnrolled, scores: gScoresN, out: hOut, onSuccess: s.done, onError: s.failed });
    });
    await Promise.all([...reads, probes]);
    const r = InvokeReply.decode((await done)!).imms;
    st['reads+kernel+copy'] = (performance.now() - t1) * 1000;
    st.kernel = r.kernelNs / 1000;
    st.pack = r.packNs / 1000;
    st.copyOut = r.copyNs / 1000;
  }

  async #fastStar(s: Slot, pairs: readonly { id: number; image: Uint8Array }[], st: StageTimes): Promise<void> {
    const n = pairs.length;
    let t = performance.now();
    const { hProbes, hOut, gScoresN, g } = await this.#prologue(s, pairs);
    const reads = this.#wait(s, 'reads', g.ids.length);
    await Promise.all([
      ...g.ids.map((id, j) => this.p.requestInvoke(this.#files.get(id)!.extents[0]!.read, VolumeRead.args(
        { offset: 0, length: this.#readLen },
        { buffer: s.gEnrolledSlot[j]!, onSuccess: s.readDone, onError: s.failed },
      ))),
      this.p.memoryCopy(hProbes, s.gProbes),
    ]);
    await reads;
    st.reads = (performance.now() - t) * 1000;
    t = performance.now();
    await this.#kernel(s, n, this.#stride, g, gScoresN, st);
    st.invoke = (performance.now() - t) * 1000;
    t = performance.now();
    await this.p.memoryCopy(gScoresN, hOut);
    st.copyOut = (performance.now() - t) * 1000;
  }

  async #star(s: Slot, pairs: readonly { id: number; image: Uint8Array }[], st: StageTimes): Promise<void> {
    const n = pairs.length;
    let t = performance.now();
    this.#stageProbes(s, pairs);
    const m = this.maxBatch;
    const g = this.#gather(pairs);
    const k = g.ids.length;
    const [hProbes, hOut, gScoresN, hEnrolled] = await Promise.all([
      this.#view(s.hProbesN, s.host, 0, n * IMAGE_BYTES),
      this.#view(s.hOutN, s.host, 2 * m * IMAGE_BYTES, n * 8),
      this.#view(s.gScoresN, s.gScores, 0, n * 8),
      this.#view(s.hEnrolledN, s.host, m * IMAGE_BYTES, k * IMAGE_BYTES),
    ]);
    const reads = this.#wait(s, 'reads', k);
    await Promise.all(g.ids.map((id, j) => this.p.requestInvoke(this.#files.get(id)!.read, FsRead.args(
      { offset: 0, length: IMAGE_BYTES },
      { buffer: s.hEnrolledSlot[j]!, onSuccess: s.readDone, onError: s.failed },
    ))));
    await reads;
    st.reads = (performance.now() - t) * 1000;
    t = performance.now();
    await Promise.all([this.p.memoryCopy(hProbes, s.gProbes), this.p.memoryCopy(hEnrolled, s.gEnrolled)]);
    st.copyIn = (performance.now() - t) * 1000;
    t = performance.now();
    await this.#kernel(s, n, IMAGE_BYTES, g, gScoresN, st);
    st.invoke = (performance.now() - t) * 1000;
    t = performance.now();
    await this.p.memoryCopy(gScoresN, hOut);
    st.copyOut = (performance.now() - t) * 1000;
  }

  async #kernel(s: Slot, n: number, stride: number, g: { ids: number[]; gather: Uint8Array }, scores: number, st: StageTimes): Promise<void> {
    const done = this.#wait(s, 'gpu', 1);
    await this.p.invoke(this.#live(this.#invoke), Invoke, { n, gridX: this.gridX, gridY: this.gridY, stride, slots: g.ids.length, gather: g.gather }, {
      probes: s.gProbes, enrolled: s.gEnrolled, scores, onSuccess: s.done, onError: s.failed,
    });
    const r = InvokeReply.decode((await done)!).imms;
    st.kernel = r.kernelNs / 1000;
    st.pack = r.packNs / 1000;
  }

  // ---------------------------------------------------------------------------------
  // Failures

  /**
   * A cid on the GPU side, checked before use: 0 once the adaptor was lost while this batch
   * waited (the copy's REPLY and the adaptor's failure can arrive in one read, the failure
   * handled first). Errors: EFAULT "GPU adaptor went away".
   */
  #live(cid: number): number {
    if (cid === 0) throw new FractosError('EFAULT', 'GPU adaptor went away; batch aborted');
    return cid;
  }

  #gpuLost(ev: string): void {
    if (this.#state !== 'ready') return;
    this.#state = 'recovering';
    const err = new FractosError('EFAULT', `GPU adaptor went away (${ev}); batch aborted`);
    this.emit('gpu-lost', ev);
    for (const s of this.#pool) {
      if (s.waiter) {
        const w = s.waiter;
        s.waiter = null;
        w.reject(err);
      }
    }
    for (const q of this.#queue.splice(0)) q.reject(err);
    this.#gpu = null;
    this.#recovering = this.#recover();
  }

  async #recover(): Promise<void> {
    for (let attempt = 0; this.#state === 'recovering'; attempt++) {
      try {
        // Drop what pointed at the dead adaptor (the host side is kept).
        const dead: number[] = [this.#invoke];
        for (const s of this.#pool) {
          dead.push(s.arrive);
          s.arrive = 0;
        }
        for (const s of this.#pool) dead.push(s.gProbes, s.gEnrolled, s.gScores, ...s.gEnrolledSlot, ...s.gScoresN.values());
        this.p.capDrop(...dead.filter(Boolean)).catch(() => {});
        this.#invoke = 0;
        for (const s of this.#pool) {
          s.gEnrolledSlot = [];
          s.gScoresN = new Map();
          s.gProbes = s.gEnrolled = s.gScores = 0;
        }
        await this.#setupGpu();
        if (this.#state !== 'recovering') return;
        this.#state = 'ready';
        this.emit('gpu-ready', this.#gpu?.device);
        return;
      } catch (err) {
        this.emit('recover-retry', err);
        await new Promise((r) => setTimeout(r, Math.min(1000, 100 * (attempt + 1))));
      }
    }
  }

  /** Wait until the GPU side is back (tests, bench). Errors: ETIMEDOUT. */
  async whenReady(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.#state !== 'ready') {
      if (this.#state === 'closed') throw this.#unavailable();
      if (Date.now() > deadline) throw new FractosError('ETIMEDOUT', 'GPU adaptor did not come back');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Close files, free the GPU context and the pool. */
  async close(): Promise<void> {
    const wasReady = this.#state === 'ready';
    this.#state = 'closed';
    for (const q of this.#queue.splice(0)) q.reject(this.#unavailable());
    await this.#recovering?.catch(() => {});
    if (this.#fs) await closeAll(this.#fs, this.#files);
    if (this.#gpu && wasReady) await this.#gpu.cleanup().catch(() => {});
    for (const g of [this.#gpuGrant, this.#fsGrant]) await g?.release().catch(() => {});
    this.#gpuGrant = this.#fsGrant = null;
    const mine: number[] = [];
    for (const s of this.#pool) {
      if (s.arrive) this.p.capDrop(s.arrive).catch(() => {});
      mine.push(s.done, s.readDone, s.failed, s.host, ...s.hProbesN.values(), ...s.hEnrolledN.values(), ...s.hOutN.values(), ...s.hEnrolledSlot);
    }
    await Promise.all(mine.filter(Boolean).map((c) => this.p.capRevoke(c).catch(() => {})));
    await this.p.capDrop(...mine.filter(Boolean)).catch(() => {});
    this.#pool = [];
  }
}

/** An error code for HTTP: 4xx for client mistakes, 503 for back-pressure and recovery, 500 else. */
export function httpStatusOf(code: ErrorCode): number {
  switch (code) {
    case 'EINVAL':
    case 'ERANGE':
      return 400;
    case 'ENOENT':
      return 404;
    case 'EBUSY':
    case 'EAGAIN':
      return 503;
    case 'ETIMEDOUT':
      return 504;
    default:
      return 502;
  }
}

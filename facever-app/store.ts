/**
 * The enrolled-photo database of facever-app, kept as files in the FS service.
 *
 * Layout (docs/facever.md): one file per identity, `${prefix}/s<ID>.raw`, holding the raw
 * 92 x 112 u8 pixels of photo 1 of ORL subject ID (10304 bytes, no PGM header), so that a
 * DAX read of the file's first blocks lands in a GPU buffer slot ready for the kernel (the
 * block-aligned tail beyond byte 10304 is ignored: the adaptor packs slots by `stride`).
 * `${prefix}/meta.json` records the ids, the grid and the decision threshold (the EER
 * threshold measured at enrollment on the ORL protocol of accuracy.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FsClient, type OpenFile } from '../fs-service/client.js';
import { OpenMode, Read, Write } from '../fs-service/schema.js';
import { FractosError } from '../libfractos/errors.js';
import type { Process } from '../libfractos/process.js';
import { IMAGE_BYTES, IMAGE_HEIGHT, IMAGE_WIDTH } from '../gpu-adaptor/backend.js';
import { DEFAULT_GRID, equalErrorRate, orlPairs, rocAuc } from './accuracy.js';
import { chiSquare, lbpHistogram, readPgm } from './lbp.js';

/** Default FS path prefix of the enrolled files. */
export const DEFAULT_PREFIX = '/enrolled';
/**
 * Decision threshold used when meta.json has none: the EER threshold of the 3x4 grid on
 * all 40 ORL subjects (docs/facever.md), rounded.
 */
export const DEFAULT_THRESHOLD = 1900;

/** What enrollment records next to the photos. */
export interface EnrollMeta {
  ids: number[];
  gridX: number;
  gridY: number;
  /** Accept a pair when score <= threshold. */
  threshold: number;
  /** Accuracy of the threshold's evaluation (ORL pairs of the enrolled subjects, TS reference). */
  auc: number;
  eer: number;
  pairs: number;
}

/** Path of the enrolled photo of `id`. */
export function enrolledPath(prefix: string, id: number): string {
  return `${prefix}/s${id}.raw`;
}

/** Raw pixels of ORL photo `photo` of subject `id` under `dataset` (s<ID>/<photo>.pgm). @throws EINVAL (not 92x112) */
export function loadOrl(dataset: string, id: number, photo: number): Uint8Array {
  const img = readPgm(readFileSync(join(dataset, `s${id}`, `${photo}.pgm`)));
  if (img.width !== IMAGE_WIDTH || img.height !== IMAGE_HEIGHT) throw new FractosError('EINVAL', `s${id}/${photo}.pgm is ${img.width}x${img.height}, not 92x112`);
  return img.pixels;
}

/** Subject ids present in an ORL-layout directory (s1..sN with 1.pgm), ascending. */
export function orlSubjects(dataset: string): number[] {
  const ids: number[] = [];
  for (let i = 1; i <= 1000; i++) {
    if (existsSync(join(dataset, `s${i}`, '1.pgm'))) ids.push(i);
    else if (i > 40) break;
  }
  return ids;
}

/** EER threshold and accuracy on the ORL pairs of `ids`, with the TS reference kernel. */
export function measureThreshold(dataset: string, ids: number[], gridX: number, gridY: number): { threshold: number; auc: number; eer: number; pairs: number } {
  if (ids.length < 10) return { threshold: DEFAULT_THRESHOLD, auc: NaN, eer: NaN, pairs: 0 };
  const cache = new Map<string, Uint32Array>();
  const hist = (id: number, k: number): Uint32Array => {
    const key = `${id}/${k}`;
    let h = cache.get(key);
    if (!h) cache.set(key, (h = lbpHistogram(loadOrl(dataset, id, k), IMAGE_WIDTH, IMAGE_HEIGHT, gridX, gridY)));
    return h;
  };
  const g: number[] = [];
  const im: number[] = [];
  const pairs = orlPairs(ids);
  for (const p of pairs) (p.genuine ? g : im).push(chiSquare(hist(p.probe, p.photo), hist(p.enrolled, 1)));
  const { eer, threshold } = equalErrorRate(g, im);
  return { threshold, auc: rocAuc(g, im), eer, pairs: pairs.length };
}

async function writeFile(fs: FsClient, p: Process, path: string, data: Uint8Array, staging: { cid: number; bytes: Uint8Array }): Promise<void> {
  const f = await fs.open(path, { mode: OpenMode.RW, create: true });
  try {
    if (f.size > data.length) await fs.truncate(path, data.length);
    staging.bytes.set(data);
    const view = await p.memoryDiminish(staging.cid, 0, data.length);
    try {
      await p.rpc(f.write, Write, { offset: 0, length: data.length }, { buffer: view }, { timeoutMs: 60_000 });
    } finally {
      p.capDrop(view).catch(() => {});
    }
  } finally {
    await fs.close(f);
  }
}

/**
 * Store photo 1 of every subject of `dataset` as `${prefix}/s<ID>.raw` and write meta.json.
 * Errors: the FS's codes; EINVAL for a malformed dataset.
 */
export async function enroll(p: Process, fs: FsClient, dataset: string, opts: { prefix?: string; gridX?: number; gridY?: number; log?: (s: string) => void } = {}): Promise<EnrollMeta> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  const gridX = opts.gridX ?? DEFAULT_GRID.gridX;
  const gridY = opts.gridY ?? DEFAULT_GRID.gridY;
  const ids = orlSubjects(dataset);
  if (ids.length === 0) throw new FractosError('ENOENT', `no ORL subjects (s<N>/1.pgm) under ${dataset}`);
  const { cid, region } = await p.memoryCreateShared(64 * 1024);
  const staging = { cid, bytes: region.bytes };
  try {
    for (const id of ids) await writeFile(fs, p, enrolledPath(prefix, id), loadOrl(dataset, id, 1), staging);
    const m = measureThreshold(dataset, ids, gridX, gridY);
    const meta: EnrollMeta = { ids, gridX, gridY, ...m };
    await writeFile(fs, p, `${prefix}/meta.json`, Buffer.from(JSON.stringify(meta)), staging);
    opts.log?.(`enrolled ${ids.length} identities under ${prefix}; threshold ${m.threshold.toFixed(1)} (EER ${(100 * m.eer).toFixed(2)}% on ${m.pairs} ORL pairs)`);
    return meta;
  } finally {
    await p.capDrop(cid).catch(() => {});
  }
}

/** Read `${prefix}/meta.json` through the FS (mediated). Errors: ENOENT (not enrolled). */
export async function readMeta(p: Process, fs: FsClient, prefix = DEFAULT_PREFIX): Promise<EnrollMeta> {
  const path = `${prefix}/meta.json`;
  const f = await fs.open(path, { mode: OpenMode.READ });
  try {
    const { cid, region } = await p.memoryCreateShared(Math.max(4096, f.size));
    try {
      const view = await p.memoryDiminish(cid, 0, f.size);
      await p.rpc(f.read, Read, { offset: 0, length: f.size }, { buffer: view }, { timeoutMs: 60_000 });
      await p.capDrop(view);
      const meta = JSON.parse(Buffer.from(region.bytes.subarray(0, f.size)).toString('utf8')) as EnrollMeta;
      if (!Array.isArray(meta.ids)) throw new FractosError('EINVAL', `${path}: no ids`);
      if (!Number.isFinite(meta.threshold)) meta.threshold = DEFAULT_THRESHOLD;
      return meta;
    } finally {
      await p.capDrop(cid).catch(() => {});
    }
  } finally {
    await fs.close(f);
  }
}

/** Open the enrolled file of every id (DAX or mediated, read-only). Closing: `closeAll`. */
export async function openEnrolled(fs: FsClient, ids: number[], dax: boolean, prefix = DEFAULT_PREFIX): Promise<Map<number, OpenFile>> {
  const files = new Map<number, OpenFile>();
  try {
    for (const id of ids) {
      const f = await fs.open(enrolledPath(prefix, id), { mode: OpenMode.READ, dax });
      files.set(id, f);
      if (f.size < IMAGE_BYTES) throw new FractosError('EINVAL', `${enrolledPath(prefix, id)} has ${f.size} bytes, expected ${IMAGE_BYTES}`);
      if (dax && (f.extents.length === 0 || f.extents[0]!.fileOffset !== 0 || !f.extents[0]!.read)) {
        throw new FractosError('EINVAL', `${enrolledPath(prefix, id)}: no DAX read Request for its first extent`);
      }
    }
  } catch (err) {
    await closeAll(fs, files);
    throw err;
  }
  return files;
}

export async function closeAll(fs: FsClient, files: Map<number, OpenFile>): Promise<void> {
  await Promise.all([...files.values()].map((f) => fs.close(f).catch(() => {})));
  files.clear();
}

/**
 * The HTTP front end of facever-app (node:http).
 *
 * `POST /verify` with a JSON array `[{ "id": 7, "image": "<base64>" }, ...]`, `image` being
 * a binary PGM (P5, 92x112, maxval <= 255) or the raw 92*112 = 10304 pixel bytes. Answers
 * `200 { design, threshold, results: [{ id, score, match }], totalUs, stages }` where
 * `score` is the chi-square distance (smaller = more similar) and `match` = score <=
 * threshold. Errors are JSON `{ error, reason }`:
 * - 400 malformed JSON, not an array, bad item, bad base64, bad PGM, wrong image size;
 * - 413 body over `maxBodyBytes` (default max(1 MiB, 1.25 x maxBatch base64 PGMs)) or more
 *   pairs than the batch limit;
 * - 422 unknown id (with the id);
 * - 404 other paths, 405 other methods on /verify (with `Allow: POST`);
 * - 503 back-pressure (every GPU buffer set busy and the queue full) or the GPU adaptor
 *   re-initialising, with `Retry-After: 1`; 502/504 for service failures and time-outs.
 * `GET /health` answers `{ ready, design, ids, gpu }`.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { FractosError } from '../libfractos/errors.js';
import { IMAGE_BYTES, IMAGE_HEIGHT, IMAGE_WIDTH } from '../gpu-adaptor/backend.js';
import { readPgm } from './lbp.js';
import { httpStatusOf, type Verifier } from './verifier.js';

export interface ServerOptions {
  port: number;
  host?: string;
  /** Accept a pair when score <= threshold. */
  threshold: number;
  /** Largest request body (bytes); default enough for maxBatch PGMs in base64. */
  maxBodyBytes?: number;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    readonly reason: string,
  ) {
    super(reason);
  }
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Decode one image field: base64 of a P5 PGM 92x112 or of 10304 raw bytes. @throws HttpError 400 */
export function decodeImage(s: unknown, index: number): Uint8Array {
  if (typeof s !== 'string') throw new HttpError(400, 'bad_item', `item ${index}: "image" must be a base64 string`);
  const clean = s.replace(/\s+/g, '');
  if (clean.length % 4 !== 0 || !BASE64.test(clean)) throw new HttpError(400, 'bad_base64', `item ${index}: "image" is not valid base64`);
  const bytes = Buffer.from(clean, 'base64');
  if (bytes.length >= 2 && bytes[0] === 0x50 && bytes[1] === 0x35) {
    let img;
    try {
      img = readPgm(bytes);
    } catch (e) {
      throw new HttpError(400, 'bad_pgm', `item ${index}: ${(e as Error).message}`);
    }
    if (img.width !== IMAGE_WIDTH || img.height !== IMAGE_HEIGHT) throw new HttpError(400, 'bad_size', `item ${index}: PGM is ${img.width}x${img.height}, expected ${IMAGE_WIDTH}x${IMAGE_HEIGHT}`);
    return img.pixels;
  }
  if (bytes.length !== IMAGE_BYTES) throw new HttpError(400, 'bad_size', `item ${index}: ${bytes.length} bytes is neither a P5 PGM nor ${IMAGE_BYTES} raw pixels (92x112)`);
  return bytes;
}

/** Parse and validate a /verify body. @throws HttpError */
export function parseBatch(body: Buffer, known: (id: number) => boolean, maxBatch: number): { id: number; image: Uint8Array }[] {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch (e) {
    throw new HttpError(400, 'bad_json', `body is not JSON: ${(e as Error).message}`);
  }
  if (!Array.isArray(json)) throw new HttpError(400, 'bad_batch', 'body must be a JSON array of {id, image}');
  if (json.length === 0) throw new HttpError(400, 'bad_batch', 'empty batch');
  if (json.length > maxBatch) throw new HttpError(413, 'batch_too_large', `${json.length} pairs; at most ${maxBatch} per batch`);
  return json.map((item: unknown, i) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new HttpError(400, 'bad_item', `item ${i}: expected an object {id, image}`);
    const o = item as Record<string, unknown>;
    let id = o.id;
    if (typeof id === 'string' && /^s?\d+$/.test(id)) id = Number(id.replace(/^s/, ''));
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw new HttpError(400, 'bad_item', `item ${i}: "id" must be a non-negative integer (or "sN")`);
    if (!known(id)) throw new HttpError(422, 'unknown_id', `item ${i}: id ${id} is not enrolled`);
    return { id, image: decodeImage(o.image, i) };
  });
}

function send(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const s = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), ...headers });
  res.end(s);
}

/** Serve `verifier` over HTTP. Resolves with the server once listening. */
export async function serve(verifier: Verifier, o: ServerOptions): Promise<http.Server> {
  const maxBody = o.maxBodyBytes ?? Math.max(1 << 20, Math.ceil(1.25 * verifier.maxBatch * (((IMAGE_BYTES + 64) * 4) / 3 + 64)));
  const ids = new Set(verifier.ids);
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/health') {
      if (req.method !== 'GET') return send(res, 405, { error: 'method_not_allowed', reason: 'use GET /health' }, { allow: 'GET' });
      return send(res, 200, { ready: verifier.ready, design: verifier.design, ids: verifier.ids.length, gpu: verifier.gpuInfo });
    }
    if (url !== '/verify') return send(res, 404, { error: 'not_found', reason: `no route ${url}; use POST /verify` });
    if (req.method !== 'POST') return send(res, 405, { error: 'method_not_allowed', reason: 'use POST /verify' }, { allow: 'POST' });
    const chunks: Buffer[] = [];
    let size = 0;
    let tooBig = false;
    req.on('data', (d: Buffer) => {
      size += d.length;
      if (size > maxBody) {
        tooBig = true;
        return;
      }
      chunks.push(d);
    });
    req.on('end', () => {
      if (tooBig) {
        send(res, 413, { error: 'body_too_large', reason: `body of ${size} bytes exceeds ${maxBody}` }, { connection: 'close' });
        return;
      }
      void (async () => {
        try {
          const pairs = parseBatch(Buffer.concat(chunks), (id) => ids.has(id), verifier.maxBatch);
          const r = await verifier.verify(pairs);
          send(res, 200, {
            design: verifier.design,
            threshold: o.threshold,
            results: pairs.map((pr, i) => ({ id: pr.id, score: r.scores[i], match: r.scores[i]! <= o.threshold })),
            totalUs: Math.round(r.totalUs),
            stages: Object.fromEntries(Object.entries(r.stages).map(([k, v]) => [k, Math.round(v)])),
          });
        } catch (e) {
          if (e instanceof HttpError) return send(res, e.status, { error: e.error, reason: e.reason });
          const fe = e instanceof FractosError ? e : new FractosError('EIO', String(e));
          const status = httpStatusOf(fe.code);
          send(res, status, { error: fe.code, reason: fe.message }, status === 503 ? { 'retry-after': '1' } : {});
        }
      })();
    });
  });
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(o.port, o.host ?? '127.0.0.1', () => res());
  });
  return server;
}

/** The port a server listens on. */
export function portOf(s: http.Server): number {
  return (s.address() as AddressInfo).port;
}

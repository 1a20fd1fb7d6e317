/**
 * The HTTP front end of facever-app (node:http).
 *
 * `POST /verify` with a JSON array `[{ "id": 7, "image": "<base64>" }, ...]`, `image` being
 * a binary PGM (P5, 92x112, maxval <= 255) or the raw 92*112 = 10304 pixel bytes. Answers
 * `200 { design, threshold, results: [{ id, score, match }], totalUs, stages }` where
 * `score` is the chi-square distance (smaller = more similar) and `match` = score <=
 * threshold. Errors are JSON `{ error, reason }`:
 * - 400 malformed JSON, not an array, bad item, bad base64, bad PGM, wrong image size;
 * - 408 `body_timeout`: an admitted body not complete within `bodyTimeoutMs`;
 * - 413 body over `maxBodyBytes` (default max(1 MiB, 1.25 x maxBatch base64 PGMs); refused
 *   on its Content-Length before the body is read) or more pairs than the batch limit;
 * - 422 unknown id (with the id);
 * - 404 other paths, 405 other methods on /verify (with `Allow: POST`);
 * - 503 `EBUSY` back-pressure (the admission bounds reached: see `serve`; refused on the
 *   headers, before the body is read) or `EAGAIN` (the GPU adaptor re-initialising), with
 *   `Retry-After: 1`; 502/504 for service failures and time-outs.
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
  /**
   * Requests admitted at once: body being read, parsed, waiting for a GPU buffer set or in
   * flight (default the verifier's `slots + maxQueued`). Past it: 503 before the body is read.
   */
  maxAdmitted?: number;
  /** Declared body bytes admitted at once (default 64 MiB, at least `maxBodyBytes`). */
  maxAdmittedBytes?: number;
  /** How long an admitted request may take to deliver its body (ms, default 10000): 408. */
  bodyTimeoutMs?: number;
  /** `Retry-After` of a 503, seconds, enforced on keep-alive connections (default `RETRY_AFTER_S`). */
  retryAfterS?: number;
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
  if (res.headersSent) return; // answered already (413, 408)
  const s = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), ...headers });
  res.end(s);
}

/** What the server needs of a Verifier (facever-app/verifier.ts). */
export type VerifyService = Pick<Verifier, 'verify' | 'ids' | 'maxBatch' | 'slots' | 'maxQueued' | 'ready' | 'design' | 'gpuInfo'>;

/** The default `Retry-After` of a 503 (seconds), enforced on keep-alive connections (see `serve`). */
export const RETRY_AFTER_S = 1;

/** Default bound on the declared bytes of the bodies admitted at once. */
export const DEFAULT_MAX_ADMITTED_BYTES = 64 << 20;

/**
 * Serve `verifier` over HTTP. Resolves with the server once listening.
 *
 * Admission (issue #7 item 18): a `POST /verify` is admitted or refused when its headers
 * arrive, before any byte of its body is read. Admitted requests (body being read, parsed,
 * queued for a buffer set or in flight) are bounded in count (`maxAdmitted`) and in declared
 * body bytes (`maxAdmittedBytes`; a body without Content-Length counts as `maxBodyBytes`).
 * Refused early, without reading, parsing or decoding the body:
 * - 413 `body_too_large`: Content-Length over `maxBodyBytes` (connection closed);
 * - 503 `EBUSY` + `Retry-After: 1`: the admission bounds are reached; 503 `EAGAIN` +
 *   `Retry-After: 1`: the GPU adaptor is re-initialising. The connection is kept when the
 *   body has a Content-Length (Node discards the body as it arrives: no buffering, no
 *   parsing) and closed otherwise, or when the client waits on `Expect: 100-continue` (then
 *   the body is never sent).
 * A keep-alive connection that sends its next request before the `Retry-After` of its last
 * 503 has passed is not answered before it has (a client that retries at once gets at most
 * one 503 per second per connection; its body stays unread in the socket meanwhile); the
 * request then goes through admission like any other. Clients that honour `Retry-After` never
 * wait here.
 * An admitted request whose body has not fully arrived after `bodyTimeoutMs` gets 408
 * `body_timeout` (connection closed) and gives its admission back.
 */
export async function serve(verifier: VerifyService, o: ServerOptions): Promise<http.Server> {
  const maxBody = o.maxBodyBytes ?? Math.max(1 << 20, Math.ceil(1.25 * verifier.maxBatch * (((IMAGE_BYTES + 64) * 4) / 3 + 64)));
  const maxAdmitted = o.maxAdmitted ?? verifier.slots + verifier.maxQueued;
  const maxAdmittedBytes = Math.max(o.maxAdmittedBytes ?? DEFAULT_MAX_ADMITTED_BYTES, maxBody);
  const bodyTimeoutMs = o.bodyTimeoutMs ?? 10_000;
  const retryAfterS = o.retryAfterS ?? RETRY_AFTER_S;
  const ids = new Set(verifier.ids);
  const admission = { count: 0, bytes: 0 };
  /** When each keep-alive connection last got a 503 (performance.now() ms). */
  const refusedAt = new WeakMap<object, number>();
  const handler = (req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean): void => {
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/health') {
      if (req.method !== 'GET') return send(res, 405, { error: 'method_not_allowed', reason: 'use GET /health' }, { allow: 'GET' });
      return send(res, 200, { ready: verifier.ready, design: verifier.design, ids: verifier.ids.length, gpu: verifier.gpuInfo });
    }
    if (url !== '/verify') return send(res, 404, { error: 'not_found', reason: `no route ${url}; use POST /verify` });
    if (req.method !== 'POST') return send(res, 405, { error: 'method_not_allowed', reason: 'use POST /verify' }, { allow: 'POST' });
    // Admission, on the headers alone. Node has already rejected a malformed Content-Length.
    const declared = req.headers['content-length'] !== undefined ? Number(req.headers['content-length']) : undefined;
    if (declared !== undefined && declared > maxBody) {
      return send(res, 413, { error: 'body_too_large', reason: `Content-Length ${declared} exceeds ${maxBody} bytes` }, { connection: 'close' });
    }
    // A connection that comes back sooner than the Retry-After of its last 503 waits for it
    // here, its body unread (Node stops reading the socket), then goes through admission.
    const wait = (refusedAt.get(req.socket) ?? -Infinity) + retryAfterS * 1000 - performance.now();
    if (wait > 0) {
      const timer = setTimeout(() => admit(req, res, expectsContinue, declared), wait);
      res.once('close', () => clearTimeout(timer));
      return;
    }
    admit(req, res, expectsContinue, declared);
  };
  const admit = (req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean, declared: number | undefined): void => {
    if (res.destroyed) return;
    const cost = declared ?? maxBody;
    const refuse = (error: string, reason: string): void => {
      const close = declared === undefined || expectsContinue;
      if (!close) refusedAt.set(req.socket, performance.now());
      send(res, 503, { error, reason }, { 'retry-after': String(retryAfterS), ...(close ? { connection: 'close' } : {}) });
    };
    if (!verifier.ready) return refuse('EAGAIN', 'GPU adaptor unavailable (re-initialising)');
    if (admission.count >= maxAdmitted || admission.bytes + cost > maxAdmittedBytes) {
      return refuse('EBUSY', `server busy: ${admission.count} requests (${admission.bytes} body bytes) admitted, limits ${maxAdmitted} requests and ${maxAdmittedBytes} bytes`);
    }
    admission.count++;
    admission.bytes += cost;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      admission.count--;
      admission.bytes -= cost;
    };
    res.once('close', release);
    res.once('finish', release);
    if (expectsContinue) res.writeContinue();
    const chunks: Buffer[] = [];
    let size = 0;
    let answered = false;
    const fail = (status: number, error: string, reason: string): void => {
      if (answered) return;
      answered = true;
      clearTimeout(bodyTimer);
      chunks.length = 0;
      send(res, status, { error, reason }, { connection: 'close' });
    };
    const bodyTimer: NodeJS.Timeout = setTimeout(() => fail(408, 'body_timeout', `body not received within ${bodyTimeoutMs} ms`), bodyTimeoutMs);
    req.on('data', (d: Buffer) => {
      if (answered) return;
      size += d.length;
      if (size > maxBody) return fail(413, 'body_too_large', `body exceeds ${maxBody} bytes`);
      chunks.push(d);
    });
    req.once('close', () => clearTimeout(bodyTimer));
    req.on('end', () => {
      clearTimeout(bodyTimer);
      if (answered) return;
      void (async () => {
        try {
          const pairs = parseBatch(Buffer.concat(chunks), (id) => ids.has(id), verifier.maxBatch);
          chunks.length = 0;
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
          if (status === 503) return refuse(fe.code, fe.message); // the verifier's EBUSY / EAGAIN
          send(res, status, { error: fe.code, reason: fe.message });
        }
      })();
    });
  };
  // A refused request's body is discarded as it arrives; a client that never finishes it
  // loses the connection after requestTimeout (Node answers 408).
  const requestTimeout = bodyTimeoutMs + 5000;
  const server = http.createServer({ requestTimeout, headersTimeout: Math.min(60_000, requestTimeout) }, (req, res) => handler(req, res, false));
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => handler(req, res, true));
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

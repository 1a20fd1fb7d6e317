/**
 * The HTTP front end of facever-app (node:http).
 *
 * `POST /verify` with a JSON array `[{ "id": 7, "image": "<base64>" }, ...]`, `image` being
 * a binary PGM (P5, 92x112, maxval <= 255) or the raw 92*112 = 10304 pixel bytes. Answers
 * `200 { design, threshold, results: [{ id, score, match }], totalUs, stages }` where
 * `score` is the chi-square distance (smaller = more similar) and `match` = score <=
 * threshold. Errors are JSON `{ error, reason }`:
 * - 400 malformed JSON, not an array, bad item, bad base64, bad PGM, wrong image size;
 * - 408 `body_timeout`: a body not complete within `bodyTimeoutMs`; `body_too_slow`: a body
 *   arriving slower than `minBodyRate` after its grace; (Node's) headers not complete within
 *   `headersTimeoutMs`;
 * - 413 body over `maxBodyBytes` (default max(1 MiB, 1.25 x maxBatch base64 PGMs); refused
 *   on its Content-Length before the body is read) or more pairs than the batch limit;
 * - 422 unknown id (with the id);
 * - 404 other paths, 405 other methods on /verify (with `Allow: POST`);
 * - 503 `EBUSY` back-pressure (the GPU queue, the bodies being read or the connections of
 *   one peer address at their bound: see `serve`; refused before the body is parsed) or
 *   `EAGAIN` (the GPU adaptor re-initialising), with `Retry-After: 1`; 502/504 for service
 *   failures and time-outs.
 * `GET /health` answers `{ ready, design, ids, gpu }`.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
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
   * The GPU queue: requests whose body is complete and parsed, waiting for a GPU buffer set
   * or in flight (default the verifier's `slots + maxQueued`). Full: 503 on the headers
   * (before the body is read) or, for a body being read meanwhile, when it completes (before
   * it is parsed). A body still being read does not count here.
   */
  maxAdmitted?: number;
  /** Bodies being read at once, all peers (default `DEFAULT_MAX_READING`): 503 past it. */
  maxReading?: number;
  /** Declared bytes of the bodies being read at once (default 64 MiB, at least `maxBodyBytes`). */
  maxReadingBytes?: number;
  /** Bodies being read at once from one peer address (default `DEFAULT_MAX_READING_PER_PEER`): 503 past it. */
  maxReadingPerPeer?: number;
  /**
   * Minimum body data rate (bytes/s, default `DEFAULT_MIN_BODY_RATE`; 0: none): after
   * `bodyGraceMs`, a body must have delivered `minBodyRate x (elapsed - bodyGraceMs)` bytes,
   * else 408 `body_too_slow`.
   */
  minBodyRate?: number;
  /** Grace before the minimum body rate applies (ms, default 2000). */
  bodyGraceMs?: number;
  /** How long a body may take to arrive at all, from its admission (ms, default 10000): 408 `body_timeout`. */
  bodyTimeoutMs?: number;
  /** How long a connection may take to deliver a request's headers (ms, default 10000): Node answers 408. */
  headersTimeoutMs?: number;
  /** Open connections, all peers (default `DEFAULT_MAX_CONNECTIONS`): past it a new one is dropped (Node). */
  maxConnections?: number;
  /** Open connections from one peer address (default `DEFAULT_MAX_CONNECTIONS_PER_PEER`): past it, 503 and closed. */
  maxConnectionsPerPeer?: number;
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

/** Default bound on the bodies being read at once (all peers). */
export const DEFAULT_MAX_READING = 256;
/** Default bound on the declared bytes of the bodies being read at once. */
export const DEFAULT_MAX_READING_BYTES = 64 << 20;
/** Default bound on the bodies being read at once from one peer address. */
export const DEFAULT_MAX_READING_PER_PEER = 32;
/** Default minimum body data rate after the grace period, bytes/s (16 KiB/s). */
export const DEFAULT_MIN_BODY_RATE = 16 << 10;
/** Default bound on the open connections (all peers). */
export const DEFAULT_MAX_CONNECTIONS = 1024;
/** Default bound on the open connections from one peer address. */
export const DEFAULT_MAX_CONNECTIONS_PER_PEER = 256;

/** A count per peer address. */
class PerPeer {
  readonly #n = new Map<string, number>();
  get(peer: string): number {
    return this.#n.get(peer) ?? 0;
  }
  add(peer: string, d: 1 | -1): void {
    const n = this.get(peer) + d;
    if (n > 0) this.#n.set(peer, n);
    else this.#n.delete(peer);
  }
}

/**
 * Serve `verifier` over HTTP. Resolves with the server once listening.
 *
 * Admission (issue #7 item 18) has two stages, so that slow or idle clients cannot hold the
 * GPU queue:
 * 1. Reading: a `POST /verify` is admitted to have its body read, or refused, when its
 *    headers arrive, before any byte of its body is read. Bodies being read are bounded in
 *    count (`maxReading`), in declared bytes (`maxReadingBytes`; a body without
 *    Content-Length counts as `maxBodyBytes`) and per peer address (`maxReadingPerPeer`), and
 *    must keep a minimum data rate (`minBodyRate` after `bodyGraceMs`; else 408
 *    `body_too_slow`) and arrive within `bodyTimeoutMs` (else 408 `body_timeout`); a 408
 *    closes the connection and gives the place back.
 * 2. The GPU queue (`maxAdmitted`, default slots + maxQueued): a request counts here only
 *    once its body is complete and parsed, until it is answered. When the queue is full a
 *    request is refused on its headers (no reading), or, if it filled while the body was
 *    read, when the body completes (no parsing or decoding).
 * Refusals, all without parsing or decoding the body:
 * - 413 `body_too_large`: Content-Length over `maxBodyBytes` (connection closed);
 * - 503 `EBUSY` + `Retry-After`: a bound above reached (the reason names it); 503 `EAGAIN`:
 *   the GPU adaptor is re-initialising. The connection is kept when the body has a
 *   Content-Length or was read (Node discards an unread body as it arrives: no buffering)
 *   and closed otherwise, or when the client waits on `Expect: 100-continue` (then the body
 *   is never sent).
 * A keep-alive connection that sends its next request before the `Retry-After` of its last
 * 503 has passed is not answered before it has (a client that retries at once gets at most
 * one 503 per `Retry-After` per connection; its body stays unread in the socket meanwhile);
 * the request then goes through admission like any other. Such held retries, idle keep-alive
 * connections and headers still arriving are bounded by the connection bounds
 * (`maxConnections`, `maxConnectionsPerPeer`: one request at a time per connection) and by
 * Node's time-outs (`headersTimeoutMs`, keep-alive 5 s, and a request time-out of
 * `headersTimeoutMs + Retry-After + bodyTimeoutMs + 1 s`, which cuts a refused body that
 * never finishes).
 */
export async function serve(verifier: VerifyService, o: ServerOptions): Promise<http.Server> {
  const maxBody = o.maxBodyBytes ?? Math.max(1 << 20, Math.ceil(1.25 * verifier.maxBatch * (((IMAGE_BYTES + 64) * 4) / 3 + 64)));
  const maxAdmitted = o.maxAdmitted ?? verifier.slots + verifier.maxQueued;
  const maxReading = o.maxReading ?? DEFAULT_MAX_READING;
  const maxReadingBytes = Math.max(o.maxReadingBytes ?? DEFAULT_MAX_READING_BYTES, maxBody);
  const maxReadingPerPeer = o.maxReadingPerPeer ?? DEFAULT_MAX_READING_PER_PEER;
  const minBodyRate = o.minBodyRate ?? DEFAULT_MIN_BODY_RATE;
  const bodyGraceMs = o.bodyGraceMs ?? 2000;
  const bodyTimeoutMs = o.bodyTimeoutMs ?? 10_000;
  const headersTimeoutMs = o.headersTimeoutMs ?? 10_000;
  const maxConnectionsPerPeer = o.maxConnectionsPerPeer ?? DEFAULT_MAX_CONNECTIONS_PER_PEER;
  const retryAfterS = o.retryAfterS ?? RETRY_AFTER_S;
  const ids = new Set(verifier.ids);
  /** Bodies being read (stage 1) and requests in the GPU queue (stage 2). */
  const reading = { count: 0, bytes: 0, perPeer: new PerPeer() };
  let queued = 0;
  const connections = new PerPeer();
  /** Connections refused for their peer's connection bound: their requests are ignored. */
  const refusedConns = new WeakSet<object>();
  /** When each keep-alive connection last got a 503 (performance.now() ms). */
  const refusedAt = new WeakMap<object, number>();
  const peerOf = (req: http.IncomingMessage): string => req.socket.remoteAddress ?? 'unknown';
  const handler = (req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean): void => {
    if (refusedConns.has(req.socket)) return;
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
    const peer = peerOf(req);
    let bodyRead = false;
    const refuse = (error: string, reason: string): void => {
      const close = !bodyRead && (declared === undefined || expectsContinue);
      if (!close) refusedAt.set(req.socket, performance.now());
      send(res, 503, { error, reason }, { 'retry-after': String(retryAfterS), ...(close ? { connection: 'close' } : {}) });
    };
    const queueFull = (): string => `server busy: ${queued} requests admitted to the GPU queue (limit ${maxAdmitted})`;
    if (!verifier.ready) return refuse('EAGAIN', 'GPU adaptor unavailable (re-initialising)');
    if (queued >= maxAdmitted) return refuse('EBUSY', queueFull());
    if (reading.count >= maxReading || reading.bytes + cost > maxReadingBytes) {
      return refuse('EBUSY', `server busy: ${reading.count} bodies (${reading.bytes} bytes) being read, limits ${maxReading} bodies and ${maxReadingBytes} bytes`);
    }
    if (reading.perPeer.get(peer) >= maxReadingPerPeer) return refuse('EBUSY', `too many requests from ${peer}: ${maxReadingPerPeer} bodies being read (the limit per peer address)`);
    reading.count++;
    reading.bytes += cost;
    reading.perPeer.add(peer, 1);
    let isReading = true;
    const start = performance.now();
    const chunks: Buffer[] = [];
    let size = 0;
    let answered = false;
    let bodyTimer: NodeJS.Timeout | undefined;
    /** Stage 1 over (body complete, cut, or the client gone): the reading place is given back. */
    const doneReading = (): void => {
      clearTimeout(bodyTimer);
      if (!isReading) return;
      isReading = false;
      reading.count--;
      reading.bytes -= cost;
      reading.perPeer.add(peer, -1);
    };
    res.once('close', doneReading);
    req.once('close', doneReading);
    const fail = (status: number, error: string, reason: string): void => {
      if (answered) return;
      answered = true;
      doneReading();
      chunks.length = 0;
      send(res, status, { error, reason }, { connection: 'close' });
    };
    // Each byte received buys 1/minBodyRate s past the grace; the whole body has bodyTimeoutMs.
    const checkRate = (): void => {
      const now = performance.now();
      if (now - start >= bodyTimeoutMs) return fail(408, 'body_timeout', `body not received within ${bodyTimeoutMs} ms`);
      const due = minBodyRate > 0 ? start + bodyGraceMs + (size * 1000) / minBodyRate : Infinity;
      if (now >= due) return fail(408, 'body_too_slow', `body arriving slower than ${minBodyRate} bytes/s (${size} bytes in ${Math.round(now - start)} ms)`);
      bodyTimer = setTimeout(checkRate, Math.min(due, start + bodyTimeoutMs) - now + 1);
    };
    bodyTimer = setTimeout(checkRate, Math.min(bodyGraceMs, bodyTimeoutMs));
    if (expectsContinue) res.writeContinue();
    req.on('data', (d: Buffer) => {
      if (answered) return;
      size += d.length;
      if (size > maxBody) return fail(413, 'body_too_large', `body exceeds ${maxBody} bytes`);
      chunks.push(d);
    });
    req.on('end', () => {
      doneReading();
      if (answered) return;
      answered = true;
      bodyRead = true;
      // Stage 2: the GPU queue, checked before any parsing (the queue may have filled meanwhile).
      if (!verifier.ready) return refuse('EAGAIN', 'GPU adaptor unavailable (re-initialising)');
      if (queued >= maxAdmitted) return refuse('EBUSY', queueFull());
      let pairs;
      try {
        pairs = parseBatch(Buffer.concat(chunks), (id) => ids.has(id), verifier.maxBatch);
      } catch (e) {
        if (e instanceof HttpError) return send(res, e.status, { error: e.error, reason: e.reason });
        return send(res, 500, { error: 'EIO', reason: `parsing the body: ${String(e)}` });
      } finally {
        chunks.length = 0;
      }
      queued++;
      let inQueue = true;
      const leaveQueue = (): void => {
        if (inQueue) queued--;
        inQueue = false;
      };
      res.once('close', leaveQueue);
      res.once('finish', leaveQueue);
      void (async () => {
        try {
          const r = await verifier.verify(pairs);
          send(res, 200, {
            design: verifier.design,
            threshold: o.threshold,
            results: pairs.map((pr, i) => ({ id: pr.id, score: r.scores[i], match: r.scores[i]! <= o.threshold })),
            totalUs: Math.round(r.totalUs),
            stages: Object.fromEntries(Object.entries(r.stages).map(([k, v]) => [k, Math.round(v)])),
          });
        } catch (e) {
          const fe = e instanceof FractosError ? e : new FractosError('EIO', String(e));
          const status = httpStatusOf(fe.code);
          if (status === 503) return refuse(fe.code, fe.message); // the verifier's EBUSY / EAGAIN
          send(res, status, { error: fe.code, reason: fe.message });
        }
      })();
    });
  };
  // Node's request time-out cuts a refused body that never finishes (Node answers 408).
  const requestTimeout = headersTimeoutMs + retryAfterS * 1000 + bodyTimeoutMs + 1000;
  const server = http.createServer(
    { requestTimeout, headersTimeout: headersTimeoutMs, connectionsCheckingInterval: Math.max(10, Math.min(1000, headersTimeoutMs / 4)) },
    (req, res) => handler(req, res, false),
  );
  server.maxConnections = o.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => handler(req, res, true));
  server.on('connection', (sock: Socket) => {
    const peer = sock.remoteAddress ?? 'unknown';
    connections.add(peer, 1);
    sock.once('close', () => connections.add(peer, -1));
    if (connections.get(peer) <= maxConnectionsPerPeer) return;
    // Over its peer's bound: one 503, then closed (after a grace for the client to read it).
    refusedConns.add(sock);
    const s = JSON.stringify({ error: 'EBUSY', reason: `too many connections from ${peer} (limit ${maxConnectionsPerPeer} per peer address)` });
    sock.end(`HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(s)}\r\nretry-after: ${retryAfterS}\r\nconnection: close\r\n\r\n${s}`);
    const t = setTimeout(() => sock.destroy(), 1000);
    sock.once('close', () => clearTimeout(t));
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

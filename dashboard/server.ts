/**
 * `fractos dashboard`: a fastify server with one page (dashboard/public/, static HTML and
 * JS, no bundler) and live updates over Server-Sent Events. Routes:
 *   GET /               the page
 *   GET /app.js         its script
 *   GET /api/snapshot   the latest Snapshot (JSON, dashboard/collector.ts)
 *   GET /api/events     SSE: an `event: snapshot` with the Snapshot after every poll
 * See docs/dashboard.md.
 */
import { readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { FractosError } from '../libfractos/index.js';
import { REPO_ROOT } from '../testbed/paths.js';
import { Collector, type CollectorOptions, type Snapshot } from './collector.js';

/** Page files, served from the checkout (not compiled). */
export const PUBLIC_DIR = join(REPO_ROOT, 'dashboard', 'public');

/** Most SSE clients at once (each costs one socket and one JSON write per poll); more get 503. */
export const MAX_SSE_CLIENTS = 64;

/** Options of `startDashboard`. */
export interface DashboardOptions extends CollectorOptions {
  /** TCP port (0: any free one). */
  port: number;
  /** Address to listen on (default 127.0.0.1: the page shows the cluster's Processes to whoever reaches it). */
  host?: string;
}

/** A running dashboard. */
export interface Dashboard {
  /** `http://HOST:PORT` */
  url: string;
  collector: Collector;
  server: FastifyInstance;
  close(): Promise<void>;
}

/**
 * Start the collector and the HTTP server. Resolves once listening (the first poll has run).
 * Errors: EINVAL (options), EADDRINUSE (port taken).
 */
export async function startDashboard(opts: DashboardOptions): Promise<Dashboard> {
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new FractosError('EINVAL', `port must be 0..65535, got ${opts.port}`);
  const collector = new Collector(opts);
  const page = readFileSync(join(PUBLIC_DIR, 'index.html'));
  const script = readFileSync(join(PUBLIC_DIR, 'app.js'));
  const server = Fastify({ logger: false });
  const clients = new Set<ServerResponse>();

  server.get('/', (_req, reply) => reply.type('text/html; charset=utf-8').send(page));
  server.get('/app.js', (_req, reply) => reply.type('text/javascript; charset=utf-8').send(script));
  server.get('/api/snapshot', (_req, reply) => reply.send(collector.snapshot));
  server.get('/api/events', (req, reply) => {
    if (clients.size >= MAX_SSE_CLIENTS) return reply.code(503).send({ error: `at most ${MAX_SSE_CLIENTS} live views` });
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.write(`retry: 1000\n\n`);
    res.write(event(collector.snapshot));
    clients.add(res);
    req.raw.on('close', () => clients.delete(res));
  });

  const onSnapshot = (s: Snapshot): void => {
    if (!clients.size) return;
    const e = event(s);
    // A client that does not read is dropped rather than buffered without bound.
    for (const c of clients) {
      if (c.writableLength > 8 << 20) {
        clients.delete(c);
        c.destroy();
      } else c.write(e);
    }
  };
  collector.on('snapshot', onSnapshot);
  await collector.start();
  let address: string;
  try {
    address = await server.listen({ port: opts.port, host: opts.host ?? '127.0.0.1' });
  } catch (err) {
    await collector.close();
    const e = err as { code?: string; message?: string };
    if (e.code === 'EADDRINUSE') throw new FractosError('EADDRINUSE', `port ${opts.port} is taken`);
    throw err;
  }
  return {
    url: address,
    collector,
    server,
    close: async () => {
      collector.off('snapshot', onSnapshot);
      for (const c of clients) c.end();
      clients.clear();
      await collector.close();
      await server.close();
    },
  };
}

function event(s: Snapshot): string {
  return `event: snapshot\ndata: ${JSON.stringify(s)}\n\n`;
}

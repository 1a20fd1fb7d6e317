/**
 * Review of issue #7, item 7: the Controller that waits to be dialled (the lower id) warns
 * when a listed peer has not connected, with the address it expects it from, rate-limited
 * (intervals doubling), and stops warning once the peer is there.
 */
import test from 'ava';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { Controller } from '../controller/index.js';
import { freePort, tempDir } from './helpers/spawn.js';
import { until } from './helpers/wait.js';

interface Line {
  level: number;
  msg: string;
  peer?: number;
  addr?: string;
  waitedMs?: number;
}

function capture(): { log: pino.Logger; lines: Line[] } {
  const lines: Line[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Line);
      cb();
    },
  });
  return { log: pino({ level: 'info' }, sink), lines };
}

const SECRET = 'field-core-peerwait secret';
const T = 100;

test('the listening side warns that a peer has not connected, with its expected address, at doubling intervals; quiet once it connects', async (t) => {
  const { log, lines } = capture();
  const dir = tempDir();
  const port = await freePort();
  const addr2 = `tcp://127.0.0.1:${await freePort()}`;
  const c1 = await Controller.start({ id: 1, listen: [`tcp://127.0.0.1:${port}`], stateDir: join(dir, 's1'), peers: new Map([[2, addr2]]), clusterSecret: SECRET, log, peerWaitWarnMs: T });
  let c2: Controller | null = null;
  try {
    const warns = (): Line[] => lines.filter((l) => l.level === 40 && l.peer === 2);
    await until(() => warns().length >= 3, 20_000); // at T, 3T, 7T
    const w = warns();
    t.true(w.length >= 3, JSON.stringify(lines));
    t.is(w[0]!.addr, addr2);
    t.regex(w[0]!.msg, new RegExp(`^peer 2 has not connected after [0-9.]+ s \\(expected from ${addr2.replace(/[.]/g, '\\.')}\\)`));
    // rate-limited: waits of T, 3T, 7T (intervals T, 2T, 4T), never one per T
    w.slice(0, 3).forEach((l, k) => t.true(l.waitedMs! >= T * (2 ** (k + 1) - 1) - 5, JSON.stringify(w)));
    c2 = await Controller.start({ id: 2, listen: [addr2], stateDir: join(dir, 's2'), peers: new Map([[1, `tcp://127.0.0.1:${port}`]]), clusterSecret: SECRET });
    await until(() => c1.connectedPeers.includes(2), 20_000);
    t.deepEqual(c1.connectedPeers, [2]);
    const n = warns().length;
    await new Promise((r) => setTimeout(r, 16 * T));
    t.is(warns().length, n, 'no warning while the peer is connected');
  } finally {
    await c2?.close();
    await c1.close();
  }
});

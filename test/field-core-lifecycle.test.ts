/**
 * Controller lifecycles (issue #7, items 2 and 5): a second Controller never takes over a
 * live one's socket or state dir (in-process and as real OS processes), a stale socket and
 * a stale lock are taken over, and a peer that never answers is logged at warn.
 */
import test from 'ava';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { Controller } from '../controller/index.js';
import { connect, FractosError } from '../libfractos/index.js';
import { freePort, spawnFractos, tempDir, type Spawned } from './helpers/spawn.js';
import { until } from './helpers/wait.js';

const READY = /^controller \d+ epoch \d+ listening/;

function epochOf(stateDir: string): number {
  return Number(readFileSync(join(stateDir, 'epoch'), 'utf8').trim());
}

async function startError(p: Promise<Controller>): Promise<FractosError> {
  try {
    const c = await p;
    await c.close();
  } catch (err) {
    if (err instanceof FractosError) return err;
    throw err;
  }
  throw new Error('the second Controller started');
}

/** Spawn `fractos controller ...`; resolves with its exit code and output when it exits before its ready line. */
async function spawnFails(args: string[]): Promise<string> {
  try {
    const s = await spawnFractos(['controller', ...args], READY);
    await s.stop();
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('the second Controller started');
}

test('in-process: a second Controller on a live socket or state dir is refused before the epoch is bumped', async (t) => {
  const dir = tempDir();
  const sock = `unix:${join(dir, 'c.sock')}`;
  const st = join(dir, 'state');
  const c1 = await Controller.start({ id: 1, listen: [sock], stateDir: st });
  const e1 = epochOf(st);
  try {
    // same state dir (another socket): EBUSY naming the dir and the holder's pid
    const busy = await startError(Controller.start({ id: 1, listen: [`unix:${join(dir, 'other.sock')}`], stateDir: st }));
    t.is(busy.code, 'EBUSY');
    t.true(busy.message.includes(st), busy.message);
    t.true(busy.message.includes(`pid ${process.pid}`), busy.message);
    t.false(existsSync(join(dir, 'other.sock')), 'the refused Controller left no socket');
    // same socket (another state dir): EADDRINUSE, and that state dir's epoch is not bumped
    const st2 = join(dir, 'state2');
    const inUse = await startError(Controller.start({ id: 2, listen: [sock], stateDir: st2 }));
    t.is(inUse.code, 'EADDRINUSE');
    t.false(existsSync(join(st2, 'epoch')), 'no epoch bumped by a refused start');
    t.is(epochOf(st), e1);
    // the first Controller is still reachable at its socket
    const p = await connect(sock);
    t.is(p.epoch, c1.epoch);
    await p.nullOp();
    await p.close();
    // a tcp port in use is refused before the epoch is bumped too
    const tcpC = await Controller.start({ id: 3, listen: ['tcp://127.0.0.1:0'], stateDir: join(dir, 'state3') });
    const st4 = join(dir, 'state4');
    const tcpBusy = await startError(Controller.start({ id: 4, listen: [tcpC.addresses[0]!], stateDir: st4 }));
    t.is(tcpBusy.code, 'EADDRINUSE');
    t.false(existsSync(join(st4, 'epoch')));
    t.false(existsSync(join(st4, 'lock')), 'the lock is released when a start fails');
    await tcpC.close();
  } finally {
    await c1.close();
  }
  // once closed, the same socket and state dir start again with the next epoch
  const c2 = await Controller.start({ id: 1, listen: [sock], stateDir: st });
  t.is(c2.epoch, e1 + 1);
  await c2.close();
});

test('a path that is not a socket is never removed (EEXIST)', async (t) => {
  const dir = tempDir();
  const path = join(dir, 'precious.txt');
  writeFileSync(path, 'keep me');
  const err = await startError(Controller.start({ id: 1, listen: [`unix:${path}`], stateDir: join(dir, 'st') }));
  t.is(err.code, 'EEXIST');
  t.is(readFileSync(path, 'utf8'), 'keep me');
});

test('OS processes: a second controller is refused with a clear error; the first keeps serving', async (t) => {
  const dir = tempDir();
  const sock = `unix:${join(dir, 'c.sock')}`;
  const st = join(dir, 'state');
  const first: Spawned = await spawnFractos(['controller', '--id', '1', '--listen', sock, '--state-dir', st], READY);
  try {
    const e1 = epochOf(st);
    const pid = first.child.pid!;
    const busy = await spawnFails(['--id', '1', '--listen', `unix:${join(dir, 'b.sock')}`, '--state-dir', st]);
    t.regex(busy, /EBUSY: state dir .* is in use by controller pid (\d+)/);
    t.true(busy.includes(`pid ${pid}`), busy);
    const inUse = await spawnFails(['--id', '2', '--listen', sock, '--state-dir', join(dir, 'state2')]);
    t.regex(inUse, /EADDRINUSE: unix:.*c\.sock answers connections/);
    t.false(existsSync(join(dir, 'state2', 'epoch')));
    t.is(epochOf(st), e1);
    const p = await connect(sock);
    t.is(p.epoch, e1);
    await p.nullOp();
    await p.close();
  } finally {
    await first.stop();
  }
});

test('after kill -9, the stale socket and the stale lock are taken over', async (t) => {
  const dir = tempDir();
  const sock = `unix:${join(dir, 'c.sock')}`;
  const st = join(dir, 'state');
  const first = await spawnFractos(['controller', '--id', '1', '--listen', sock, '--state-dir', st], READY);
  const e1 = epochOf(st);
  await first.kill9();
  t.true(existsSync(join(dir, 'c.sock')), 'kill -9 leaves the socket file');
  t.true(existsSync(join(st, 'lock')), 'kill -9 leaves the lock file');
  const c = await Controller.start({ id: 1, listen: [sock], stateDir: st });
  try {
    t.is(c.epoch, e1 + 1);
    const p = await connect(sock);
    await p.nullOp();
    await p.close();
  } finally {
    await c.close();
  }
});

test('a peer that never answers is logged at warn with its address and the retry delay, rate-limited', async (t) => {
  const lines: { level: number; msg: string; addr?: string; retryMs?: number; attempt?: number; peer?: number }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  const log = pino({ level: 'info' }, sink);
  const dir = tempDir();
  const port = await freePort(); // nothing listens there
  const peerAddr = `tcp://127.0.0.1:${port}`;
  const c = await Controller.start({ id: 2, listen: [`unix:${join(dir, 'c.sock')}`], stateDir: join(dir, 'st'), peers: new Map([[1, peerAddr]]), clusterSecret: 'field-core-lifecycle secret', log });
  try {
    const warns = (): typeof lines => lines.filter((l) => l.level === 40 && l.peer === 1);
    await until(() => warns().length >= 3, 20_000); // three dial attempts with their back-off
    const w = warns();
    t.true(w.length >= 3, JSON.stringify(lines));
    t.is(w[0]!.addr, peerAddr);
    t.is(w[0]!.attempt, 1);
    t.true(typeof w[0]!.retryMs === 'number' && w[0]!.retryMs > 0);
    t.regex(w[0]!.msg, new RegExp(`unreachable at ${peerAddr.replace(/[.]/g, '\\.')}; retrying in \\d+ ms`));
    // rate-limited: the first failure, then the 2nd, 4th, 8th ... (not every attempt)
    t.deepEqual(w.slice(0, 3).map((l) => l.attempt), [1, 2, 4]);
  } finally {
    await c.close();
  }
});

test('fractos controller --served-timeout-ms: a bad value is refused (EINVAL)', async (t) => {
  const dir = tempDir();
  const out = await spawnFails(['--id', '1', '--listen', `unix:${join(dir, 'c.sock')}`, '--state-dir', join(dir, 'st'), '--served-timeout-ms', 'soon']);
  t.regex(out, /EINVAL: servedTimeoutMs must be an integer/);
  t.false(existsSync(join(dir, 'st', 'epoch')));
});

/**
 * Review of issue #7, items 4 and 10: the Controller's state-dir lock is an flock on
 * `STATE_DIR/lock` (the pid in the file is only for the message), so a lock file left with
 * any pid in it — even a live unrelated one — is taken over, while two live Controllers
 * still conflict with EBUSY naming the holder's pid; SIGHUP stops `fractos controller`
 * cleanly (socket and lock removed, exit 0).
 */
import test from 'ava';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, FractosError } from '../libfractos/index.js';
import { spawnFractos, tempDir } from './helpers/spawn.js';

const READY = /^controller \d+ epoch \d+ listening/;

async function startError(p: Promise<Controller>): Promise<FractosError> {
  const r = await p.then(async (c) => {
    await c.close();
    return null;
  }, (e: unknown) => e);
  if (r instanceof FractosError) return r;
  throw new Error(`expected a FractosError, got ${String(r)}`);
}

for (const [what, pid] of [['pid 1 (init, alive)', '1'], ['this test\'s own pid (alive)', String(process.pid)], ['garbage', 'not a pid']] as const) {
  test(`a lock file holding ${what} but no flock is taken over`, async (t) => {
    const dir = tempDir();
    const st = join(dir, 'state');
    const sock = `unix:${join(dir, 'c.sock')}`;
    await Controller.start({ id: 1, listen: [sock], stateDir: st }).then((c) => c.close());
    writeFileSync(join(st, 'lock'), `${pid}\n`);
    const c = await Controller.start({ id: 1, listen: [sock], stateDir: st });
    try {
      t.is(readFileSync(join(st, 'lock'), 'utf8'), `${process.pid}\n`);
      const p = await connect(sock);
      await p.nullOp();
      await p.close();
    } finally {
      await c.close();
    }
    t.false(existsSync(join(st, 'lock')), 'close removes the lock file');
  });
}

test('two live Controllers on one state dir: EBUSY naming the holder pid, in-process and across OS processes', async (t) => {
  const dir = tempDir();
  const st = join(dir, 'state');
  const c1 = await Controller.start({ id: 1, listen: [`unix:${join(dir, 'a.sock')}`], stateDir: st });
  try {
    const busy = await startError(Controller.start({ id: 1, listen: [`unix:${join(dir, 'b.sock')}`], stateDir: st }));
    t.is(busy.code, 'EBUSY');
    t.is(busy.message, `EBUSY: state dir ${st} is in use by controller pid ${process.pid} (lock file ${join(st, 'lock')})`);
    // The lock is the flock, not the file's contents: a rewritten file does not free it.
    writeFileSync(join(st, 'lock'), '1\n');
    t.is((await startError(Controller.start({ id: 1, listen: [`unix:${join(dir, 'b.sock')}`], stateDir: st }))).code, 'EBUSY');
  } finally {
    await c1.close();
  }
  const st2 = join(dir, 'state2');
  const other = await spawnFractos(['controller', '--id', '2', '--listen', `unix:${join(dir, 'o.sock')}`, '--state-dir', st2], READY);
  try {
    const busy = await startError(Controller.start({ id: 2, listen: [`unix:${join(dir, 'p.sock')}`], stateDir: st2 }));
    t.is(busy.code, 'EBUSY');
    t.true(busy.message.includes(`controller pid ${other.child.pid}`), busy.message);
  } finally {
    await other.stop();
  }
});

test('SIGHUP stops `fractos controller` like SIGTERM: exit 0, one line, socket and lock removed', async (t) => {
  const dir = tempDir();
  const st = join(dir, 'state');
  const c = await spawnFractos(['controller', '--id', '1', '--listen', `unix:${join(dir, 'c.sock')}`, '--state-dir', st], READY);
  const exited = new Promise<[number | null, string | null]>((r) => c.child.once('close', (code, sig) => r([code, sig]))); // exited, output read
  c.child.kill('SIGHUP');
  t.deepEqual(await exited, [0, null], c.output());
  t.regex(c.output(), /^controller: stopped on SIGHUP$/m);
  t.false(existsSync(join(dir, 'c.sock')), 'socket removed');
  t.false(existsSync(join(st, 'lock')), 'lock removed');
});

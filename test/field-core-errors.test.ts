/**
 * Review of issue #7, items 9 and 10: an error's code appears once in its message whatever
 * path it took (a FractosError made from another's message, a Controller's error reply, a
 * service's replyError with `err.message`); and a
 * command whose output cannot be written (`> /dev/full`) ends with a `fractos:` line, not a
 * stack trace.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, defineRequest, FractosError } from '../libfractos/index.js';
import { FRACTOS_BIN, REPO_ROOT, tempDir } from './helpers/spawn.js';

const Claim = defineRequest('field.errors.claim', { n: 'u32' }, ['onSuccess', 'onError'] as const);
const Claim2 = defineRequest('field.errors.claim2', {}, ['onSuccess', 'onError'] as const);

async function rejection(p: Promise<unknown>): Promise<FractosError> {
  const r = await p.then(() => null, (e: unknown) => e);
  if (r instanceof FractosError) return r;
  throw new Error(`expected a FractosError, got ${String(r)}`);
}

test('FractosError: a message that already starts with its code keeps one copy; another code is kept', (t) => {
  t.is(new FractosError('EBUSY', 'EBUSY: volume administration is held').message, 'EBUSY: volume administration is held');
  t.is(new FractosError('EBUSY', 'EBUSY: EBUSY: x').message, 'EBUSY: x');
  t.is(new FractosError('EBUSY', 'EBUSY').message, 'EBUSY');
  t.is(new FractosError('EIO', 'EBUSY: x').message, 'EIO: EBUSY: x');
  t.is(new FractosError('EIO').message, 'EIO');
});

test('over the wire: Controller error replies and replyError(err.message) carry the code once', async (t) => {
  const dir = tempDir();
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'st') });
  const svc = await connect(addr, { name: 'svc' });
  const cli = await connect(addr, { name: 'cli' });
  try {
    // A Controller's error reply.
    t.is((await rejection(cli.kvGet('nothing'))).message, "ENOENT: no cap published as 'nothing'");
    // A service that passes on a FractosError's message (the blockdev's #fail pattern).
    svc.serve(Claim, async ({ imms, caps }) => {
      const e = new FractosError('EBUSY', `volume administration is held (${imms.n})`);
      await svc.replyError(caps.onError, e.code, e.message);
    });
    await svc.kvPut('claim', await svc.createRequest(Claim));
    const claim = await cli.kvGet('claim');
    const e = await rejection(cli.rpc(claim, Claim, { n: 7 }, {}, { timeoutMs: 3000 }));
    t.is(e.code, 'EBUSY');
    t.is(e.message, 'EBUSY: volume administration is held (7)');
    // replyError with a message that already starts with the code (as `e.message` does).
    svc.serve(Claim2, async ({ caps }) => {
      await svc.replyError(caps.onError, 'EBUSY', 'EBUSY: EBUSY: busy twice over');
    });
    const claim2 = await svc.createRequest(Claim2);
    await svc.kvPut('claim2', claim2);
    t.is((await rejection(cli.rpc(await cli.kvGet('claim2'), Claim2, {}, {}, { timeoutMs: 3000 }))).message, 'EBUSY: busy twice over');
  } finally {
    await cli.close();
    await svc.close();
    await c.close();
  }
});

test('`fractos stats > /dev/full`: a fractos: ENOSPC line and exit 1, no stack trace', async (t) => {
  const dir = tempDir();
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'st') });
  const full = openSync('/dev/full', 'w');
  try {
    const child = spawn(process.execPath, [FRACTOS_BIN, 'stats', '--controller', addr], { cwd: REPO_ROOT, stdio: ['ignore', full, 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((r) => child.once('close', (n) => r(n)));
    t.is(code, 1, err);
    t.regex(err, /^fractos: ENOSPC: cannot write the output: no space left on device/, err);
    t.notRegex(err, /\n\s+at /, err);
  } finally {
    closeSync(full);
    await c.close();
  }
});

/**
 * Review of issue #7, gap 8: a service Ctrl-C'd before it is ready (the FS waits up to 30 s
 * for a blockdev's admin_claim) exits 0 with `NAME: stopped on SIGINT`, after closing what
 * it had started (its Process leaves the Controller), not 130 with no line.
 */
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { run } from './helpers/cli.js';
import { FRACTOS_BIN, tempDir } from './helpers/spawn.js';
import { waitFor } from './helpers/stall.js';
import test from 'ava';

/** Live Process links of `c` named `name`. */
function liveProcs(c: Controller, name: string): number {
  return c.stats().filter((s) => s.kind === 'process' && s.name === name && s.framesIn > 0).length;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  test(`fractos fs with no blockdev (still starting): ${sig} exits 0 with "fs: stopped on ${sig}"`, async (t) => {
    const dir = tempDir();
    const addr = `unix:${join(dir, 'c.sock')}`;
    const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'state') });
    try {
      const fs = run([FRACTOS_BIN, 'fs', '--controller', addr]);
      t.teardown(() => fs.child.kill('SIGKILL'));
      // Connected and waiting for blockdev.admin_claim (it never comes).
      await waitFor(() => liveProcs(c, 'fs') === 1, 20_000, 'the FS to connect');
      await new Promise((r) => setTimeout(r, 300));
      fs.child.kill(sig);
      const r = await fs.exit;
      t.deepEqual(r, { code: 0, signal: null }, fs.out());
      t.regex(fs.out(), new RegExp(`^fs: stopped on ${sig}$`, 'm'), fs.out());
      t.notRegex(fs.out(), /controller channel closed|EDISCONNECTED/, fs.out());
    } finally {
      await c.close();
    }
  });
}

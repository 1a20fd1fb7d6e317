/**
 * Review of issue #7, gap 10 (part): a gpu invoke delivery that does not decode gets its
 * onError (as every served Request), not a hang; a blockdev I/O delivery refused with no
 * onError cap to tell is reported by a (rate-limited) warn line, not dropped silently.
 */
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { openBackend } from '../gpu-adaptor/backend.js';
import { GpuContext } from '../gpu-adaptor/client.js';
import { Invoke } from '../gpu-adaptor/schema.js';
import { GpuService } from '../gpu-adaptor/service.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, volumeCreate } from '../blockdev-adaptor/client.js';
import { VolumeWrite } from '../blockdev-adaptor/schema.js';
import { connect, FractosError, type Process } from '../libfractos/index.js';
import { deviceDir } from './helpers/devices.js';
import { tempDir } from './helpers/spawn.js';
import { codeOf } from './helpers/errors.js';
import { waitFor } from './helpers/stall.js';
import test from 'ava';

const devices = await deviceDir('fractos-fundec', 'field-hostile-undecodable.test');

async function controller(): Promise<{ c: Controller; addr: string }> {
  const d = tempDir();
  const addr = `unix:${join(d, 'c.sock')}`;
  return { c: await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') }), addr };
}

test.serial('gpu: an invoke delivery that does not decode gets onError with the decoder\'s code', async (t) => {
  const { c, addr } = await controller();
  const backend = openBackend('cpu');
  const procs: Process[] = [];
  const decode = Invoke.decode.bind(Invoke);
  try {
    const sp = await connect(addr, { name: 'gpu-adaptor', memoryDescriptors: true });
    const app = await connect(addr, { name: 'app' });
    procs.push(app, sp);
    const svc = await GpuService.start(sp, backend, {});
    const ctx = await GpuContext.open(app);
    const invoke = await ctx.load('lbp_chi2_batch');
    // A future schema whose decoder refuses this delivery (as a string field longer than its bound would).
    Invoke.decode = () => {
      throw new FractosError('ERANGE', 'gpu.invoke.x: string longer than its bound');
    };
    t.is(await codeOf(app.rpc(invoke, Invoke, { n: 1 }, {}, { timeoutMs: 5000 })), 'ERANGE');
    Invoke.decode = decode;
    await svc.close();
  } finally {
    Invoke.decode = decode;
    for (const p of procs) await p.close().catch(() => {});
    await c.close();
  }
});

devices.vtest('blockdev: I/O refused with no onError cap is a warn line, one per 10 s with the count', async (t) => {
  const { c, addr } = await controller();
  const warns: string[] = [];
  const log = { info: () => {}, warn: (_o: object, m?: string) => void warns.push(m ?? '') };
  const bd = await BlockdevService.start({ device: devices.devFile(64 << 20), controller: addr, format: true, queueDepth: 16, log });
  const p = await connect(addr, { name: 'client' });
  try {
    const admin = await adminClaim(p, 'blockdev', 5000);
    const v = await volumeCreate(p, admin.create, 1 << 20);
    const before = warns.length;
    // No buffer and no continuations: EINVAL, nobody to tell.
    for (let i = 0; i < 5; i++) await p.invoke(v.write, VolumeWrite, { offset: 0, length: 4096 }, {});
    await waitFor(() => bd.counts.dropped === 5, 10_000, 'the five deliveries to be refused');
    const lines = warns.slice(before).filter((m) => /no onError cap/.test(m));
    t.is(lines.length, 1, warns.join('\n'));
    t.regex(lines[0]!, /dropped 1 delivery .*no buffer cap/);
  } finally {
    await p.close().catch(() => {});
    await bd.close();
    await c.close();
  }
});

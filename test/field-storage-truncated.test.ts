/**
 * A client that tries to truncate its shared region under Memory the FS has mapped (mediated
 * I/O copies straight between the client's mapping and a stage slot): the region is a sealed
 * memfd, the ftruncate fails with EPERM, and the FS's mapping keeps working for it and for
 * other clients. (A SIGBUS here would kill this test's worker: the FS runs in-process.)
 */
import { ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { IoPort } from '../blockdev-adaptor/client.js';
import { FsService } from '../fs-service/service.js';
import { FsClient } from '../fs-service/client.js';
import { deviceDir } from './helpers/devices.js';
import { fsVictimAndEvil } from './helpers/stall.js';
import { removeTempDir, tempDir } from './helpers/spawn.js';

const devices = await deviceDir('fractos-fstr', 'field-storage-truncated.test');

devices.vtest('FS mediated I/O from a client region whose owner tries to truncate it: the seal refuses, the FS serves on', async (t) => {
  const d = tempDir();
  t.teardown(() => removeTempDir(d));
  const addr = `unix:${join(d, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') });
  const bd = await BlockdevService.start({ device: devices.devFile(64 << 20), controller: addr, format: true, queueDepth: 16 });
  const fsvc = await FsService.start({ controller: addr });
  const { victim, evil, vport, data, vbuf, vf } = await fsVictimAndEvil(addr);
  try {
    const efs = await FsClient.connect(evil);
    const eport = new IoPort(evil);
    const ebuf = await evil.memoryCreateShared(64 << 10);
    const ef = await efs.open('/hostile', { create: true });
    t.is(await eport.ioAsync(ef.write, true, 0, 64 << 10, ebuf.cid), 64 << 10); // the FS maps the region
    t.throws(() => ftruncateSync(ebuf.region.fd, 0), { code: 'EPERM' });
    ebuf.region.bytes.fill(0x6b);
    t.is(await eport.ioAsync(ef.write, true, 0, 64 << 10, ebuf.cid), 64 << 10);
    ebuf.region.bytes.fill(0);
    t.is(await eport.ioAsync(ef.read, false, 0, 64 << 10, ebuf.cid), 64 << 10);
    t.true(ebuf.region.bytes.every((x) => x === 0x6b));
    // The FS lives: the victim's file reads back intact.
    vbuf.region.bytes.fill(0);
    t.is(await vport.ioAsync(vf.read, false, 0, 64 << 10, vbuf.cid), 64 << 10);
    t.true(Buffer.from(vbuf.region.bytes).equals(data));
  } finally {
    await victim.close();
    await evil.close();
    await fsvc.close();
    await bd.close();
    await c.close();
  }
});

/**
 * FS extents: a volume created for a file that is deleted while the volume is being created
 * is freed at once, also when a new file has taken the same path meanwhile (the check is
 * "is this still the file at its path", not "does the path exist"). Before, such a volume
 * stayed attached to the dead file record until the next start-up's reclaim.
 */
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect } from '../libfractos/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { IoPort } from '../blockdev-adaptor/client.js';
import { FsService } from '../fs-service/service.js';
import { FsClient } from '../fs-service/client.js';
import { deviceDir } from './helpers/devices.js';
import { removeTempDir, tempDir } from './helpers/spawn.js';

const devices = await deviceDir('fractos-fse', 'field-storage-extents.test');

devices.vtest('a volume allocated for a file deleted and re-created at the same path meanwhile is freed, not leaked', async (t) => {
  const d = tempDir();
  t.teardown(() => removeTempDir(d));
  const addr = `unix:${join(d, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') });
  const bd = await BlockdevService.start({ device: devices.devFile(256 << 20), controller: addr, format: true, queueDepth: 32 });
  const fsvc = await FsService.start({ controller: addr });
  const p = await connect(addr, { name: 'client' });
  try {
    const fs = await FsClient.connect(p);
    const port = new IoPort(p);
    // Writes larger than the FS's pooled small-file size (256 KiB): each needs a volume of its own.
    const LEN = 512 << 10;
    const { cid } = await p.memoryCreateShared(LEN);
    const baseline = bd.table.list().length; // the metadata volume(s)
    let raced = 0;
    for (let round = 0; round < 20; round++) {
      const path = `/race-${round}`;
      const f = await fs.open(path, { create: true });
      // The write needs a new extent (a volume_create round trip to the blockdev); the delete
      // and the re-create are served while that round trip is in flight.
      const w = port.ioAsync(f.write, true, 0, LEN, cid).then(() => 'written', (e: Error) => e.message);
      const del = fs.delete(path).then(() => fs.create(path));
      const [wr] = await Promise.all([w, del]);
      if (wr !== 'written') raced++;
      await fs.close(f).catch(() => {});
      // The new file at `path` is empty: it holds no volume.
      t.is((await fs.stat(path)).size, 0);
      await fs.delete(path);
      t.is(bd.table.list().length, baseline, `round ${round}: ${bd.table.list().length - baseline} volume(s) leaked (write: ${wr})`);
    }
    t.log(`${raced} of 20 writes lost the race with the delete`);
  } finally {
    await p.close();
    await fsvc.close();
    await bd.close();
    await c.close();
  }
});

/**
 * Issue #7 item 10: the blockdev's volume administration belongs to one owner (the FS).
 * A hostile client that never opened a file finds no volume Request by name, cannot claim
 * the administration while the FS holds it, cannot retarget the per-file grants it was
 * given, and loses every grant of the old owner when the claim moves; the claim reopens
 * when its holder goes away.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, type Process } from '../libfractos/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, adminRelease, IoPort, volumeCreate, volumeList, volumeOpen } from '../blockdev-adaptor/client.js';
import { VolumeRead } from '../blockdev-adaptor/schema.js';
import { FsService } from '../fs-service/service.js';
import { FsClient } from '../fs-service/client.js';
import { deviceDir } from './helpers/devices.js';
import { tempDir } from './helpers/spawn.js';
import { expectCode as code } from './helpers/errors.js';

const devices = await deviceDir('fractos-fadm', 'field-storage-admin.test');
const { vtest } = devices;

async function stack(): Promise<{ c: Controller; addr: string; bd: BlockdevService; fs: FsService | null; procs: Process[] }> {
  const d = tempDir();
  const addr = `unix:${join(d, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') });
  const bd = await BlockdevService.start({ device: devices.devFile(64 << 20), controller: addr, format: true, queueDepth: 16 });
  const fs = await FsService.start({ controller: addr });
  return { c, addr, bd, fs, procs: [] };
}

vtest('a hostile client reaches no volume it was not given; the claim is the FS\'s alone', async (t) => {
  const e = await stack();
  try {
    const victim = await connect(e.addr, { name: 'victim' });
    const evil = await connect(e.addr, { name: 'evil' });
    e.procs.push(victim, evil);
    const vfs = await FsClient.connect(victim);
    const vport = new IoPort(victim);
    const secret = randomBytes(1 << 16);
    const vbuf = await victim.memoryCreateShared(1 << 16);
    vbuf.region.bytes.set(secret);
    const f = await vfs.open('/enrolled', { create: true });
    await vport.ioAsync(f.write, true, 0, 1 << 16, vbuf.cid);

    // The old bootstrap names are gone: no volume administration by name.
    for (const n of ['volume_list', 'volume_open', 'volume_create']) await code(t, evil.kvGet(`blockdev.${n}`), 'ENOENT');
    // The FS holds the claim: a second claim is refused.
    t.true(e.bd.adminHeld);
    await code(t, adminClaim(evil, 'blockdev', 0), 'EBUSY');
    await code(t, adminClaim(evil, 'blockdev', 300), 'EBUSY'); // retried, still held

    // Its own DAX grant reaches its own file's volume only: the volume is preset (EARGSET).
    const efs = await FsClient.connect(evil);
    const eport = new IoPort(evil);
    const mine = await efs.open('/mine', { create: true, dax: false });
    const ebuf = await evil.memoryCreateShared(1 << 16);
    await eport.ioAsync(mine.write, true, 0, 4096, ebuf.cid);
    await efs.close(mine);
    const dax = await efs.open('/mine', { dax: true });
    t.is(dax.extents.length, 1);
    // Retargeting it at volume 1 (the FS metadata) or any other volume is refused.
    for (const volume of e.bd.table.list().map((v) => v.id)) await code(t, evil.requestDerive(dax.extents[0]!.read, VolumeRead.args({ volume })), 'EARGSET');

    // The victim's bytes are intact and only reachable through the FS.
    vbuf.region.bytes.fill(0);
    await vport.ioAsync(f.read, false, 0, 1 << 16, vbuf.cid);
    t.true(Buffer.from(vbuf.region.bytes).equals(secret));
  } finally {
    for (const p of e.procs) await p.close();
    await e.fs?.close();
    await e.bd.close();
    await e.c.close();
  }
});

vtest('the claim reopens when its holder goes away; the old holder\'s grants are revoked', async (t) => {
  const e = await stack();
  try {
    const client = await connect(e.addr, { name: 'client' });
    const other = await connect(e.addr, { name: 'other' });
    e.procs.push(client, other);
    const cfs = await FsClient.connect(client);
    const port = new IoPort(client);
    const buf = await client.memoryCreateShared(1 << 16);
    const f = await cfs.open('/a', { create: true });
    await port.ioAsync(f.write, true, 0, 4096, buf.cid);
    await cfs.close(f);
    const dax = await cfs.open('/a', { dax: true });
    t.is(await port.ioAsync(dax.extents[0]!.read, false, 0, 4096, buf.cid), 4096);

    // The FS goes away: its claim reopens and every grant made under it is revoked.
    await e.fs!.close();
    e.fs = null;
    const admin = await adminClaim(client, 'blockdev', 10_000);
    t.true(e.bd.adminHeld);
    await code(t, port.ioAsync(dax.extents[0]!.read, false, 0, 4096, buf.cid), 'EREVOKED');
    const ids = await volumeList(client, admin.list);
    t.true(ids.length >= 2);
    await code(t, adminClaim(other, 'blockdev', 0), 'EBUSY');

    // Handed-out volumes belong to this claim: after the release they are revoked.
    const v = await volumeCreate(client, admin.create, 1 << 20);
    const w = await volumeOpen(client, admin.open, ids[0]!);
    // A revtree child of an admin Request still reaches the administration: the claim stays held.
    const kept = await client.capCreateRevtree(admin.open);
    await adminRelease(client, admin);
    await code(t, adminClaim(other, 'blockdev', 300), 'EBUSY');
    t.is((await volumeOpen(client, kept, ids[0]!)).volume, ids[0]);
    await client.capDrop(kept);
    const again = await adminClaim(other, 'blockdev', 10_000);
    await code(t, port.ioAsync(v.read, false, 0, 4096, buf.cid), 'EREVOKED');
    await code(t, port.ioAsync(w.write, true, 0, 4096, buf.cid), 'EREVOKED');

    // A holder that dies releases as well.
    await other.close();
    const third = await connect(e.addr, { name: 'third' });
    e.procs.push(third);
    const a3 = await adminClaim(third, 'blockdev', 10_000);
    t.deepEqual(await volumeList(third, a3.list), [...ids, v.volume].sort((x, y) => x - y));
    t.truthy(again);
  } finally {
    for (const p of e.procs) await p.close().catch(() => {});
    await e.fs?.close();
    await e.bd.close();
    await e.c.close();
  }
});

/**
 * Issue #7 item 14: a client buffer revoked before the blockdev's bounce-path copy must reach
 * the client's onError as EREVOKED. (The bounce completion carried the copy's error as a
 * -errno, and the old code -> errno table turned EREVOKED into 9 (EBADF), which came back
 * as EIO.) The copy is made to find the buffer revoked deterministically: the test wraps
 * the service Process's memory_copy so that the client revokes its buffer just before the
 * service's copy of that op is sent.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, type Process } from '../libfractos/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, IoPort, volumeCreate } from '../blockdev-adaptor/client.js';
import { deviceDir } from './helpers/devices.js';
import { expectCode } from './helpers/errors.js';

const devices = await deviceDir('fractos-fnb', 'field-native-bounce.test');

/** Make the service's next memory_copy run `before` first (once). */
function beforeNextCopy(svc: BlockdevService, before: () => Promise<void>): void {
  const proc = svc.proc;
  const orig = proc.memoryCopy.bind(proc);
  proc.memoryCopy = async (src: number, dst: number): Promise<void> => {
    proc.memoryCopy = orig;
    await before();
    return orig(src, dst);
  };
}

devices.vtest('a buffer revoked before the bounce copy fails the write and the read with EREVOKED, not EIO', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fractos-fnb-'));
  const addr = `unix:${join(dir, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(dir, 'state') });
  let svc: BlockdevService | undefined;
  let p: Process | undefined;
  try {
    svc = await BlockdevService.start({ device: devices.devFile(16 << 20), controller: addr, format: true, queueDepth: 8 });
    p = await connect(addr, { name: 'client' });
    const v = await volumeCreate(p, (await adminClaim(p, 'blockdev', 5000)).create, 1 << 20);
    const port = new IoPort(p);
    const { cid } = await p.memoryCreateShared(64 << 10);
    // Views at byte offset 100: not usable for O_DIRECT, so the blockdev bounces them.
    const view = (): Promise<number> => p!.memoryDiminish(cid, 100, 4096);

    const w = await view();
    beforeNextCopy(svc, () => p!.capRevoke(w));
    const bounced = svc.counts.bounce;
    await expectCode(t, port.ioAsync(v.write, true, 0, 4096, w), 'EREVOKED');
    t.is(svc.counts.bounce, bounced + 1, 'the write went through the bounce path');

    const r = await view();
    beforeNextCopy(svc, () => p!.capRevoke(r));
    await expectCode(t, port.ioAsync(v.read, false, 0, 4096, r), 'EREVOKED');
    t.is(svc.counts.bounce, bounced + 2, 'the read went through the bounce path');

    // The slots were given back: a live view still goes through.
    t.is(await port.ioAsync(v.write, true, 4096, 4096, await view()), 4096);
  } finally {
    await p?.close();
    await svc?.close();
    await c.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

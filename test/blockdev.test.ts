/**
 * The blockdev adaptor service: data integrity under concurrent mixed I/O (direct and bounce
 * paths), bad inputs, revocation on volume delete, persistence across restarts (OS process,
 * kill -9). A loop device is used when root and losetup are available; otherwise a regular
 * O_DIRECT file (logged).
 */
import { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Controller } from '../controller/index.js';
import { connect, Perm, type Process } from '../libfractos/index.js';
import { BlockdevService } from '../blockdev-adaptor/service.js';
import { adminClaim, IoPort, volumeCreate, volumeList, volumeOpen } from '../blockdev-adaptor/client.js';
import { VolumeDelete, WriteFlags } from '../blockdev-adaptor/schema.js';
import { deviceDir } from './helpers/devices.js';
import { spawnFractos, tempDir } from './helpers/spawn.js';
import { expectCode as code } from './helpers/errors.js';

const devices = await deviceDir('fractos-bdt', 'blockdev.test');
const { vtest } = devices;

const devFile = (size = 64 << 20): string => devices.devFile(size);

/** A loop device over a fresh file, or null (not root / no losetup). */
function loopDevice(t: ExecutionContext, size: number): { dev: string; detach: () => void } | null {
  try {
    const dev = execFileSync('losetup', ['--find', '--show', devFile(size)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    return { dev, detach: () => execFileSync('losetup', ['-d', dev]) };
  } catch (e) {
    t.log(`no loop device (${(e as Error).message.split('\n')[0]}): falling back to a regular O_DIRECT file`);
    return null;
  }
}

interface Env {
  c: Controller;
  addr: string;
  svc: BlockdevService | null;
  procs: Process[];
}

async function env(device: string, withService = true, native = true): Promise<Env> {
  const d = tempDir();
  const addr = `unix:${join(d, 'c.sock')}`;
  const c = await Controller.start({ id: 1, listen: [addr], stateDir: join(d, 'state') });
  const svc = withService ? await BlockdevService.start({ device, controller: addr, format: true, queueDepth: 32, native }) : null;
  return { c, addr, svc, procs: [] };
}

async function client(e: Env): Promise<Process> {
  const p = await connect(e.addr, { name: 'client' });
  e.procs.push(p);
  return p;
}

async function teardown(e: Env): Promise<void> {
  for (const p of e.procs) await p.close();
  await e.svc?.close();
  await e.c.close();
}


function pattern(seed: number, block: number, out: Uint8Array): void {
  const h = createHash('sha256').update(`${seed}:${block}`).digest();
  for (let i = 0; i < out.length; i += 32) out.set(h.subarray(0, Math.min(32, out.length - i)), i);
  out[0] = block & 0xff;
}

async function integrity(t: ExecutionContext, device: string, native: boolean): Promise<void> {
  const e = await env(device, true, native);
  try {
    const p = await client(e);
    const v = await volumeCreate(p, (await adminClaim(p, 'blockdev', 5000)).create, 8 << 20);
    t.is(v.blockSize % 512, 0);
    const port = new IoPort(p);
    const QD = 32;
    const BS = 4096;
    // Slots of one region shared whole: the blockdev maps the region once (memory_map) and DMAs into each slot.
    const { cid, region } = await p.memoryCreateShared(QD * BS, Perm.RW, { shareWhole: true });
    const bufs = await Promise.all(Array.from({ length: QD }, (_, i) => p.memoryDiminish(cid, i * BS, BS)));
    const nblocks = v.size / BS;
    const written = new Map<number, string>(); // block -> sha of what the last completed write stored
    const busy = new Set<number>();
    let ops = 0;
    const seed = 7;
    const worker = async (slot: number): Promise<void> => {
      const mem = region.bytes.subarray(slot * BS, (slot + 1) * BS);
      while (ops < 1500) {
        ops++;
        let blk = Math.floor(Math.random() * nblocks);
        while (busy.has(blk)) blk = (blk + 1) % nblocks;
        busy.add(blk);
        if (Math.random() < 0.5 || !written.has(blk)) {
          pattern(seed + ops, blk, mem);
          const sum = createHash('sha256').update(mem).digest('hex');
          await port.ioAsync(v.write, true, blk * BS, BS, bufs[slot]!, ops % 7 === 0 ? WriteFlags.FUA : 0);
          written.set(blk, sum);
        } else {
          mem.fill(0xee);
          t.is(await port.ioAsync(v.read, false, blk * BS, BS, bufs[slot]!), BS);
          t.is(createHash('sha256').update(mem).digest('hex'), written.get(blk) ?? 'none', `block ${blk}`);
        }
        busy.delete(blk);
      }
    };
    await Promise.all(Array.from({ length: QD }, (_, i) => worker(i)));
    // Untouched blocks of a new volume read as zeros.
    const zero = [...Array(nblocks).keys()].find((b) => !written.has(b));
    if (zero !== undefined) {
      await port.ioAsync(v.read, false, zero * BS, BS, bufs[0]!);
      t.true(region.bytes.subarray(0, BS).every((x) => x === 0));
    }
    t.true(e.svc!.counts.direct > 1000);
    t.is(e.svc!.counts.bounce, 0);
    const n = e.svc!.nativeStats;
    if (native) {
      // The native I/O loop served the plain case: everything but the first use of the
      // region (mapped by JS) and the FUA writes (flushed by JS).
      t.log('native loop', n);
      t.truthy(n?.attached);
      t.true(e.svc!.counts.native > 1000, `native ops ${e.svc!.counts.native}`);
      t.true(n!.reads > 50 && n!.writes > 300, `reads ${n!.reads} writes ${n!.writes}`);
      t.is(n!.ioErrors, 0);
      t.is(n!.invokeErrors, 0);
      t.true(n!.fallbacks.fua > 0);
      t.true(n!.fallbacks.unmapped <= 2 * QD);
    } else {
      t.is(n, null);
      t.is(e.svc!.counts.native, 0);
    }
  } finally {
    await teardown(e);
  }
}

vtest('concurrent mixed I/O keeps data intact (loop device if possible)', async (t) => {
  const loop = loopDevice(t, 64 << 20);
  try {
    await integrity(t, loop?.dev ?? devFile(), true);
  } finally {
    loop?.detach();
  }
});

vtest('concurrent mixed I/O keeps data intact with the native I/O loop off (JS path)', async (t) => {
  await integrity(t, devFile(), false);
});

vtest('unaligned Memory goes through bounce buffers + memory_copy, large I/O too', async (t) => {
  const e = await env(devFile());
  try {
    const p = await client(e);
    const v = await volumeCreate(p, (await adminClaim(p, 'blockdev', 5000)).create, 4 << 20);
    const port = new IoPort(p);
    const { cid, region } = await p.memoryCreateShared(3 << 20);
    const odd = await p.memoryDiminish(cid, 100, (2 << 20) + 4096); // offset 100: not usable for O_DIRECT
    const data = randomBytes(2 << 20);
    region.bytes.set(data, 100);
    await port.ioAsync(v.write, true, 4096, 2 << 20, odd);
    region.bytes.fill(0);
    await port.ioAsync(v.read, false, 4096, 2 << 20, odd);
    t.true(Buffer.from(region.bytes.subarray(100, 100 + (2 << 20))).equals(data));
    t.true(e.svc!.counts.bounce >= 2);
    // The same range read straight into an aligned view.
    const direct = await p.memoryDiminish(cid, 0, 2 << 20);
    region.bytes.fill(0);
    await port.ioAsync(v.read, false, 4096, 2 << 20, direct);
    t.true(Buffer.from(region.bytes.subarray(0, 2 << 20)).equals(data));
  } finally {
    await teardown(e);
  }
});

vtest('bad inputs go to onError with a code', async (t) => {
  const e = await env(devFile(16 << 20));
  try {
    const p = await client(e);
    const { create, open, list } = await adminClaim(p, 'blockdev', 5000);
    const v = await volumeCreate(p, create, 1 << 20);
    const port = new IoPort(p);
    const { cid } = await p.memoryCreateShared(64 << 10);
    const ro = await p.memoryDiminish(cid, 0, 8192, Perm.WRITE);
    const small = await p.memoryDiminish(cid, 0, 4096);
    await code(t, port.ioAsync(v.read, false, 100, 4096, cid), 'EINVAL'); // misaligned offset
    await code(t, port.ioAsync(v.read, false, 0, 1000, cid), 'EINVAL'); // misaligned length
    await code(t, port.ioAsync(v.read, false, 1 << 20, 4096, cid), 'ERANGE'); // past the end
    await code(t, port.ioAsync(v.write, true, (1 << 20) - 4096, 8192, cid), 'ERANGE'); // straddles the end
    await code(t, port.ioAsync(v.read, false, 0, 8192, small), 'ERANGE'); // buffer too small
    await code(t, port.ioAsync(v.read, false, 0, 4096, ro), 'EPERM'); // read into read-only Memory
    t.is(await port.ioAsync(v.write, true, 0, 4096, ro), 4096); // writing from it is fine
    await code(t, port.ioAsync(v.read, false, 0, 0, cid), 'EINVAL');
    await code(t, port.ioAsync(v.read, false, 0, 4096, 0), 'EBADCAP'); // no buffer: the Controller refuses cid 0
    await code(t, volumeCreate(p, create, 1 << 30), 'ENOSPC'); // full device
    await code(t, volumeOpen(p, open, 999), 'ENOENT');
    await code(t, volumeCreate(p, create, 0), 'EINVAL');
    // Deleting revokes the volume's Requests: EREVOKED even after the extent is reused.
    await p.rpc(v.delete, VolumeDelete);
    const w = await volumeCreate(p, create, 1 << 20);
    t.not(w.volume, v.volume);
    await code(t, port.ioAsync(v.read, false, 0, 4096, cid), 'EREVOKED');
    await code(t, port.ioAsync(v.write, true, 0, 4096, cid), 'EREVOKED');
    // volume_list: every volume id, ascending; deleted ones are gone.
    const x = await volumeCreate(p, create, 1 << 20);
    t.deepEqual(await volumeList(p, list), [w.volume, x.volume]);
    const child = await p.capCreateRevtree(w.read);
    await p.rpc(w.delete, VolumeDelete);
    await code(t, port.ioAsync(child, false, 0, 4096, cid), 'EREVOKED');
    t.deepEqual(await volumeList(p, list), [x.volume]);
    t.is(e.c.constructor.name, 'Controller');
  } finally {
    await teardown(e);
  }
});

vtest('volumes and data persist across kill -9 and restart of the blockdev process', async (t) => {
  const device = devFile(32 << 20);
  const e = await env(device, false);
  const args = ['blockdev', '--device', device, '--controller', e.addr, '--format'];
  let bd = await spawnFractos(args, /^ready blockdev/);
  try {
    t.regex(bd.line, /formatted/);
    let p = await client(e);
    const v = await volumeCreate(p, (await adminClaim(p, 'blockdev', 5000)).create, 2 << 20);
    const port = new IoPort(p);
    const { cid, region } = await p.memoryCreateShared(1 << 20);
    const data = randomBytes(1 << 20);
    region.bytes.set(data);
    await port.ioAsync(v.write, true, 1 << 20, 1 << 20, cid, WriteFlags.FUA);
    await bd.kill9();
    await p.close();
    bd = await spawnFractos(args, /^ready blockdev/);
    t.notRegex(bd.line, /formatted/);
    t.regex(bd.line, /volumes=1/);
    p = await client(e);
    const port2 = new IoPort(p);
    const w = await volumeOpen(p, (await adminClaim(p, 'blockdev', 5000)).open, v.volume);
    t.is(w.size, 2 << 20);
    const m = await p.memoryCreateShared(1 << 20);
    await port2.ioAsync(w.read, false, 1 << 20, 1 << 20, m.cid);
    t.true(Buffer.from(m.region.bytes).equals(data));
  } finally {
    await bd.stop();
    await teardown(e);
  }
});

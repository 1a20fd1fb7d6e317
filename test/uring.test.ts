// io_uring addon + UringBackend on a regular file (O_DIRECT) and, when root with losetup, a loop device.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { errorCodeFromErrno } from '../libfractos/errors.js';
import { UringRing, allocAligned, loadUring } from '../native/uring/index.js';
import { isAligned, ioPromise } from '../blockdev-adaptor/backend.js';
import { UringBackend } from '../blockdev-adaptor/uring-backend.js';

// ---- environment probes (decide at registration which tests run; print why others skip) ----

let nativeReason = '';
try {
  loadUring();
} catch (e) {
  nativeReason = `native uring addon unavailable: ${(e as Error).message}`;
}

/** A directory whose file system accepts O_DIRECT: os.tmpdir(), else /var/tmp (tmpfs refuses O_DIRECT with EINVAL). */
async function directDir(): Promise<{ dir: string; note: string }> {
  const notes: string[] = [];
  for (const base of [tmpdir(), '/var/tmp']) {
    const dir = mkdtempSync(join(base, 'fractos-uring-'));
    const f = join(dir, 'probe.img');
    writeFileSync(f, Buffer.alloc(65536));
    try {
      const b = await UringBackend.open(f, { queueDepth: 1 });
      await b.close();
      rmSync(f);
      return { dir, note: `O_DIRECT test files under ${dir}${notes.length ? ` (${notes.join('; ')})` : ''}` };
    } catch (e) {
      notes.push(`${base} refused O_DIRECT: ${(e as Error).message}`);
      rmSync(dir, { recursive: true, force: true });
    }
  }
  throw new Error(notes.join('; '));
}

let dirReason = '';
let work = { dir: '', note: '' };
if (!nativeReason) {
  try {
    work = await directDir();
  } catch (e) {
    dirReason = `no O_DIRECT-capable temp directory: ${(e as Error).message}`;
  }
}
const fileReason = nativeReason || dirReason;

function probeLoop(): string {
  if (fileReason) return fileReason;
  if (process.getuid?.() !== 0) return 'not root: losetup needs CAP_SYS_ADMIN';
  const f = join(work.dir, 'loop-probe.img');
  writeFileSync(f, Buffer.alloc(1 << 20));
  try {
    const dev = execFileSync('losetup', ['-f', '--show', f], { encoding: 'utf8' }).trim();
    execFileSync('losetup', ['-d', dev]);
    return '';
  } catch (e) {
    return `losetup unusable: ${(e as Error).message.split('\n')[0]}`;
  } finally {
    rmSync(f, { force: true });
  }
}
const loopReason = probeLoop();

for (const r of new Set([fileReason, loopReason])) if (r) console.log(`uring.test: skipping: ${r}`);
const fileTest = fileReason ? test.skip : test.serial;
const loopTest = loopReason ? test.skip : test.serial;
const skipNote = (r: string) => (r ? ` [skipped: ${r}]` : '');

test.after.always(() => {
  if (work.dir) rmSync(work.dir, { recursive: true, force: true });
});

// ---- helpers ----

let fileNo = 0;
function newFile(bytes: number): string {
  const f = join(work.dir, `t${fileNo++}.img`);
  // Written zeros, not a sparse file: ext4/xfs serve O_DIRECT reads of holes without the alignment check.
  writeFileSync(f, Buffer.alloc(bytes));
  return f;
}

/** The deterministic pattern of block `i` (4 KiB) of run `seed`. */
function fillPattern(buf: Uint8Array, i: number, seed: number): void {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let o = 0; o < buf.byteLength; o += 4) v.setUint32(o, (Math.imul(i + 1, 2654435761) ^ (o * 40503) ^ seed) >>> 0, true);
}

function fdTargets(): string[] {
  return readdirSync('/proc/self/fd').map((n) => {
    try {
      return readlinkSync(`/proc/self/fd/${n}`);
    } catch {
      return '?';
    }
  });
}
const ringFds = () => fdTargets().filter((t) => t.includes('io_uring') || t.includes('eventfd')).length;

/** Writes `blocks` 4 KiB blocks of pattern `seed` all at once, then reads them back; returns stats. */
async function patternRoundTrip(b: UringBackend, blocks: number, seed: number, base = 0) {
  const BS = 4096;
  const arena = b.alloc(blocks * BS);
  const sums = new Uint32Array(blocks);
  let maxInFlight = 0;
  let maxQueued = 0;
  const writes: Promise<number>[] = [];
  for (let i = 0; i < blocks; i++) {
    const blk = arena.subarray(i * BS, (i + 1) * BS);
    fillPattern(blk, i, seed);
    sums[i] = crc32(blk);
    writes.push(ioPromise((cb) => b.write(blk, base + i * BS, cb)));
    maxInFlight = Math.max(maxInFlight, b.inFlight);
    maxQueued = Math.max(maxQueued, b.queued);
  }
  const wres = await Promise.all(writes);
  arena.fill(0);
  const reads: Promise<number>[] = [];
  for (let i = 0; i < blocks; i++) {
    reads.push(ioPromise((cb) => b.read(arena.subarray(i * BS, (i + 1) * BS), base + i * BS, cb)));
  }
  const rres = await Promise.all(reads);
  let bad = 0;
  for (let i = 0; i < blocks; i++) if (crc32(arena.subarray(i * BS, (i + 1) * BS)) !== sums[i]) bad++;
  return { wres, rres, bad, maxInFlight, maxQueued };
}

// ---- tests ----

fileTest(`QD32: 2048 x 4 KiB writes then reads, all checksums match${skipNote(fileReason)}`, async (t) => {
  t.log(work.note);
  const b = await UringBackend.open(newFile(16 << 20), { queueDepth: 32 });
  t.teardown(() => b.close());
  t.is(b.size, 16 << 20);
  t.true(b.blockSize >= 512 && b.blockSize <= 4096);
  const s = await patternRoundTrip(b, 2048, 0x5eed);
  t.is(s.maxInFlight, 32, 'ring filled to queue depth');
  t.is(s.maxQueued, 2048 - 32, 'excess queued in the FIFO, not dropped');
  t.true(s.wres.every((r) => r === 4096), 'all writes complete in full');
  t.true(s.rres.every((r) => r === 4096), 'all reads complete in full');
  t.is(s.bad, 0, 'no block checksum mismatch');
  t.is(b.inFlight + b.queued, 0);
});

fileTest(`misaligned offset, length and buffer surface the kernel's -EINVAL${skipNote(fileReason)}`, async (t) => {
  const b = await UringBackend.open(newFile(1 << 20), { queueDepth: 8 });
  t.teardown(() => b.close());
  const buf = b.alloc(3 * 4096);
  const aligned = buf.subarray(0, 4096);
  t.true(isAligned(aligned, 4096, 4096, b.blockSize));
  const offRes = await ioPromise((cb) => b.read(aligned, b.blockSize / 2, cb));
  t.is(offRes, -22);
  t.is(errorCodeFromErrno(offRes), 'EINVAL');
  t.is(await ioPromise((cb) => b.write(aligned, 4096 + 100, cb)), -22, 'misaligned write offset');
  const lenRes = await ioPromise((cb) => b.write(buf.subarray(0, b.blockSize + 100), 0, cb));
  t.is(errorCodeFromErrno(lenRes), 'EINVAL');
  const odd = buf.subarray(1, 4097);
  t.false(isAligned(odd, 0, 4096, b.blockSize));
  const bufRes = await ioPromise((cb) => b.read(odd, 0, cb));
  t.is(errorCodeFromErrno(bufRes), 'EINVAL', `buffer at +1 byte (memAlign ${b.memAlign}) gives ${bufRes}`);
  t.is(await ioPromise((cb) => b.write(odd, 0, cb)), -22, 'misaligned write buffer');
  t.is(await ioPromise((cb) => b.read(aligned, -4096, cb)), -22, 'negative offset rejected before the kernel');
});

fileTest(`reads past the end return 0 or short${skipNote(fileReason)}`, async (t) => {
  const size = 1 << 20;
  const b = await UringBackend.open(newFile(size), { queueDepth: 4 });
  t.teardown(() => b.close());
  const buf = b.alloc(8192);
  t.is(await ioPromise((cb) => b.read(buf, size, cb)), 0);
  t.is(await ioPromise((cb) => b.read(buf, size + (1 << 20), cb)), 0);
  t.is(await ioPromise((cb) => b.read(buf, size - 4096, cb)), 4096, 'short read at the end');
});

fileTest(`fixed buffers: registered arena, READ_FIXED/WRITE_FIXED round trip${skipNote(fileReason)}`, async (t) => {
  const b = await UringBackend.open(newFile(8 << 20), { queueDepth: 16 });
  t.teardown(() => b.close());
  const arena = b.alloc(1 << 20);
  b.registerBuffers([arena]);
  const s = await patternRoundTrip(b, 256, 0xf1fed, 0);
  t.is(s.bad, 0);
  t.true(s.wres.every((r) => r === 4096) && s.rres.every((r) => r === 4096));

  // The raw verbs: a buffer outside the registered range gives -EFAULT from the kernel.
  const got: [number, number][] = [];
  const ring = UringRing.open(newFile(1 << 20), { entries: 4 }, (tags, res, n) => {
    for (let i = 0; i < n; i++) got.push([tags[i], res[i]]);
  });
  t.teardown(() => ring.close());
  const reg = allocAligned(64 << 10);
  const other = allocAligned(4096);
  t.is(ring.registerBuffers([reg]), 0);
  t.is(ring.registerBuffers([reg]), -16, 'second registration is -EBUSY');
  reg.fill(0xab, 0, 4096);
  t.is(ring.prepWriteFixed(0xdeadbeef, reg.subarray(0, 4096), 0, 0), 0);
  t.is(ring.prepReadFixed(7, reg.subarray(8192, 12288), 0, 0), 0);
  t.is(ring.submit(), 2);
  await waitFor(() => got.length === 2);
  const byTag = new Map(got);
  t.is(byTag.get(0xdeadbeef), 4096, 'u32 tag preserved');
  t.true(byTag.get(7) === 4096 || byTag.get(7) === 0, 'read raced with the write (order not guaranteed)');
  got.length = 0;
  t.is(ring.prepReadFixed(8, other, 0, 0), 0);
  t.is(ring.submit(), 1);
  await waitFor(() => got.length === 1);
  t.is(got[0][1], -14, 'buffer outside the registered range: -EFAULT');
  t.is(ring.unregisterBuffers(), 0);
});

fileTest(`registerBuffers while ops are outstanding throws EBUSY${skipNote(fileReason)}`, async (t) => {
  const b = await UringBackend.open(newFile(1 << 20), { queueDepth: 4 });
  t.teardown(() => b.close());
  const buf = b.alloc(4096);
  const p = ioPromise((cb) => b.read(buf, 0, cb));
  t.throws(() => b.registerBuffers([buf]), { message: /EBUSY/ });
  t.is(await p, 4096);
});

fileTest(`flush (IORING_OP_FSYNC) after writes; read-only open refuses writes${skipNote(fileReason)}`, async (t) => {
  const f = newFile(1 << 20);
  const b = await UringBackend.open(f, { queueDepth: 4 });
  const buf = b.alloc(4096);
  buf.fill(0x42);
  t.is(await ioPromise((cb) => b.write(buf, 8192, cb)), 4096);
  t.is(await ioPromise((cb) => b.flush(cb)), 0);
  await b.close();
  const ro = await UringBackend.open(f, { readOnly: true });
  t.teardown(() => ro.close());
  const back = ro.alloc(4096);
  t.is(await ioPromise((cb) => ro.read(back, 8192, cb)), 4096);
  t.is(back[0], 0x42);
  t.is(errorCodeFromErrno(await ioPromise((cb) => ro.write(back, 0, cb))), 'EIO', 'write on O_RDONLY fd: -EBADF');
  t.is(await ioPromise((cb) => ro.write(back, 0, cb)), -9);
});

fileTest(`close waits for in-flight ops, leaks no fds, later ops get -EBADF${skipNote(fileReason)}`, async (t) => {
  const before = fdTargets().length;
  const ringsBefore = ringFds();
  const b = await UringBackend.open(newFile(4 << 20), { queueDepth: 8 });
  t.is(ringFds(), ringsBefore + 2, 'one io_uring fd + one eventfd while open');
  const buf = b.alloc(4096 * 64);
  let completed = 0;
  for (let i = 0; i < 64; i++) b.read(buf.subarray(i * 4096, (i + 1) * 4096), i * 4096, () => completed++);
  await b.close();
  t.is(completed, 64, 'every queued and in-flight op completed before close resolved');
  t.is(fdTargets().length, before, 'fd count back to what it was');
  t.is(ringFds(), ringsBefore);
  await b.close();
  t.is(await ioPromise((cb) => b.read(buf.subarray(0, 4096), 0, cb)), -9);
});

fileTest(`open errors are typed: ENOENT, EINVAL queue depth${skipNote(fileReason)}`, async (t) => {
  await t.throwsAsync(UringBackend.open(join(work.dir, 'missing.img')), { message: /^ENOENT/ });
  await t.throwsAsync(UringBackend.open(newFile(4096), { queueDepth: 0 }), { message: /^EINVAL/ });
  t.throws(() => allocAligned(4096, 3), { message: /^EINVAL/ });
});

fileTest(`a worker that exits without close() leaks no ring or fd (env cleanup hook)${skipNote(fileReason)}`, async (t) => {
  const f = newFile(1 << 20);
  const before = fdTargets().length;
  const ringsBefore = ringFds();
  const mod = new URL('../blockdev-adaptor/uring-backend.js', import.meta.url).href;
  const code = `
    const { parentPort } = require('node:worker_threads');
    import(${JSON.stringify(mod)}).then(async ({ UringBackend }) => {
      const b = await UringBackend.open(${JSON.stringify(f)}, { queueDepth: 4 });
      const buf = b.alloc(4096);
      for (let i = 0; i < 4; i++) b.read(buf, 0, () => {});
      b.read(buf, 0, (r) => { parentPort.postMessage(r); process.exit(0); });
    });`;
  for (let i = 0; i < 3; i++) {
    const w = new Worker(code, { eval: true });
    const msg = new Promise((resolve) => w.once('message', resolve));
    const exit = new Promise<number>((resolve) => w.once('exit', resolve));
    t.is(await msg, 4096);
    t.is(await exit, 0);
  }
  t.is(ringFds(), ringsBefore, 'io_uring and eventfd fds closed by the cleanup hook');
  t.is(fdTargets().length, before);
});

loopTest(`loop device: BLKGETSIZE64 size, pattern round trip at QD32${skipNote(loopReason)}`, async (t) => {
  const f = newFile(32 << 20);
  const dev = execFileSync('losetup', ['-f', '--show', f], { encoding: 'utf8' }).trim();
  t.teardown(() => {
    execFileSync('losetup', ['-d', dev]);
  });
  t.log(`loop device ${dev} over ${f}`);
  const b = await UringBackend.open(dev, { queueDepth: 32 });
  t.teardown(() => b.close());
  t.is(b.size, 32 << 20);
  t.true(b.blockSize === 512 || b.blockSize === 4096, `logical block size ${b.blockSize}`);
  const s = await patternRoundTrip(b, 1024, 0x100b);
  t.is(s.bad, 0);
  t.is(s.maxInFlight, 32);
  t.true(s.wres.every((r) => r === 4096) && s.rres.every((r) => r === 4096));
  t.is(await ioPromise((cb) => b.flush(cb)), 0);
  const buf = b.alloc(4096);
  t.is(errorCodeFromErrno(await ioPromise((cb) => b.read(buf, b.blockSize / 2, cb))), 'EINVAL');
  t.is(await ioPromise((cb) => b.read(buf, 32 << 20, cb)), 0);
});

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for completions');
    await new Promise((r) => setTimeout(r, 1));
  }
}

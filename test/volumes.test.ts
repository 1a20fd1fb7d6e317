// The on-device logical-volume table over UringBackend on an O_DIRECT file.
import test from 'ava';
import { mkdtempSync, openSync, closeSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FractosError } from '../libfractos/errors.js';
import { loadUring } from '../native/uring/index.js';
import { UringBackend } from '../blockdev-adaptor/uring-backend.js';
import { DATA_START, MAX_VOLUMES, TABLE_BLOCK, VolumeTable, crc32, decodeTable } from '../blockdev-adaptor/volumes.js';

let reason = '';
let dir = '';
try {
  loadUring();
  // O_DIRECT probe: os.tmpdir(), else /var/tmp (tmpfs refuses O_DIRECT with EINVAL).
  const notes: string[] = [];
  for (const base of [tmpdir(), '/var/tmp']) {
    const d = mkdtempSync(join(base, 'fractos-vol-'));
    writeFileSync(join(d, 'probe'), Buffer.alloc(8192));
    try {
      await (await UringBackend.open(join(d, 'probe'), { queueDepth: 1 })).close();
      dir = d;
      break;
    } catch (e) {
      notes.push(`${base}: ${(e as Error).message}`);
      rmSync(d, { recursive: true, force: true });
    }
  }
  if (!dir) reason = `no O_DIRECT-capable temp directory (${notes.join('; ')})`;
} catch (e) {
  reason = `native uring addon unavailable: ${(e as Error).message}`;
}
if (reason) console.log(`volumes.test: skipping: ${reason}`);
const vtest = reason ? test.skip : test;
const note = reason ? ` [skipped: ${reason}]` : '';
test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

let n = 0;
function device(bytes: number): string {
  const f = join(dir, `dev${n++}.img`);
  writeFileSync(f, Buffer.alloc(bytes));
  return f;
}

async function open(f: string): Promise<UringBackend> {
  return UringBackend.open(f, { queueDepth: 8 });
}

function code(e: unknown): string {
  return e instanceof FractosError ? e.code : String(e);
}

/** Overwrites bytes [off, off+len) of a file with garbage (simulates a torn table write). */
function corrupt(f: string, off: number, len = 512): void {
  const fd = openSync(f, 'r+');
  writeSync(fd, Buffer.alloc(len, 0x5a), 0, len, off);
  closeSync(fd);
}

function readBlock(f: string, off: number): Buffer {
  const b = Buffer.alloc(TABLE_BLOCK);
  const fd = openSync(f, 'r');
  readSync(fd, b, 0, TABLE_BLOCK, off);
  closeSync(fd);
  return b;
}

vtest(`format, create, delete, persist across reopen${note}`, async (t) => {
  const f = device(16 << 20);
  let b = await open(f);
  const vt = await VolumeTable.format(b);
  t.is(vt.generation, 1n);
  t.deepEqual(vt.list(), []);
  const a = await vt.create(1 << 20);
  const c = await vt.create(1);
  const d = await vt.create(3 * 4096 + 5);
  t.deepEqual([a.start, a.length], [DATA_START, 1 << 20]);
  t.deepEqual([c.start, c.length], [DATA_START + (1 << 20), 4096], 'size rounded up to 4 KiB');
  t.is(d.length, 4 * 4096);
  t.deepEqual([a.id, c.id, d.id], [1, 2, 3]);
  await vt.delete(c.id);
  t.is(vt.generation, 5n);
  await b.close();

  b = await open(f);
  t.teardown(() => b.close());
  const again = await VolumeTable.load(b);
  t.is(again.generation, 5n);
  t.deepEqual(again.list(), [a, d]);
  t.deepEqual(again.get(d.id), d);
  const e = t.throws(() => again.get(c.id));
  t.is(code(e), 'ENOENT');
  t.is(code(await t.throwsAsync(again.delete(c.id))), 'ENOENT');
  const reused = await again.create(4096);
  t.is(reused.start, c.start, 'first fit reuses the freed gap');
  t.is(reused.id, 4, 'ids are never reused');
});

vtest(`ENOSPC when the data area is full, and with a fragmented free space${note}`, async (t) => {
  const b = await open(device(4 << 20)); // data area: 3 MiB
  t.teardown(() => b.close());
  const vt = await VolumeTable.format(b);
  const v1 = await vt.create(1 << 20);
  await vt.create(1 << 20);
  await vt.create(1 << 20);
  t.is(vt.freeBytes, 0);
  t.is(code(await t.throwsAsync(vt.create(4096))), 'ENOSPC');
  await vt.delete(v1.id);
  t.is(code(await t.throwsAsync(vt.create((1 << 20) + 4096))), 'ENOSPC', 'no single gap large enough');
  t.is((await vt.create(1 << 20)).start, DATA_START);
  t.is(code(await t.throwsAsync(vt.create(0))), 'EINVAL');
  t.is(vt.generation, 6n, 'failed mutations do not bump the generation');
});

vtest(`table full at ${MAX_VOLUMES} volumes: ENOSPC${note}`, async (t) => {
  const b = await open(device(4 << 20));
  t.teardown(() => b.close());
  const vt = await VolumeTable.format(b);
  const all = await Promise.all(Array.from({ length: MAX_VOLUMES }, () => vt.create(4096)));
  t.is(new Set(all.map((v) => v.start)).size, MAX_VOLUMES);
  t.is(code(await t.throwsAsync(vt.create(4096))), 'ENOSPC');
  const reloaded = await VolumeTable.load(b);
  t.is(reloaded.list().length, MAX_VOLUMES);
});

vtest(`concurrent mutations are serialized, each persisted before it resolves${note}`, async (t) => {
  const f = device(8 << 20);
  const b = await open(f);
  t.teardown(() => b.close());
  const vt = await VolumeTable.format(b);
  const vols = await Promise.all(Array.from({ length: 20 }, (_, i) => vt.create((i + 1) * 4096)));
  t.deepEqual(
    vols.map((v) => v.id),
    Array.from({ length: 20 }, (_, i) => i + 1),
  );
  for (let i = 1; i < vols.length; i++) t.is(vols[i].start, vols[i - 1].start + vols[i - 1].length);
  t.is(vt.generation, 21n);
  const deleted = await Promise.all([vt.delete(3), vt.delete(5), vt.delete(3).catch((e: unknown) => code(e))]);
  t.is(deleted[2], 'ENOENT');
  // What resolved is on the device: decode the newest copy straight from the file.
  const latest = decodeTable(readBlock(f, Number(vt.generation % 2n) * TABLE_BLOCK), 8 << 20);
  t.true(latest.ok);
  if (latest.ok) t.is(latest.state.volumes.length, 18);
});

vtest(`torn table write: a corrupt newest copy falls back to the previous generation${note}`, async (t) => {
  const f = device(8 << 20);
  let b = await open(f);
  const vt = await VolumeTable.format(b);
  const a = await vt.create(8192); // generation 2 -> copy 0
  const c = await vt.create(8192); // generation 3 -> copy 1
  await b.close();

  corrupt(f, TABLE_BLOCK + 100); // newest copy (1) torn
  b = await open(f);
  let vt2 = await VolumeTable.load(b);
  t.is(vt2.generation, 2n);
  t.deepEqual(vt2.list(), [a]);
  // The next mutation (generation 3) overwrites the torn copy; both copies are valid again.
  const c2 = await vt2.create(4096);
  t.is(c2.id, c.id, 'the lost generation never committed, so its id is handed out again');
  await b.close();

  corrupt(f, 200); // copy 0 (generation 2, older) corrupt: newest still loads
  b = await open(f);
  vt2 = await VolumeTable.load(b);
  t.is(vt2.generation, 3n);
  t.deepEqual(vt2.list(), [a, c2]);
  await b.close();

  corrupt(f, TABLE_BLOCK + 300); // both copies bad
  b = await open(f);
  t.teardown(() => b.close());
  const e = await t.throwsAsync(VolumeTable.load(b));
  t.is(code(e), 'EIO');
  t.regex(e!.message, /both volume table copies invalid.*checksum mismatch/);
});

vtest(`unformatted device: EIO 'format required'; tiny device: ENOSPC${note}`, async (t) => {
  const b = await open(device(2 << 20));
  t.teardown(() => b.close());
  const e = await t.throwsAsync(VolumeTable.load(b));
  t.is(code(e), 'EIO');
  t.regex(e!.message, /bad magic.*format required/);
  const small = await open(device(1 << 20));
  t.teardown(() => small.close());
  t.is(code(await t.throwsAsync(VolumeTable.format(small))), 'ENOSPC');
});

test('decodeTable rejects forged entries even with a valid checksum', (t) => {
  // Build a block by hand: one volume overlapping the table area (start 0), valid crc.
  const blk = new Uint8Array(TABLE_BLOCK);
  const v = new DataView(blk.buffer);
  blk.set(Buffer.from('FRVOLTBL', 'latin1'));
  v.setUint16(8, 1, true);
  v.setUint16(10, 1, true);
  v.setBigUint64(16, 7n, true);
  v.setBigUint64(24, BigInt(8 << 20), true);
  v.setBigUint64(32, BigInt(DATA_START), true);
  v.setUint32(40, 4096, true);
  v.setUint32(44, 2, true);
  v.setUint32(64, 1, true);
  v.setBigUint64(72, 0n, true);
  v.setBigUint64(80, 4096n, true);
  v.setUint32(12, crc32(blk), true);
  const r = decodeTable(blk, 8 << 20);
  t.false(r.ok);
  if (!r.ok) t.regex(r.reason, /extent/);
  // Same block with the extent moved into the data area decodes.
  v.setBigUint64(72, BigInt(DATA_START), true);
  v.setUint32(12, 0, true);
  v.setUint32(12, crc32(blk), true);
  const ok = decodeTable(blk, 8 << 20);
  t.true(ok.ok);
  t.false(decodeTable(blk, 4 << 20).ok, 'table larger than the device');
});

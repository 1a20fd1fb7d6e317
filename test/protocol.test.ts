/**
 * Golden encodings of the wire protocol (docs/protocol.md): each frame's exact bytes,
 * and decoding them back.
 */
import test from 'ava';
import { FractosError, errorCodeFromWire, errorCodeToWire } from '../libfractos/errors.js';
import {
  DEFAULT_LIMITS, FrameDecoder, Op, allocFrame, errorReply, frameCode, frameOp, frameSeq, readArgs, readCid, readRef,
  writeArgs, writeCid, writeRef, writeU64, argsBytes, REF_BYTES,
} from '../libfractos/protocol.js';
import { ErrorReply, defineRequest, tagOf } from '../libfractos/schema.js';

const hex = (b: Buffer): string => b.toString('hex');

test('header: length, op, flags, seq, code, reserved (little-endian)', (t) => {
  const f = allocFrame(Op.NULL, 0x01020304, 0);
  t.is(hex(f), '10000000' + '0200' + '0000' + '04030201' + '0000' + '0000');
  t.is(frameOp(f), Op.NULL);
  t.is(frameSeq(f), 0x01020304);
});

test('REQUEST_INVOKE with one cap and one immediate', (t) => {
  const args = { caps: [{ slot: 2, cap: 7 }], imms: [{ offset: 4, bytes: Buffer.from([0xaa, 0xbb]) }] };
  const f = allocFrame(Op.REQUEST_INVOKE, 9, 4 + argsBytes(args, 4));
  f.writeUInt32LE(5, 16); // cid
  writeArgs(f, 20, args, writeCid, 4);
  t.is(
    hex(f),
    '2a000000' + '2200' + '0000' + '09000000' + '0000' + '0000' + // header (42 bytes)
      '05000000' + // cid 5
      '0100' + '0100' + // 1 cap, 1 immediate range
      '0200' + '0000' + '07000000' + // slot 2 <- cid 7
      '04000000' + '02000000' + 'aabb', // offset 4, length 2, bytes
  );
  const { args: back, end } = readArgs(f, 20, f.length, readCid, 4, DEFAULT_LIMITS);
  t.is(end, f.length);
  t.deepEqual(back.caps, [{ slot: 2, cap: 7 }]);
  t.is(hex(Buffer.from(back.imms![0]!.bytes)), 'aabb');
});

test('P_INVOKE carries caps as ObjectRefs (controller, epoch, u64 id)', (t) => {
  const ref = { controller: 2, epoch: 3, id: 2 ** 40 + 5 };
  const args = { caps: [{ slot: 0, cap: ref }] };
  const f = allocFrame(Op.P_INVOKE, 1, REF_BYTES + argsBytes(args, REF_BYTES));
  writeRef(f, { controller: 1, epoch: 1, id: 1 }, 16);
  writeArgs(f, 32, args, writeRef, REF_BYTES);
  t.is(
    hex(f.subarray(32)),
    '0100' + '0000' + '0000' + '0000' + '02000000' + '03000000' + '05000000' + '00010000',
  );
  t.deepEqual(readArgs(f, 32, f.length, readRef, REF_BYTES, DEFAULT_LIMITS).args.caps, [{ slot: 0, cap: ref }]);
});

test('REPLY with an error code and message', (t) => {
  const f = errorReply(3, errorCodeToWire('EREVOKED'), 'gone');
  t.is(hex(f), '14000000' + '7f00' + '0000' + '03000000' + '0200' + '0000' + Buffer.from('gone').toString('hex'));
  t.is(errorCodeFromWire(frameCode(f)), 'EREVOKED');
});

test('error codes keep their wire numbers', (t) => {
  t.deepEqual(
    ['OK', 'EBADCAP', 'EREVOKED', 'EPERM', 'ERANGE', 'EARGSET', 'EPROTO', 'EDISCONNECTED'].map((c) => errorCodeToWire(c as never)),
    [0, 1, 2, 3, 4, 5, 6, 7],
  );
  t.is(errorCodeFromWire(60000), 'EPROTO');
  t.is(errorCodeToWire('EBADF'), 31);
});

test('u64 fields: safe integers only', (t) => {
  const b = Buffer.alloc(8);
  writeU64(b, 2 ** 53 - 1, 0);
  t.is(hex(b), 'ffffffffffff1f00');
  b.writeUInt32LE(0x00200000, 4);
  t.throws(() => readRef(Buffer.concat([Buffer.alloc(8), b]), 0), { instanceOf: FractosError });
});

test('decoder: frames split across chunks and many in one chunk; bad lengths are EPROTO', (t) => {
  const frames = [allocFrame(Op.NULL, 1, 0), allocFrame(Op.NULL, 2, 5), allocFrame(Op.NULL, 3, 0)];
  const all = Buffer.concat(frames);
  for (const cut of [1, 3, 16, 17, 20, all.length - 1]) {
    const d = new FrameDecoder(1024);
    const seen: number[] = [];
    d.push(all.subarray(0, cut), (f) => seen.push(frameSeq(f)));
    d.push(all.subarray(cut), (f) => seen.push(frameSeq(f)));
    t.deepEqual(seen, [1, 2, 3], `cut at ${cut}`);
  }
  const d = new FrameDecoder(1024);
  const big = allocFrame(Op.NULL, 1, 0);
  big.writeUInt32LE(4096, 0);
  t.throws(() => d.push(big, () => {}), { instanceOf: FractosError, message: /EPROTO/ });
  const flags = allocFrame(Op.NULL, 1, 0);
  flags.writeUInt16LE(1, 6);
  t.throws(() => new FrameDecoder(1024).push(flags, () => {}), { message: /EPROTO/ });
});

test('args decoding checks counts, lengths and limits', (t) => {
  const f = Buffer.alloc(8);
  f.writeUInt16LE(5, 0); // 5 caps but no bytes for them
  t.throws(() => readArgs(f, 0, f.length, readCid, 4, DEFAULT_LIMITS), { message: /EPROTO/ });
  const g = Buffer.alloc(12);
  g.writeUInt16LE(1, 2);
  g.writeUInt32LE(DEFAULT_LIMITS.maxImmBytes, 4); // offset at the limit
  g.writeUInt32LE(0, 8);
  t.notThrows(() => readArgs(g, 0, g.length, readCid, 4, DEFAULT_LIMITS));
  g.writeUInt32LE(1, 8);
  t.throws(() => readArgs(g, 0, g.length, readCid, 4, DEFAULT_LIMITS));
});

test('schemas: fixed offsets, tags, partial args, reply base', (t) => {
  const S = defineRequest('x.read', { volume: 'u32', offset: 'u64', length: 'u32', path: { str: 8 } }, ['buffer', 'onSuccess'] as const);
  t.is(S.tag, tagOf('x.read'));
  t.deepEqual(S.fields.map((f) => [f.name, f.offset, f.width]), [['volume', 0, 4], ['offset', 4, 8], ['length', 12, 4], ['path', 16, 10]]);
  const imms = S.imms({ offset: 4096, path: 'ab' });
  t.deepEqual(imms.map((r) => [r.offset, hex(Buffer.from(r.bytes))]), [[4, '0010000000000000'], [16, '02006162']]);
  t.deepEqual(S.caps({ onSuccess: 9 }), [{ slot: 1, cap: 9 }]);
  t.throws(() => S.imms({ length: 2 ** 32 }), { message: /ERANGE/ });
  t.is(ErrorReply.fields[0]!.offset, 0x8000);
  t.is(ErrorReply.slotBase, 32);
});

test('decoder: split frames of scratch ops are reassembled in one reused buffer, others as before', (t) => {
  const big = (seq: number, fill: number): Buffer => {
    const f = allocFrame(Op.P_MEM_WRITE, seq, 3000);
    f.fill(fill, 16);
    return f;
  };
  const all = Buffer.concat([big(1, 0xa1), allocFrame(Op.NULL, 2, 4), big(3, 0xa3), big(4, 0xa4)]);
  for (const step of [7, 16, 100, 1024, 2999]) {
    const d = new FrameDecoder(1 << 16, new Set([Op.P_MEM_WRITE]));
    const seen: string[] = [];
    const frames: Buffer[] = [];
    for (let off = 0; off < all.length; off += step) {
      d.push(all.subarray(off, off + step), (f) => {
        // content is checked during the callback: scratch frames are not kept
        const body = f.subarray(16);
        seen.push(`${frameSeq(f)}:${f.length}:${body.every((b) => b === body[0]) ? body[0] : 'mixed'}`);
        frames.push(f);
      });
    }
    t.deepEqual(seen, ['1:3016:161', '2:20:' + seen[1]!.split(':')[2], '3:3016:163', '4:3016:164'], `step ${step}`);
  }
});

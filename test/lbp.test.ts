// LBP reference (facever-app/lbp.ts) on hand-made images with hand-computed values, chi-square
// on hand-computed vectors, the PGM parser on good and malformed input, and the accuracy metrics.
import test from 'ava';
import { FractosError } from '../libfractos/errors.js';
import { chiSquare, lbpCode, lbpHistogram, NUM_BINS, readPgm, transitions, UNIFORM_BIN, cellIndex } from '../facever-app/lbp.js';
import { equalErrorRate, rocAuc, orlPairs } from '../facever-app/accuracy.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const concat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};

test('uniform mapping: 58 uniform codes in ascending order, the rest in bin 58', (t) => {
  // Hand-listed uniform codes below 128 (one run of ones in bits 0..6, or none):
  const low = [0, 1, 2, 3, 4, 6, 7, 8, 12, 14, 15, 16, 24, 28, 30, 31, 32, 48, 56, 60, 62, 63, 64, 96, 112, 120, 124, 126, 127];
  // ...and at or above 128: the complements 255 - x, ascending.
  const high = low.map((x) => 255 - x).reverse();
  const uniform = [...low, ...high];
  t.is(uniform.length, 58);
  uniform.forEach((c, i) => t.is(UNIFORM_BIN[c], i, `code ${c}`));
  let nonUniform = 0;
  for (let c = 0; c < 256; c++) {
    if (uniform.includes(c)) continue;
    t.is(UNIFORM_BIN[c], 58);
    nonUniform++;
  }
  t.is(nonUniform, 256 - 58);
  t.is(transitions(0b01010101), 8);
  t.is(transitions(0b00000001), 2);
  t.is(transitions(0b10000001), 2);
  t.is(transitions(0b00000101), 4);
  t.is(UNIFORM_BIN[85], 58);
  t.is(NUM_BINS, 59);
});

test('LBP code of the single interior pixel of a 3x3 image (computed by hand)', (t) => {
  // 10 20 30     bits (clockwise from top-left, set when neighbour >= centre 50):
  // 40 50 60     p0=10:0 p1=20:0 p2=30:0 p3=60:1 p4=90:1 p5=80:1 p6=70:1 p7=40:0
  // 70 80 90     code = 8+16+32+64 = 120 = 0b01111000, 2 transitions -> uniform,
  //              26th uniform code in ascending order -> bin 25.
  const img = Uint8Array.from([10, 20, 30, 40, 50, 60, 70, 80, 90]);
  t.is(lbpCode(img, 3, 1, 1), 120);
  t.is(UNIFORM_BIN[120], 25);
  const h = lbpHistogram(img, 3, 3, 1, 1);
  t.is(h.length, 59);
  t.is(h[25], 1);
  t.is(h.reduce((a, b) => a + b, 0), 1);
  // equal neighbours count as set (>=): flat image -> 255 -> last uniform bin 57
  t.is(lbpCode(new Uint8Array(9).fill(7), 3, 1, 1), 255);
  t.is(lbpHistogram(new Uint8Array(9).fill(7), 3, 3, 1, 1)[57], 1);
  // 9 0 9    TL=9:p0, T=0, TR=9:p2, R=9:p3, BR=0, B=9:p5, BL=0, L=0
  // 0 5 9    -> 1+4+8+32 = 45 = 0b00101101: 6 transitions, non-uniform -> bin 58
  // 0 9 0
  const alt = Uint8Array.from([9, 0, 9, 0, 5, 9, 0, 9, 0]);
  t.is(lbpCode(alt, 3, 1, 1), 0b00101101);
  t.is(lbpHistogram(alt, 3, 3, 1, 1)[58], 1);
});

test('4x4 image: histogram with 1x1 and 2x2 grids (computed by hand)', (t) => {
  //  0 0 0 0
  //  0 9 1 0     (1,1)=9: no neighbour >= 9 -> code 0 -> bin 0
  //  0 1 0 0     (2,1)=1: BL(1,2)=1, L(1,1)=9 -> bits 6,7 -> 192 -> bin 36
  //  0 0 0 0     (1,2)=1: T(1,1)=9, TR(2,1)=1 -> bits 1,2 -> 6 -> bin 5
  //              (2,2)=0: all neighbours >= 0 -> 255 -> bin 57
  const img = Uint8Array.from([0, 0, 0, 0, 0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
  t.deepEqual([lbpCode(img, 4, 1, 1), lbpCode(img, 4, 2, 1), lbpCode(img, 4, 1, 2), lbpCode(img, 4, 2, 2)], [0, 192, 6, 255]);
  const h1 = lbpHistogram(img, 4, 4, 1, 1);
  const expected1 = new Uint32Array(59);
  for (const b of [0, 36, 5, 57]) expected1[b] = 1;
  t.deepEqual(h1, expected1);
  // 2x2 grid: one interior pixel per cell, cells in row-major order
  const h2 = lbpHistogram(img, 4, 4, 2, 2);
  const expected2 = new Uint32Array(4 * 59);
  expected2[0 * 59 + 0] = 1;
  expected2[1 * 59 + 36] = 1;
  expected2[2 * 59 + 5] = 1;
  expected2[3 * 59 + 57] = 1;
  t.deepEqual(h2, expected2);
});

test('cell partition: floor(i*g/len), sizes differ by at most 1; bad grids are EINVAL', (t) => {
  t.deepEqual([...cellIndex(5, 2)], [0, 0, 0, 1, 1]);
  const c = cellIndex(90, 7);
  const sizes = new Array(7).fill(0);
  for (const k of c) sizes[k]++;
  // boundaries ceil(k*90/7) = 0, 13, 26, 39, 52, 65, 78, 90
  t.deepEqual(sizes, [13, 13, 13, 13, 13, 13, 12]);
  t.is(t.throws(() => cellIndex(90, 0))!.constructor, FractosError);
  t.is((t.throws(() => cellIndex(90, 91)) as FractosError).code, 'EINVAL');
  t.is((t.throws(() => lbpHistogram(new Uint8Array(4), 2, 2, 1, 1)) as FractosError).code, 'EINVAL');
  t.is((t.throws(() => lbpHistogram(new Uint8Array(8), 3, 3, 1, 1)) as FractosError).code, 'EINVAL');
});

test('chi-square on hand-computed vectors', (t) => {
  // bins: (1-1)^2/2 = 0, (0-2)^2/2 = 2, (3-1)^2/4 = 1  -> 3
  t.is(chiSquare([1, 0, 3], [1, 2, 1]), 3);
  // a+b = 0 bins are skipped; (4-0)^2/4 = 4
  t.is(chiSquare([0, 4], [0, 0]), 4);
  t.is(chiSquare([5, 5], [5, 5]), 0);
  // (1-2)^2/3 + (2-0)^2/2 = 1/3 + 2, summed left to right in float64
  t.is(chiSquare([1, 2], [2, 0]), 1 / 3 + 2);
  t.is(chiSquare(Uint32Array.from([3]), Uint32Array.from([1])), 1);
  t.is((t.throws(() => chiSquare([1], [1, 2])) as FractosError).code, 'EINVAL');
});

test('readPgm: good input with comments and odd whitespace', (t) => {
  const raster = Uint8Array.from([1, 2, 3, 4, 5, 6]);
  const img = readPgm(concat(enc('P5\n# a comment\n3 # width\n\t2\n# maxval next\n255\n'), raster));
  t.is(img.width, 3);
  t.is(img.height, 2);
  t.deepEqual(img.pixels, raster);
  // maxval < 255, trailing data ignored, CR LF line ends
  const img2 = readPgm(concat(enc('P5\r\n2 1\r\n15\n'), Uint8Array.from([9, 10, 77, 77])));
  t.deepEqual([...img2.pixels], [9, 10]);
  // raster bytes that look like whitespace or '#' are data
  const img3 = readPgm(concat(enc('P5 2 1 255 '), Uint8Array.from([0x23, 0x0a])));
  t.deepEqual([...img3.pixels], [0x23, 0x0a]);
});

test('readPgm: malformed input is EINVAL', (t) => {
  const bad = [
    enc(''),
    enc('P2\n1 1\n255\n0'), // ASCII PGM
    enc('P6\n1 1\n255\n000'), // PPM
    enc('P5'), // truncated
    enc('P51 1 255 x'), // no whitespace after magic
    enc('P5\n1\n'), // missing height
    enc('P5\nx 1 255\n0'), // non-numeric
    enc('P5\n0 1 255\n'), // zero width
    enc('P5\n1 1 0\n0'), // maxval 0
    enc('P5\n1 1 65535\n00'), // 16-bit
    enc('P5\n2 2 255\n000'), // short raster
    enc('P5\n1 1 255'), // no whitespace after maxval
    enc('P5\n99999999999 1 255\n'), // absurd width
  ];
  for (const b of bad) {
    const e = t.throws(() => readPgm(b), undefined, JSON.stringify(new TextDecoder().decode(b)));
    t.true(e instanceof FractosError);
    t.is((e as FractosError).code, 'EINVAL');
  }
});

test('ROC AUC and EER on hand-made scores (smaller = more similar)', (t) => {
  // perfect separation
  t.is(rocAuc([1, 2, 3], [4, 5, 6]), 1);
  t.is(equalErrorRate([1, 2, 3], [4, 5, 6]).eer, 0);
  // fully inverted
  t.is(rocAuc([4, 5, 6], [1, 2, 3]), 0);
  // all tied: 0.5
  t.is(rocAuc([1, 1], [1, 1]), 0.5);
  t.is(equalErrorRate([1, 1], [1, 1]).eer, 0.5);
  // genuine [1,3], impostor [2,4]: pairs (1<2)(1<4)(3>2)(3<4) -> 3/4
  t.is(rocAuc([1, 3], [2, 4]), 0.75);
  // one tie: genuine [1,2], impostor [2,3]: (1<2)(1<3)(2=2 -> .5)(2<3) -> 3.5/4
  t.is(rocAuc([1, 2], [2, 3]), 0.875);
  // genuine [1,3], impostor [2,4]: thresholds 1: FAR 0 FRR .5; 2: FAR .5 FRR .5 -> EER .5
  t.is(equalErrorRate([1, 3], [2, 4]).eer, 0.5);
  // interpolation: genuine [1,2,3,10], impostor [4,5,6,2.5]
  // t=2: FAR 0, FRR .5 ; t=2.5: FAR .25, FRR .5 ; t=3: FAR .25 FRR .25 -> crossing at t=3, .25
  t.is(equalErrorRate([1, 2, 3, 10], [4, 5, 6, 2.5]).eer, 0.25);
  // a true interpolated crossing: genuine [1, 4], impostor [2, 3]
  // t=1: FAR 0 FRR .5 (d=-.5); t=2: FAR .5 FRR .5 (d=0) -> .5
  t.is(equalErrorRate([1, 4], [2, 3]).eer, 0.5);
  // genuine [1,2,3], impostor [2.5, 9]: t=2: FAR 0, FRR 1/3 (d=-1/3); t=2.5: FAR .5, FRR 1/3 (d=1/6)
  // a = (1/3)/(1/2) = 2/3 -> EER = 0 + 2/3 * .5 = 1/3
  t.true(Math.abs(equalErrorRate([1, 2, 3], [2.5, 9]).eer - 1 / 3) < 1e-15);
  t.is((t.throws(() => rocAuc([], [1])) as FractosError).code, 'EINVAL');
  t.is((t.throws(() => equalErrorRate([NaN], [1])) as FractosError).code, 'EINVAL');
});

test('ORL pair protocol: 9 genuine + 9 impostor per subject, impostors never the subject itself', (t) => {
  const ids = Array.from({ length: 40 }, (_, i) => i + 1);
  const pairs = orlPairs(ids);
  t.is(pairs.filter((p) => p.genuine).length, 360);
  t.is(pairs.filter((p) => !p.genuine).length, 360);
  for (const p of pairs) t.is(p.genuine, p.probe === p.enrolled);
});

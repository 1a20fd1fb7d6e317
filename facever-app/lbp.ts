/**
 * Face description with uniform Local Binary Patterns, the pure TypeScript reference.
 *
 * Source: T. Ahonen, A. Hadid, M. Pietikäinen, "Face Description with Local Binary
 * Patterns: Application to Face Recognition", IEEE TPAMI 28(12):2037-2041, 2006
 * (LBP^{u2}_{8,1} histograms over a grid of regions, compared by chi-square).
 *
 * This file fixes the exact semantics that the native kernels (`native/gpu/`, cpu and
 * cuda backends) reproduce bit for bit; docs/facever-kernel.md restates them:
 *
 * - Operator LBP_{8,1}: 8 integer neighbours at radius 1, no interpolation. For the pixel
 *   (x, y), bit p is set when neighbour p >= the centre. Neighbour order (clockwise from
 *   the top-left): p0 (x-1,y-1), p1 (x,y-1), p2 (x+1,y-1), p3 (x+1,y), p4 (x+1,y+1),
 *   p5 (x,y+1), p6 (x-1,y+1), p7 (x-1,y). Border pixels (x = 0, x = w-1, y = 0, y = h-1)
 *   get no code: the interior is (w-2) x (h-2) pixels (90 x 110 for ORL's 92 x 112).
 * - Uniform mapping u2: a code is uniform when its 8 bits, read circularly, have at most 2
 *   transitions 0/1. The 58 uniform codes take bins 0..57 in ascending code value
 *   (0 -> 0, 1 -> 1, 2 -> 2, 3 -> 3, 4 -> 4, 6 -> 5, ..., 254 -> 56, 255 -> 57); every
 *   non-uniform code goes to bin 58. `NUM_BINS` = 59.
 * - Grid of gx x gy cells over the interior: interior column ix (0..w-3) belongs to cell
 *   column floor(ix * gx / (w-2)), interior row iy (0..h-3) to cell row
 *   floor(iy * gy / (h-2)). Cell column cx thus covers ix in
 *   [ceil(cx*(w-2)/gx), ceil((cx+1)*(w-2)/gx)): sizes differ by at most 1.
 * - Histogram layout: gx*gy*59 u32 counts, cell-major in row-major cell order
 *   (index = ((cy * gx) + cx) * 59 + bin).
 * - Chi-square: chi2(a, b) = sum over indices i in ascending order with a_i + b_i > 0 of
 *   (a_i - b_i)^2 / (a_i + b_i), accumulated left to right in float64. Every term's
 *   numerator and denominator are exact integers in float64, so the result is identical on
 *   every IEEE-754 machine that sums in this order (the native kernels do).
 */
import { FractosError } from '../libfractos/errors.js';

/** Bins per cell: 58 uniform patterns + 1 for all non-uniform ones. */
export const NUM_BINS = 59;
/** Bin of all non-uniform codes (the last one). */
export const NON_UNIFORM_BIN = 58;

/** Number of circular 0/1 transitions in the 8-bit code `c`. */
export function transitions(c: number): number {
  const rot = ((c >> 1) | ((c & 1) << 7)) & 0xff;
  let x = c ^ rot;
  let n = 0;
  while (x) {
    n += x & 1;
    x >>= 1;
  }
  return n;
}

/** 256-entry map LBP code -> bin (0..58), see the module docstring for the order. */
export const UNIFORM_BIN: Uint8Array = (() => {
  const t = new Uint8Array(256);
  let next = 0;
  for (let c = 0; c < 256; c++) t[c] = transitions(c) <= 2 ? next++ : NON_UNIFORM_BIN;
  if (next !== 58) throw new Error(`uniform table has ${next} codes, expected 58`);
  return t;
})();

/** A decoded grey image: `pixels` is row-major, `width * height` bytes. */
export interface GreyImage {
  width: number;
  height: number;
  pixels: Uint8Array;
}

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d || b === 0x0b || b === 0x0c;
}

/**
 * Parse a binary PGM ("P5", Netpbm spec https://netpbm.sourceforge.net/doc/pgm.html):
 * magic, whitespace, width, height, maxval (decimal ASCII, separated by whitespace, with
 * `#` comments to end of line allowed between tokens), exactly one whitespace byte, then
 * width*height bytes (maxval <= 255 only). Trailing bytes after the raster are ignored
 * (the spec allows several images per file; only the first is read).
 * @returns `{ width, height, pixels }` (pixels is a copy, row-major).
 * @throws FractosError EINVAL: not P5, bad or missing number, width/height 0, maxval not in
 *   1..255 (16-bit PGM is unsupported), raster shorter than width*height.
 */
export function readPgm(bytes: Uint8Array): GreyImage {
  let pos = 0;
  const bad = (why: string): FractosError => new FractosError('EINVAL', `PGM: ${why}`);
  if (bytes.length < 2 || bytes[0] !== 0x50 /* P */ || bytes[1] !== 0x35 /* 5 */) throw bad('not a binary PGM (P5)');
  pos = 2;
  const token = (what: string): number => {
    // skip whitespace and comments
    for (;;) {
      if (pos >= bytes.length) throw bad(`truncated header before ${what}`);
      const b = bytes[pos]!;
      if (isSpace(b)) pos++;
      else if (b === 0x23 /* # */) {
        while (pos < bytes.length && bytes[pos] !== 0x0a && bytes[pos] !== 0x0d) pos++;
      } else break;
    }
    let v = 0;
    let digits = 0;
    while (pos < bytes.length && bytes[pos]! >= 0x30 && bytes[pos]! <= 0x39) {
      v = v * 10 + (bytes[pos]! - 0x30);
      pos++;
      if (++digits > 9) throw bad(`${what} too large`);
    }
    if (digits === 0) throw bad(`${what} is not a decimal number`);
    return v;
  };
  // the magic must be followed by whitespace
  if (pos >= bytes.length || !isSpace(bytes[pos]!)) throw bad('no whitespace after magic');
  const width = token('width');
  const height = token('height');
  const maxval = token('maxval');
  if (width === 0 || height === 0) throw bad(`empty image ${width}x${height}`);
  if (maxval === 0 || maxval > 255) throw bad(`maxval ${maxval} unsupported (1..255)`);
  if (pos >= bytes.length || !isSpace(bytes[pos]!)) throw bad('no whitespace after maxval');
  pos++;
  const n = width * height;
  if (bytes.length - pos < n) throw bad(`raster has ${bytes.length - pos} bytes, expected ${n}`);
  return { width, height, pixels: bytes.slice(pos, pos + n) };
}

/**
 * LBP_{8,1} code of interior pixel (x, y) of a row-major w-wide image (bit order in the
 * module docstring). No bounds checks: 1 <= x <= w-2, 1 <= y <= h-2 is the caller's job.
 */
export function lbpCode(pixels: Uint8Array, w: number, x: number, y: number): number {
  const i = y * w + x;
  const c = pixels[i]!;
  const up = i - w;
  const down = i + w;
  return (
    (pixels[up - 1]! >= c ? 1 : 0) |
    (pixels[up]! >= c ? 2 : 0) |
    (pixels[up + 1]! >= c ? 4 : 0) |
    (pixels[i + 1]! >= c ? 8 : 0) |
    (pixels[down + 1]! >= c ? 16 : 0) |
    (pixels[down]! >= c ? 32 : 0) |
    (pixels[down - 1]! >= c ? 64 : 0) |
    (pixels[i - 1]! >= c ? 128 : 0)
  );
}

/**
 * Cell index of each interior coordinate: entry i (0 <= i < len) = floor(i * g / len).
 * @throws FractosError EINVAL unless 1 <= g <= len (every cell must be non-empty).
 */
export function cellIndex(len: number, g: number): Uint32Array {
  if (!Number.isInteger(g) || g < 1 || g > len) throw new FractosError('EINVAL', `grid ${g} not in 1..${len}`);
  const out = new Uint32Array(len);
  for (let i = 0; i < len; i++) out[i] = Math.floor((i * g) / len);
  return out;
}

/**
 * Concatenated uniform-LBP histogram of a w x h image over a gx x gy grid (Ahonen et al.
 * 2006, §3), exact layout in the module docstring.
 * @param pixels row-major, at least w*h bytes.
 * @returns Uint32Array of gx*gy*59 counts, summing to (w-2)*(h-2).
 * @throws FractosError EINVAL: w or h < 3, pixels too short, gx not in 1..w-2, gy not in 1..h-2.
 */
export function lbpHistogram(pixels: Uint8Array, w: number, h: number, gx: number, gy: number): Uint32Array {
  if (!Number.isInteger(w) || !Number.isInteger(h) || w < 3 || h < 3) throw new FractosError('EINVAL', `image ${w}x${h} too small`);
  if (pixels.length < w * h) throw new FractosError('EINVAL', `pixels has ${pixels.length} bytes, expected ${w * h}`);
  const cx = cellIndex(w - 2, gx);
  const cy = cellIndex(h - 2, gy);
  const hist = new Uint32Array(gx * gy * NUM_BINS);
  for (let y = 1; y < h - 1; y++) {
    const rowBase = cy[y - 1]! * gx;
    for (let x = 1; x < w - 1; x++) {
      hist[(rowBase + cx[x - 1]!) * NUM_BINS + UNIFORM_BIN[lbpCode(pixels, w, x, y)]!]!++;
    }
  }
  return hist;
}

/**
 * Chi-square distance sum_{i: a_i+b_i>0} (a_i-b_i)^2/(a_i+b_i), summed in ascending i in
 * float64 (Ahonen et al. 2006, eq. 4, without region weights). 0 = identical; smaller =
 * more similar.
 * @throws FractosError EINVAL when the lengths differ.
 */
export function chiSquare(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new FractosError('EINVAL', `histogram lengths differ: ${a.length} vs ${b.length}`);
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const s = a[i]! + b[i]!;
    if (s > 0) {
      const d = a[i]! - b[i]!;
      sum += (d * d) / s;
    }
  }
  return sum;
}

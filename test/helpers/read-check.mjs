// Random reads of two files compared byte for byte (the mount tests' data check):
// node read-check.mjs A B COUNT SEED [MAXLEN] -> exit 0, or 1 with the first difference.
// Offsets and lengths are random (any alignment), some past the end; A is read through one fd
// kept open for all of them.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

const [a, b, countS, seedS, maxS] = process.argv.slice(2);
let seed = Number(seedS) >>> 0 || 1;
const rnd = (n) => {
  // xorshift32: reproducible from the seed printed on failure
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed % n;
};
const fa = openSync(a, 'r');
const fb = openSync(b, 'r');
const size = fstatSync(fb).size;
const maxLen = Number(maxS) || 300_000;
const ba = Buffer.alloc(maxLen);
const bb = Buffer.alloc(maxLen);
for (let i = 0; i < Number(countS); i++) {
  const aligned = rnd(2) === 0;
  let off = rnd(size + 8192);
  let len = 1 + rnd(maxLen);
  if (aligned) {
    off -= off % 4096;
    len = Math.max(4096, len - (len % 4096));
  }
  const na = readSync(fa, ba, 0, len, off);
  const nb = readSync(fb, bb, 0, len, off);
  if (na !== nb || ba.compare(bb, 0, nb, 0, na) !== 0) {
    let at = 0;
    while (at < Math.min(na, nb) && ba[at] === bb[at]) at++;
    console.error(`read ${i}: offset ${off} length ${len}: ${a} gave ${na} bytes, ${b} ${nb}; first difference at +${at}`);
    process.exit(1);
  }
}
closeSync(fa);
closeSync(fb);

/**
 * The volume-administration secret shared by a blockdev and its FS (`--admin-secret-file`).
 * With one, admin_claim must carry the proof HMAC-SHA256(secret, ADMIN_PROOF_LABEL) of the
 * same secret (compared in constant time), else EPERM: after an FS restart only a Process
 * that can read the file may take the administration. The raw secret never leaves the
 * process; the proof travels in the admin_claim invocation through the Controller (trusted),
 * so it is as good as a password known to that Controller.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { FractosError } from '../libfractos/errors.js';

/** Bytes of an admin_claim proof (HMAC-SHA256). */
export const ADMIN_PROOF_BYTES = 32;
/** Fewest bytes a secret file holds (after trimming whitespace). */
export const MIN_SECRET_BYTES = 16;
/** Most bytes read from a secret file. */
const MAX_SECRET_BYTES = 4096;
/** The HMAC message of a proof. */
const ADMIN_PROOF_LABEL = 'fractos blockdev admin_claim v1';

/**
 * The secret in `file` (its bytes, surrounding whitespace trimmed), MIN_SECRET_BYTES ..
 * 4096 bytes. Errors: EINVAL (too short, too long), ENOENT/EACCES/... as FractosError EINVAL
 * naming the file.
 */
export function readAdminSecret(file: string): Buffer {
  let raw: Buffer;
  try {
    raw = readFileSync(file);
  } catch (err) {
    throw new FractosError('EINVAL', `cannot read the admin secret file ${file}: ${(err as Error).message}`);
  }
  const s = Buffer.from(raw.toString('latin1').trim(), 'latin1');
  if (s.length < MIN_SECRET_BYTES || s.length > MAX_SECRET_BYTES) {
    throw new FractosError('EINVAL', `the admin secret file ${file} must hold ${MIN_SECRET_BYTES} to ${MAX_SECRET_BYTES} bytes, has ${s.length}`);
  }
  return s;
}

/** The admin_claim proof of `secret` (ADMIN_PROOF_BYTES bytes). */
export function adminProof(secret: Uint8Array): Buffer {
  return createHmac('sha256', secret).update(ADMIN_PROOF_LABEL).digest();
}

/** True when `proof` (any length) is `secret`'s admin_claim proof; constant time in the proof's bytes. */
export function proofMatches(secret: Uint8Array, proof: Uint8Array): boolean {
  const want = adminProof(secret);
  return proof.length === want.length && timingSafeEqual(proof, want);
}

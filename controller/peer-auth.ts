/**
 * Mutual authentication of Controller links (docs/protocol.md, "Peer handshake"): the
 * handshake itself runs in the native Controller (controller/src/host_peers.cc); this module
 * keeps what JS needs: the cluster secret's checks and files, and a TypeScript reference of
 * the frames, proofs and link policy (tests talk to the C++ handshake with it).
 *
 * Controllers of one cluster share a secret given at start (`--cluster-secret-file`,
 * ControllerOptions.clusterSecret). Before a link carries any other frame, each side proves
 * that it holds the secret with an HMAC-SHA256 over both nonces, both ids and both epochs
 * (the transcript), so a proof is good for one link only and a side cannot be fooled by its
 * own proof sent back (the role is part of the MAC input):
 *
 *   dialer   -> acceptor  PEER_HELLO  u32 id, u32 epoch, u8[32] nonce
 *   acceptor -> dialer    PEER_HELLO  u32 id, u32 epoch, u8[32] nonce, u8[32] proof('A')
 *   dialer   -> acceptor  PEER_AUTH   u8[32] proof('D')
 *
 * The dialer checks the acceptor's proof before it sends its own; the acceptor sends no
 * other frame and reads no other frame until the dialer's proof checks. The secret
 * authenticates membership of the cluster, not one id: any holder is trusted as any peer.
 * Frames after the handshake are not authenticated one by one: a network where someone
 * can rewrite TCP streams between Controllers needs a tunnel (WireGuard, stunnel).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { FractosError } from '../libfractos/errors.js';
import { HEADER_BYTES, Op, allocFrame, frameOp, opName } from '../libfractos/protocol.js';

/** Bytes of a handshake nonce (random, one per side and link). */
export const NONCE_BYTES = 32;
/** Bytes of a proof (HMAC-SHA256). */
export const PROOF_BYTES = 32;
/** Shortest cluster secret accepted (bytes). */
export const MIN_SECRET_BYTES = 16;
/** Longest cluster secret accepted (bytes; a secret file is read whole). */
export const MAX_SECRET_BYTES = 4096;
/** Bound (ms) on a whole handshake: a side that does not finish it in time is closed (ETIMEDOUT). */
export const PEER_AUTH_TIMEOUT_MS = 5000;
/** Environment variable naming the secret file when `--cluster-secret-file` is not given. */
export const CLUSTER_SECRET_ENV = 'FRACTOS_CLUSTER_SECRET_FILE';

/** MAC input prefix: names the protocol and its version. */
const LABEL = Buffer.from('fractos peer auth v1\0', 'latin1');

/** Body bytes of the dialer's PEER_HELLO, of the acceptor's (with its proof), of PEER_AUTH. */
const DIALER_HELLO_BYTES = 8 + NONCE_BYTES;
const ACCEPTOR_HELLO_BYTES = 8 + NONCE_BYTES + PROOF_BYTES;

/** What both sides MAC: the two hellos of one link. */
export interface PeerTranscript {
  dialerId: number;
  dialerEpoch: number;
  dialerNonce: Uint8Array;
  acceptorId: number;
  acceptorEpoch: number;
  acceptorNonce: Uint8Array;
}

/** The other side of a link once its proof checked (or as it claimed itself, on failure). */
export interface PeerIdentity {
  id: number;
  epoch: number;
}

/**
 * Check a cluster secret: MIN_SECRET_BYTES..MAX_SECRET_BYTES bytes.
 * @returns the secret as a Buffer (a copy)
 * @throws FractosError EINVAL naming the length
 */
export function checkClusterSecret(secret: Uint8Array | string, what = 'cluster secret'): Buffer {
  const b = Buffer.from(secret);
  if (b.length < MIN_SECRET_BYTES || b.length > MAX_SECRET_BYTES) {
    throw new FractosError('EINVAL', `${what} must be ${MIN_SECRET_BYTES}..${MAX_SECRET_BYTES} bytes, got ${b.length}`);
  }
  return b;
}

/**
 * Read a cluster secret file whole; trailing CR/LF bytes are not part of the secret (so
 * `echo`ed and `printf`ed files agree). `warn` is told when the file is readable by group or
 * others. Errors: EINVAL (unreadable file, naming the path; length out of bounds).
 */
export function readClusterSecretFile(path: string, warn?: (msg: string) => void): Buffer {
  let raw: Buffer;
  try {
    if (statSync(path).size > MAX_SECRET_BYTES + 2) throw new Error(`larger than ${MAX_SECRET_BYTES} bytes`);
    raw = readFileSync(path);
    if (warn && statSync(path).mode & 0o077) warn(`cluster secret file ${path} is readable by group or others (chmod 600 it)`);
  } catch (err) {
    throw new FractosError('EINVAL', `cannot read cluster secret file ${path}: ${(err as Error).message}`);
  }
  let end = raw.length;
  while (end > 0 && (raw[end - 1] === 0x0a || raw[end - 1] === 0x0d)) end--;
  return checkClusterSecret(raw.subarray(0, end), `cluster secret file ${path}`);
}

/**
 * Make sure a cluster secret file exists at `path`: when missing, create it with 32 random
 * bytes as 64 hex characters, mode 0600; an existing file is kept as it is (a test bed
 * restarted on its folder keeps its secret). Any file of 16..4096 bytes will do.
 * Errors: the fs error other than EEXIST (ENOENT for a missing folder, EACCES).
 */
export function ensureClusterSecretFile(path: string): void {
  try {
    writeFileSync(path, randomBytes(32).toString('hex'), { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
}

/**
 * The proof of `role` ('D' dialer, 'A' acceptor) for one link:
 * HMAC-SHA256(secret, "fractos peer auth v1\0" | role | dialer nonce | acceptor nonce |
 * u32 dialer id | u32 dialer epoch | u32 acceptor id | u32 acceptor epoch), integers
 * little-endian. 32 bytes.
 */
export function peerProof(secret: Uint8Array, role: 'D' | 'A', t: PeerTranscript): Buffer {
  const ints = Buffer.alloc(16);
  ints.writeUInt32LE(t.dialerId >>> 0, 0);
  ints.writeUInt32LE(t.dialerEpoch >>> 0, 4);
  ints.writeUInt32LE(t.acceptorId >>> 0, 8);
  ints.writeUInt32LE(t.acceptorEpoch >>> 0, 12);
  return createHmac('sha256', secret)
    .update(LABEL)
    .update(role, 'latin1')
    .update(t.dialerNonce)
    .update(t.acceptorNonce)
    .update(ints)
    .digest();
}

/** Whether `proof` is the proof of `role` for `t` (constant time in the proof's bytes). */
export function checkPeerProof(secret: Uint8Array, role: 'D' | 'A', t: PeerTranscript, proof: Uint8Array): boolean {
  return proof.length === PROOF_BYTES && timingSafeEqual(peerProof(secret, role, t), proof);
}

/**
 * A PEER_HELLO frame: u32 id, u32 epoch, u8[32] nonce, then the acceptor's u8[32] proof.
 */
export function encodePeerHello(id: number, epoch: number, nonce: Uint8Array, proof: Uint8Array | null = null): Buffer {
  const f = allocFrame(Op.PEER_HELLO, 0, proof ? ACCEPTOR_HELLO_BYTES : DIALER_HELLO_BYTES);
  f.writeUInt32LE(id >>> 0, 16);
  f.writeUInt32LE(epoch >>> 0, 20);
  f.set(nonce, 24);
  if (proof) f.set(proof, 24 + NONCE_BYTES);
  return f;
}

/**
 * Decode a PEER_HELLO: the dialer's (`withProof` false) or the acceptor's. The body must
 * have exactly its length. Errors: EPROTO (another op, wrong length).
 */
export function decodePeerHello(frame: Buffer, withProof: boolean): PeerIdentity & { nonce: Buffer; proof: Buffer | null } {
  const want = withProof ? ACCEPTOR_HELLO_BYTES : DIALER_HELLO_BYTES;
  if (frameOp(frame) !== Op.PEER_HELLO) throw new FractosError('EPROTO', `expected PEER_HELLO, got ${opName(frameOp(frame))}`);
  if (frame.length !== HEADER_BYTES + want) {
    throw new FractosError('EPROTO', `PEER_HELLO body must be ${want} bytes, got ${frame.length - HEADER_BYTES} (a Controller without peer authentication?)`);
  }
  return {
    id: frame.readUInt32LE(16),
    epoch: frame.readUInt32LE(20),
    nonce: frame.subarray(24, 24 + NONCE_BYTES),
    proof: withProof ? frame.subarray(24 + NONCE_BYTES, 24 + NONCE_BYTES + PROOF_BYTES) : null,
  };
}

/** A PEER_AUTH frame: u8[32] proof. */
export function encodePeerAuth(proof: Uint8Array): Buffer {
  const f = allocFrame(Op.PEER_AUTH, 0, PROOF_BYTES);
  f.set(proof, 16);
  return f;
}

/** Decode a PEER_AUTH. Errors: EPROTO (another op, wrong length). */
export function decodePeerAuth(frame: Buffer): Buffer {
  if (frameOp(frame) !== Op.PEER_AUTH) throw new FractosError('EPROTO', `expected PEER_AUTH, got ${opName(frameOp(frame))}`);
  if (frame.length !== HEADER_BYTES + PROOF_BYTES) throw new FractosError('EPROTO', `PEER_AUTH body must be ${PROOF_BYTES} bytes`);
  return frame.subarray(16);
}

/**
 * What a proven peer's new link does to a live link of the same id (`liveEpoch`, null when
 * none): 'accept' (none live), 'replace' (a newer epoch: the peer restarted; the same epoch:
 * the peer lost the old link and dialed again, which only it can do, while this side has not
 * noticed yet, as with a half-open TCP connection), 'refuse' (an older epoch than the live
 * link's: a stale incarnation).
 */
export function linkPolicy(liveEpoch: number | null, epoch: number): 'accept' | 'replace' | 'refuse' {
  if (liveEpoch === null) return 'accept';
  return epoch >= liveEpoch ? 'replace' : 'refuse';
}

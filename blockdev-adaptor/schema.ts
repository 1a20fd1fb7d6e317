/**
 * Request schemas of the block-device adaptor (DESIGN.md §5): the contract shared with
 * its clients (the FS service, the fio runner, DAX clients). Schema-only: importing this
 * file imports no service code.
 *
 * Bootstrap: the adaptor publishes one Request, `blockdev.admin_claim` (prefixed by
 * `--name`, default `blockdev`: `${name}.admin_claim`). Volume administration
 * (volume_list / volume_create / volume_open) belongs to one owner at a time, the FS: the
 * first Process to claim gets the admin Requests, every later claim is EBUSY until the
 * holder has dropped them all (or died); then they are revoked, with every per-volume
 * Request handed out under that claim, and the claim reopens (docs/storage.md).
 */
import { defineReply, defineRequest } from '../libfractos/schema.js';

/**
 * admin_claim(proof) -> AdminReply: the admin Requests of this blockdev, for the caller
 * alone. `proof`: admin-secret.ts `adminProof(secret)` when the blockdev has an admin secret
 * (ignored otherwise). Errors (onError): EBUSY (another Process holds the claim), EPERM (the
 * blockdev has an admin secret and `proof` is not its proof).
 */
export const AdminClaim = defineRequest('blockdev.admin_claim', { proof: { bytes: 32 } }, ['onSuccess', 'onError'] as const);
/** What admin_claim answers: the holder's volume_list, volume_create and volume_open Requests. */
export const AdminReply = defineReply('blockdev.admin', {}, ['list', 'create', 'open'] as const);
/**
 * volume_create(size bytes) -> VolumeReply. `claim` is preset by the adaptor (the claim the
 * Request belongs to). Errors (onError): EINVAL, ENOSPC, EREVOKED (the claim was released).
 */
export const VolumeCreate = defineRequest('blockdev.volume_create', { size: 'u64', claim: 'u32' }, ['onSuccess', 'onError'] as const);
/** volume_open(volume id) -> VolumeReply (the Requests of an existing volume). Errors: ENOENT, EREVOKED. */
export const VolumeOpen = defineRequest('blockdev.volume_open', { volume: 'u32', claim: 'u32' }, ['onSuccess', 'onError'] as const);
/** Most volumes a device holds (the volume table's limit, volumes.ts MAX_VOLUMES). */
export const MAX_LISTED_VOLUMES = 126;
/** volume_list() -> VolumeListReply: the ids of every volume of the device. Errors: EREVOKED. */
export const VolumeList = defineRequest('blockdev.volume_list', { claim: 'u32' }, ['onSuccess', 'onError'] as const);
/**
 * What volume_list answers, in the reply's immediates (126 ids fit: no buffer needed):
 * `count` volumes, their ids as u32 little-endian in `ids[0 .. 4 * count)`, ascending.
 */
export const VolumeListReply = defineReply('blockdev.volumes', { count: 'u32', ids: { bytes: 4 * MAX_LISTED_VOLUMES } }, [] as const);
/**
 * What volume_create/volume_open answer: the volume and its per-volume Requests (revocation-tree
 * children, one set per volume and claim: revoked when the claim is released or the volume deleted).
 */
export const VolumeReply = defineReply('blockdev.volume', { volume: 'u32', size: 'u64', blockSize: 'u32' }, ['read', 'write', 'delete'] as const);

/**
 * Per-volume read/write: `volume` is preset by the adaptor (a client cannot retarget it),
 * `offset` (bytes, relative to the volume) and `length` (bytes) are set by the client.
 * read: device -> buffer; write: buffer -> device (durable when onSuccess runs).
 * Errors (onError): ERANGE (beyond the volume or the buffer), EINVAL (alignment:
 * offset and length must be multiples of the block size), EPERM (buffer perms), EIO.
 */
export const VolumeRead = defineRequest('blockdev.read', { volume: 'u32', offset: 'u64', length: 'u32' }, ['buffer', 'onSuccess', 'onError'] as const);
export const VolumeWrite = defineRequest('blockdev.write', { volume: 'u32', offset: 'u64', length: 'u32', flags: 'u32' }, ['buffer', 'onSuccess', 'onError'] as const);
/**
 * VolumeWrite `flags` bits. FUA ("force unit access"): onSuccess runs only after a device
 * flush that covers this write (the device's volatile write cache is flushed). Without it,
 * onSuccess runs when the O_DIRECT write completes (durable against a crash of any Process,
 * not against power loss on a device with a volatile cache). See docs/storage.md.
 */
export const WriteFlags = { FUA: 1 } as const;
/** What read/write answer: bytes transferred. */
export const IoReply = defineReply('blockdev.io', { bytes: 'u32' }, [] as const);
/** Per-volume delete (volume preset). Errors: ENOENT. */
export const VolumeDelete = defineRequest('blockdev.delete', { volume: 'u32' }, ['onSuccess', 'onError'] as const);
/** Empty success reply. */
export const DoneReply = defineReply('blockdev.done', {}, [] as const);

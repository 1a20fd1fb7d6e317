/**
 * The FS service's Request contract: what other components import (never the service's
 * internals). Path-based Requests (schema.ts), the inode-based ones a FUSE client maps VFS
 * operations to (contract.ts), and the client helpers (client.ts). docs/storage.md §2.
 */
export * from './schema.js';
export * from './contract.js';
export { FsClient, decodeDirents, type DaxExtent, type Dirent, type EntryAttr, type OpenFile, type OpenOptions, type StatFs, type Who } from './client.js';

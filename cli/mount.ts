/**
 * `fractos mount MOUNTPOINT`: the FS service as a FUSE file system (fs-mount/). Prints
 * `ready mount MOUNTPOINT fs=NAME dax=0|1` once the kernel's INIT is answered; runs until
 * SIGINT/SIGTERM/SIGHUP (unmounts, `mount: stopped on SIGNAL`, exit 0), or until the mount ends
 * by itself: the FS or the Controller went away, or `fusermount3 -u` (warns, exit 1). A stop
 * prints the mount's counts on stderr: `mount: MOUNTPOINT requests=N errors=N ... daxReads=N daxWrites=N lookups=N readdirPlus=N opens=N dirAttrHits=N negativeHits=N nativeReads=N nativeWrites=N nativeFallbacks=N nativeErrors=N` (daxReads/daxWrites count the native ones too).
 * Errors: EBUSY (a mount is live at MOUNTPOINT), ENOENT/ENOTDIR (MOUNTPOINT), ENOENT (no FS),
 * ENODEV (no fuse addon or /dev/fuse), EINVAL (options).
 */
import type { Command } from 'commander';
import { FsMount } from '../fs-mount/mount.js';
import { DEFAULT_CONTROLLER } from './core.js';
import { startService } from './start-service.js';
import { die, log } from './log.js';

interface MountOpts {
  controller: string;
  fs: string;
  dax?: boolean;
  attrTimeout?: string;
  exclusive?: boolean;
  writeback?: boolean;
  slots: string;
}

export function register(program: Command): void {
  program
    .command('mount')
    .description('mount the FS service at MOUNTPOINT (FUSE) until stopped')
    .argument('<mountpoint>', 'an existing directory')
    .option('--controller <addr>', 'Controller address', DEFAULT_CONTROLLER)
    .option('--fs <name>', 'bootstrap prefix of the FS', 'fs')
    .option('--dax', 'file data through the file\'s DAX Requests (straight to the blockdev)')
    .option('--attr-timeout <s>', 'kernel attribute/entry cache timeout, seconds (0: none; default 1, a day with --exclusive)')
    .option('--exclusive', 'this mount is the only client that changes the FS: long attribute/entry caching (docs/mount.md)')
    .option('--writeback', 'FUSE writeback cache (see docs/mount.md: single-client only)')
    .option('--slots <n>', 'data slots of 1 MiB: reads/writes in flight', '32')
    .action(async (mountpoint: string, o: MountOpts) => {
      try {
        let ready: ((v: unknown) => void) | null = null;
        const inited = new Promise((r) => (ready = r));
        const m = await startService('mount', async () => {
          const m = await FsMount.mount({
            controller: o.controller, mountpoint, fs: o.fs, dax: o.dax === true, attrTimeout: o.attrTimeout !== undefined ? Number(o.attrTimeout) : undefined, exclusive: o.exclusive === true,
            writeback: o.writeback === true, slots: Number(o.slots), log,
          });
          m.once('ready', (v) => ready?.(v));
          return m;
        }, (m) => ({
          close: async () => {
            const n = m.nativeStats;
            await m.close();
            const c = m.counts;
            process.stderr.write(`mount: ${mountpoint} requests=${c.requests} errors=${c.errors} interrupted=${c.interrupted} reads=${c.mediatedReads} writes=${c.mediatedWrites} daxReads=${c.daxReads + (n?.reads ?? 0)} daxWrites=${c.daxWrites + (n?.writes ?? 0)} lookups=${c.lookups} readdirPlus=${c.readdirPlus} opens=${c.opens} dirAttrHits=${c.dirAttrHits} negativeHits=${c.negativeHits} nativeReads=${n?.reads ?? 0} nativeWrites=${n?.writes ?? 0} nativeFallbacks=${n?.fallbacks ?? 0} nativeErrors=${n?.errors ?? 0}${n ? ` nativeDirect=${n.direct} nativeHandoffUs=${(n.handoffNs / 1e3).toFixed(1)} nativeServiceUs=${(n.serviceNs / 1e3).toFixed(1)}` : ''}\n`);
          },
        }));
        if (!m) return;
        m.once('exit', (why: string) => {
          process.stderr.write(`mount: ${mountpoint} ended: ${why}\n`);
          process.exit(1);
        });
        await inited;
        process.stdout.write(`ready mount ${mountpoint} fs=${o.fs} dax=${o.dax ? 1 : 0}\n`);
      } catch (err) {
        die(err);
      }
    });
}

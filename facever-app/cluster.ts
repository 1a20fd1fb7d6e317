/**
 * The single-host default deployment (DESIGN.md §1) as child processes of the caller:
 * a Controller on a Unix socket, a blockdev adaptor on a sparse file (O_DIRECT, so the
 * file lives on a disk file system: a fresh folder under `os.tmpdir()`, or /var/tmp where
 * that is tmpfs; removed on stop and, at the latest, when the caller exits), the FS service
 * and the GPU adaptor. Used by `fractos demo`, `facever bench` and
 * the tests. Every child is `node bin/fractos.js <subcommand>`; each is ready when it
 * prints its ready line on stdout.
 */
import type { ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { FractosError } from '../libfractos/errors.js';
import { connect } from '../libfractos/process.js';
import { REPO_ROOT, freePort, spawnFractos } from '../testbed/spawn.js';
import { removeTempDir, tempDir, tempDirDirect } from '../testbed/scratch.js';
import { ensureClusterSecretFile } from '../controller/index.js';

export { REPO_ROOT };

export interface Child {
  name: string;
  child: ChildProcess;
  line: string;
  output(): string;
}

/** Run `fractos ...args` and wait for a stdout line matching `ready` (testbed/spawn.ts). Errors: EIO (exited first or no ready line in time). */
export async function spawnChild(name: string, args: string[], ready: RegExp, timeoutMs = 30_000): Promise<Child> {
  try {
    const s = await spawnFractos(args, ready, { timeoutMs });
    return { name, child: s.child, line: s.line, output: s.output };
  } catch (err) {
    throw new FractosError('EIO', `${name}: ${(err as Error).message}`);
  }
}

/** SIGTERM (then SIGKILL after `graceMs`) and wait for the child to exit. */
export async function stopChild(c: Child, signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000): Promise<void> {
  if (c.child.exitCode !== null || c.child.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.child.once('exit', () => r()));
  c.child.kill(signal);
  const t = setTimeout(() => c.child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

export interface ClusterOptions {
  /** Working directory (created, kept unless `removeDir`); default a fresh scratch folder (testbed/scratch.ts `tempDirDirect`), removed on stop. */
  dir?: string;
  /** Size of the sparse disk file (bytes, default 256 MiB). */
  diskBytes?: number;
  /** GPU backend (default auto). */
  gpuBackend?: 'auto' | 'cpu' | 'cuda';
  /** Remove `dir` on stop (default: when it was created here). */
  removeDir?: boolean;
  /** Progress lines. */
  log?: (line: string) => void;
  /**
   * `single` (default): one Controller for everything. `disaggregated` (paper §6.5): three
   * Controllers on this host as separate nodes, peers over TCP: the app's on Controller 1,
   * blockdev + FS on Controller 2, GPU adaptor on Controller 3.
   */
  placement?: Placement;
  /** FS `--cache-blocks` (default: the FS's own default, 16384 blocks of 4 KiB). */
  fsCacheBlocks?: number;
  /** GPU adaptor hands out served Memory even on cpu (`--served-memory`). */
  gpuServedMemory?: boolean;
  /**
   * Start the resource manager (`fractos rm`, docs/rm.md) on the app's node before the
   * services; the FS and every GPU adaptor register with it (`--rm rm`).
   */
  rm?: boolean;
}

export type Placement = 'single' | 'disaggregated';
export const PLACEMENTS: readonly Placement[] = ['single', 'disaggregated'];



/** A running single-host deployment. */
export class LocalCluster {
  readonly children = new Map<string, Child>();
  /** Controller address per node role (all equal to `controller` when single). */
  readonly nodes = { app: '', storage: '', gpu: '' };
  /** Every Controller's Process address (one for single, three for disaggregated). */
  readonly controllers: string[] = [];
  #opts: ClusterOptions = {};
  /** A separate socket folder (long `dir`), always ours. */
  #sockDir: string | undefined;
  /** The blockdev's admin secret file (`--admin-secret-file` of blockdev and fs), in `dir`. */
  get #adminSecret(): string {
    return join(this.dir, 'admin.secret');
  }
  private constructor(
    readonly dir: string,
    readonly controller: string,
    readonly gpuBackend: string,
    readonly removeDir: boolean,
    readonly startMs: Record<string, number>,
    readonly placement: Placement = 'single',
  ) {}

  /** Start controller, blockdev, fs, gpu (in that order). Errors: those of the children. */
  static async start(o: ClusterOptions = {}): Promise<LocalCluster> {
    const created = !o.dir;
    let dir = o.dir;
    if (!dir) dir = tempDirDirect('fractos-facever-');
    else mkdirSync(dir, { recursive: true });
    const placement = o.placement ?? 'single';
    // Unix socket paths are limited to 107 bytes; fall back to a temp folder for the sockets only.
    const sockDir = join(dir, 'c.sock').length < 100 ? dir : tempDir('fractos-sock-');
    const n = placement === 'single' ? 1 : 3;
    const addrs = Array.from({ length: n }, (_, i) => `unix:${join(sockDir, n === 1 ? 'c.sock' : `c${i + 1}.sock`)}`);
    const c = new LocalCluster(dir, addrs[0]!, o.gpuBackend ?? 'auto', o.removeDir ?? created, {}, placement);
    c.#opts = o;
    if (sockDir !== dir) c.#sockDir = sockDir;
    c.controllers.push(...addrs);
    c.nodes.app = addrs[0]!;
    c.nodes.storage = addrs[n === 1 ? 0 : 1]!;
    c.nodes.gpu = addrs[n === 1 ? 0 : 2]!;
    const disk = join(dir, 'disk.img');
    const fd = openSync(disk, 'w');
    ftruncateSync(fd, o.diskBytes ?? 256 * 1024 * 1024);
    closeSync(fd);
    try {
      if (n === 1) {
        await c.#start('controller', ['controller', '--id', '1', '--state-dir', join(dir, 'controller'), '--listen', addrs[0]!], /^controller \d+ epoch \d+ listening/, o.log);
      } else {
        // Peers over TCP, as test/helpers/spawn.ts clusterSpecs/startController do.
        const tcp = await Promise.all(addrs.map(async () => `tcp://127.0.0.1:${await freePort()}`));
        const secret = join(dir, 'cluster.secret');
        ensureClusterSecretFile(secret);
        await Promise.all(addrs.map((a, i) => {
          const args = ['controller', '--id', String(i + 1), '--state-dir', join(dir, `controller${i + 1}`), '--listen', a, '--listen', tcp[i]!, '--cluster-secret-file', secret];
          tcp.forEach((t, j) => j !== i && args.push('--peer', `${j + 1}=${t}`));
          return c.#start(`controller${i + 1}`, args, /^controller \d+ epoch \d+ listening/, o.log);
        }));
        await waitPeered(addrs);
      }
      if (o.rm) await c.#start('rm', ['rm', '--controller', c.nodes.app], /^ready rm /, o.log);
      // The volume administration only for our FS (also after startFs restarts it).
      ensureClusterSecretFile(c.#adminSecret);
      await c.#start('blockdev', ['blockdev', '--device', disk, '--format', '--controller', c.nodes.storage, '--admin-secret-file', c.#adminSecret], /^ready blockdev /, o.log);
      await c.startFs(o.fsCacheBlocks, o.log);
      await c.startGpu(o.log);
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  /** (Re)start the FS service with `--cache-blocks` (undefined: the FS default). */
  async startFs(cacheBlocks?: number, log?: (l: string) => void): Promise<Child> {
    const old = this.children.get('fs');
    if (old) {
      await stopChild(old);
      this.children.delete('fs');
    }
    const args = ['fs', '--controller', this.nodes.storage, '--admin-secret-file', this.#adminSecret];
    if (cacheBlocks !== undefined) args.push('--cache-blocks', String(cacheBlocks));
    if (this.#opts.rm) args.push('--rm', 'rm');
    return this.#start('fs', args, /^ready fs /, log);
  }

  async #start(name: string, args: string[], ready: RegExp, log?: (l: string) => void): Promise<Child> {
    const t = performance.now();
    const ch = await spawnChild(name, args, ready);
    this.startMs[name] = performance.now() - t;
    this.children.set(name, ch);
    log?.(`  ${name.padEnd(10)} pid ${String(ch.child.pid).padEnd(7)} ${ch.line}`);
    return ch;
  }

  /**
   * (Re)start the GPU adaptor; another `name` (`gpu2`, ...) starts one more adaptor
   * publishing under that prefix (a child of that name).
   */
  async startGpu(log?: (l: string) => void, name = 'gpu'): Promise<Child> {
    const args = ['gpu', '--backend', this.gpuBackend, '--controller', this.nodes.gpu];
    if (name !== 'gpu') args.push('--name', name);
    if (this.#opts.gpuServedMemory) args.push('--served-memory');
    if (this.#opts.rm) args.push('--rm', 'rm');
    return this.#start(name, args, /^ready gpu /, log);
  }

  /** kill -9 one child (failure injection) and wait for it to exit. */
  async kill9(name: string): Promise<void> {
    const c = this.children.get(name);
    if (!c) throw new FractosError('ENOENT', `no child '${name}'`);
    await stopChild(c, 'SIGKILL');
    this.children.delete(name);
  }

  /** Stop every child (GPU adaptors, fs, blockdev, rm, controller) and remove the directory if ours (and the socket folder). */
  async stop(): Promise<void> {
    const gpus = [...this.children.keys()].filter((k) => k.startsWith('gpu'));
    for (const name of [...gpus, 'fs', 'blockdev', 'rm', 'controller', 'controller1', 'controller2', 'controller3']) {
      const c = this.children.get(name);
      if (c) await stopChild(c);
      this.children.delete(name);
    }
    if (this.#sockDir) removeTempDir(this.#sockDir);
    if (this.removeDir) removeTempDir(this.dir);
  }
}

/** Wait until the Controllers at `addrs` see each other: a kv entry put on the last is visible on all. */
async function waitPeered(addrs: readonly string[], timeoutMs = 20_000): Promise<void> {
  const last = await connect(addrs[addrs.length - 1]!, { name: 'cluster-probe' });
  try {
    await last.kvPut(`cluster.probe.${process.pid}`, await last.requestCreate(1));
    for (const a of addrs.slice(0, -1)) {
      const p = await connect(a, { name: 'cluster-probe' });
      try {
        await p.kvWait(`cluster.probe.${process.pid}`, timeoutMs);
      } finally {
        await p.close();
      }
    }
  } finally {
    await last.close();
  }
}

/**
 * The single-host default deployment (DESIGN.md §1) as child processes of the caller:
 * a Controller on a Unix socket, a blockdev adaptor on a sparse file (O_DIRECT, so the
 * file lives on a disk file system: `.state/` under the repository by default, never
 * tmpfs), the FS service and the GPU adaptor. Used by `fractos demo`, `facever bench` and
 * the tests. Every child is `node bin/fractos.js <subcommand>`; each is ready when it
 * prints its ready line on stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, ftruncateSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FractosError } from '../libfractos/errors.js';

const here = dirname(fileURLToPath(import.meta.url));
/** Repository root (from dist/facever-app or facever-app). */
export const REPO_ROOT = resolve(here, here.includes('/dist/') ? '../..' : '..');
const BIN = join(REPO_ROOT, 'bin', 'fractos.js');

export interface Child {
  name: string;
  child: ChildProcess;
  line: string;
  output(): string;
}

/** Run `fractos ...args` and wait for a stdout line matching `ready`. Errors: EIO (exited first), ETIMEDOUT. */
export function spawnChild(name: string, args: string[], ready: RegExp, timeoutMs = 30_000): Promise<Child> {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: REPO_ROOT,
    env: { FRACTOS_LOG: 'warn', ...process.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  return new Promise((res, rej) => {
    let done = false;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      rej(new FractosError('ETIMEDOUT', `${name}: no ready line in ${timeoutMs} ms; output:\n${out}`));
    }, timeoutMs);
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (!done && ready.test(line)) {
          done = true;
          clearTimeout(timer);
          res({ name, child, line, output: () => out });
        }
      }
    });
    child.stderr!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.length > 1 << 20) out = out.slice(-(1 << 19));
    });
    child.once('exit', (code, sig) => {
      if (done) return;
      clearTimeout(timer);
      rej(new FractosError('EIO', `${name} exited (${code ?? sig}) before ready; output:\n${out}`));
    });
  });
}

async function stopChild(c: Child, signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000): Promise<void> {
  if (c.child.exitCode !== null || c.child.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.child.once('exit', () => r()));
  c.child.kill(signal);
  const t = setTimeout(() => c.child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

export interface ClusterOptions {
  /** Working directory (created); default a fresh `.state/facever-XXXX` under the repository. */
  dir?: string;
  /** Size of the sparse disk file (bytes, default 256 MiB). */
  diskBytes?: number;
  /** GPU backend (default auto). */
  gpuBackend?: 'auto' | 'cpu' | 'cuda';
  /** Remove `dir` on stop (default: when it was created here). */
  removeDir?: boolean;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** A running single-host deployment. */
export class LocalCluster {
  readonly children = new Map<string, Child>();
  private constructor(
    readonly dir: string,
    readonly controller: string,
    readonly gpuBackend: string,
    readonly removeDir: boolean,
    readonly startMs: Record<string, number>,
  ) {}

  /** Start controller, blockdev, fs, gpu (in that order). Errors: those of the children. */
  static async start(o: ClusterOptions = {}): Promise<LocalCluster> {
    const created = !o.dir;
    let dir = o.dir;
    if (!dir) {
      mkdirSync(join(REPO_ROOT, '.state'), { recursive: true });
      dir = mkdtempSync(join(REPO_ROOT, '.state', 'facever-'));
    } else mkdirSync(dir, { recursive: true });
    const sock = join(dir, 'c.sock');
    // Unix socket paths are limited to 107 bytes; fall back to /tmp for the socket only.
    const controller = `unix:${sock.length < 100 ? sock : join(mkdtempSync('/tmp/fractos-'), 'c.sock')}`;
    const c = new LocalCluster(dir, controller, o.gpuBackend ?? 'auto', o.removeDir ?? created, {});
    const disk = join(dir, 'disk.img');
    const fd = openSync(disk, 'w');
    ftruncateSync(fd, o.diskBytes ?? 256 * 1024 * 1024);
    closeSync(fd);
    try {
      await c.#start('controller', ['controller', '--id', '1', '--state-dir', join(dir, 'controller'), '--listen', controller], /^controller \d+ epoch \d+ listening/, o.log);
      await c.#start('blockdev', ['blockdev', '--device', disk, '--format', '--controller', controller], /^ready blockdev /, o.log);
      await c.#start('fs', ['fs', '--controller', controller], /^ready fs /, o.log);
      await c.startGpu(o.log);
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  async #start(name: string, args: string[], ready: RegExp, log?: (l: string) => void): Promise<Child> {
    const t = performance.now();
    const ch = await spawnChild(name, args, ready);
    this.startMs[name] = performance.now() - t;
    this.children.set(name, ch);
    log?.(`  ${name.padEnd(10)} pid ${String(ch.child.pid).padEnd(7)} ${ch.line}`);
    return ch;
  }

  /** (Re)start the GPU adaptor. */
  async startGpu(log?: (l: string) => void): Promise<Child> {
    return this.#start('gpu', ['gpu', '--backend', this.gpuBackend, '--controller', this.controller], /^ready gpu /, log);
  }

  /** kill -9 one child (failure injection) and wait for it to exit. */
  async kill9(name: string): Promise<void> {
    const c = this.children.get(name);
    if (!c) throw new FractosError('ENOENT', `no child '${name}'`);
    await stopChild(c, 'SIGKILL');
    this.children.delete(name);
  }

  /** Stop every child (gpu, fs, blockdev, controller) and remove the directory if ours. */
  async stop(): Promise<void> {
    for (const name of ['gpu', 'fs', 'blockdev', 'controller']) {
      const c = this.children.get(name);
      if (c) await stopChild(c);
      this.children.delete(name);
    }
    if (this.removeDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

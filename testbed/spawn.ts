/**
 * Spawn `fractos` subcommands as real OS processes (Controllers, services) and wait for
 * their ready line. Used by the CLI (fio, demo), facever-app's LocalCluster, the benchmarks
 * and the tests. This test bed depends on neither cli/ nor facever-app/ (import graph:
 * cli -> facever-app -> testbed, cli -> testbed). Every child is tracked by
 * testbed/scratch.ts: killed if still alive when the parent exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { join } from 'node:path';
import { ensureClusterSecretFile } from '../controller/index.js';
import { FRACTOS_BIN, REPO_ROOT } from './paths.js';
import { tempDir, trackChild } from './scratch.js';

export { FRACTOS_BIN, REPO_ROOT } from './paths.js';
export { removeTempDir, tempDir } from './scratch.js';

export interface Spawned {
  child: ChildProcess;
  /** The ready line that matched. */
  line: string;
  /** Everything printed so far (stdout + stderr). */
  output(): string;
  /**
   * Resolves once the process has exited and its stdout and stderr are read to the end
   * (ChildProcess 'close'): output() is then complete. At 'exit' the last lines may still
   * be in the pipes, and stdout and stderr are two pipes read in no fixed order.
   */
  ended: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL (kill -9) and wait for `ended`. */
  kill9(): Promise<void>;
  /** SIGTERM and wait for `ended`. */
  stop(): Promise<void>;
}

/**
 * Run `node bin/fractos.js ...args` and resolve once a stdout line matches `ready`.
 * Rejects if the process exits first or `timeoutMs` passes (with its output).
 */
export function spawnFractos(args: string[], ready: RegExp, opts: SpawnOptions = {}): Promise<Spawned> {
  return spawnNode([FRACTOS_BIN, ...args], ready, opts);
}

/**
 * Default bound on a child's start (its ready line), ms. A Controller with etcd took over 20 s
 * to print its line on a machine at load 20 (Node's own start, CPU-starved), so 60 s.
 */
export const DEFAULT_READY_TIMEOUT_MS = 60_000;

export interface SpawnOptions {
  /**
   * Bound on the wait for the ready line, ms (default DEFAULT_READY_TIMEOUT_MS): it only
   * catches a child that hangs; a slow start is not an error.
   */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  /** A command that runs node, e.g. `['ip', 'netns', 'exec', NS]` (cluster/: a node's namespace). */
  prefix?: string[];
}

/**
 * Run `node ...argv` (a script and its arguments) and resolve once a stdout line matches
 * `ready`. `FRACTOS_NODE_ARGS` (space-separated) adds Node flags to every child, e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile a whole stack.
 */
export function spawnNode(argv: string[], ready: RegExp, opts: SpawnOptions = {}): Promise<Spawned> {
  const args = argv.slice(1);
  const nodeArgs = (process.env.FRACTOS_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const [cmd, ...cmdArgs] = [...(opts.prefix ?? []), process.execPath, ...nodeArgs, ...argv] as [string, ...string[]];
  const child = spawn(cmd, cmdArgs, {
    cwd: REPO_ROOT,
    // FRACTOS_PARENT_PID: the child stops when this process dies, even by kill -9 (cli/parent.ts).
    env: { FRACTOS_LOG: 'warn', ...process.env, FRACTOS_PARENT_PID: String(process.pid), ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  trackChild(child);
  let out = '';
  const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('close', (code, signal) => r({ code, signal })));
  const wait = async (): Promise<void> => {
    await ended;
  };
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`fractos ${args.join(' ')}: no ready line in ${opts.timeoutMs ?? DEFAULT_READY_TIMEOUT_MS} ms; output:\n${out}`));
    }, opts.timeoutMs ?? DEFAULT_READY_TIMEOUT_MS);
    let buf = '';
    let done = false;
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
          resolvePromise({
            child,
            line,
            output: () => out,
            ended,
            kill9: async () => {
              child.kill('SIGKILL');
              await wait();
            },
            stop: async () => {
              child.kill('SIGTERM');
              await wait();
            },
          });
        }
      }
    });
    child.stderr!.on('data', (d: Buffer) => {
      out += d.toString();
      // Long-running services log for hours: keep the last 512 KiB.
      if (out.length > 1 << 20) out = out.slice(-(1 << 19));
    });
    child.once('close', (code, sig) => {
      if (done) return;
      clearTimeout(timer);
      reject(new Error(`fractos ${args.join(' ')} exited (${code ?? sig}) before ready; output:\n${out}`));
    });
  });
}

/** A free TCP port on 127.0.0.1 (bound then released). */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => res(p));
    });
  });
}

export interface ControllerSpec {
  id: number;
  dir: string;
  /** unix socket for Processes */
  unix: string;
  /** tcp address for peers */
  tcp: string;
  /** the cluster secret file, one for all specs */
  secretFile: string;
}

/** Specs for `n` Controllers (ids 1..n) that list each other as peers; `dir` default: a tempDir (removed at exit). */
export async function clusterSpecs(n: number, dir = tempDir('fractos-cluster-')): Promise<ControllerSpec[]> {
  const specs: ControllerSpec[] = [];
  const secretFile = join(dir, 'cluster.secret');
  ensureClusterSecretFile(secretFile);
  for (let i = 1; i <= n; i++) {
    specs.push({ id: i, dir: join(dir, `c${i}`), unix: `unix:${join(dir, `c${i}.sock`)}`, tcp: `tcp://127.0.0.1:${await freePort()}`, secretFile });
  }
  return specs;
}

/** Start (or restart) the Controller of `spec` as an OS process, peers = the other specs. */
export function startController(spec: ControllerSpec, all: ControllerSpec[]): Promise<Spawned> {
  const args = ['controller', '--id', String(spec.id), '--state-dir', spec.dir, '--listen', spec.unix, '--listen', spec.tcp, '--cluster-secret-file', spec.secretFile];
  for (const p of all) if (p.id !== spec.id) args.push('--peer', `${p.id}=${p.tcp}`);
  return spawnFractos(args, /^controller \d+ epoch \d+ listening/);
}

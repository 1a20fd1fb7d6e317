/**
 * Scratch state that a command or a test creates for itself: temporary folders and child
 * processes. Everything registered here is removed when the process ends:
 *
 * - on any exit (`process.exit`, the event loop draining): live children get SIGKILL and
 *   the folders are removed (synchronously, in the `exit` event);
 * - on SIGINT (Ctrl-C) or SIGTERM, once `cleanupOnSignals` is installed: children get
 *   SIGTERM (SIGKILL after `grace` ms), the folders are removed, one line is printed and
 *   the process exits 128 + the signal number (130, 143).
 *
 * State a user asked to keep (an explicit `--state-dir`, `--device`, `--out`) is never
 * registered here.
 */
import type { ChildProcess } from 'node:child_process';
import { closeSync, constants as fs, mkdtempSync, openSync, rmSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';

const dirs = new Set<string>();
const children = new Set<ChildProcess>();
let exitHook = false;

function sweep(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.clear();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
}

function hookExit(): void {
  if (exitHook) return;
  exitHook = true;
  process.once('exit', sweep);
}

/**
 * A fresh folder `BASE/PREFIXxxxxxx` (BASE default `os.tmpdir()`), removed by
 * `removeTempDir` or at the latest when this process ends (see the module comment).
 */
export function tempDir(prefix = 'fractos-', base = tmpdir()): string {
  const d = mkdtempSync(join(base, prefix));
  dirs.add(d);
  hookExit();
  return d;
}

/**
 * Remove `path` (a file or a folder) when this process ends, as a tempDir; for scratch that
 * is not a tempDir, e.g. a device file the fio runner created for itself.
 */
export function removeOnExit(path: string): void {
  dirs.add(path);
  hookExit();
}

/** Remove a folder made by `tempDir` (or a path given to `removeOnExit`) now (recursive; a missing one is fine). */
export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

/** The paths made by `tempDir` (or given to `removeOnExit`) not removed yet. */
export function liveTempDirs(): string[] {
  return [...dirs];
}

let directBase: string | undefined;

/**
 * A fresh scratch folder on a file system that accepts O_DIRECT (the blockdev opens its
 * device file with O_DIRECT; tmpfs refuses it with EINVAL): under `os.tmpdir()` when it
 * does, else under /var/tmp. Removed like `tempDir`.
 */
export function tempDirDirect(prefix = 'fractos-'): string {
  if (directBase === undefined) {
    const probe = tempDir('fractos-odirect-');
    try {
      closeSync(openSync(join(probe, 'p'), fs.O_RDWR | fs.O_CREAT | fs.O_DIRECT));
      directBase = tmpdir();
    } catch {
      directBase = '/var/tmp';
    } finally {
      removeTempDir(probe);
    }
  }
  return tempDir(prefix, directBase);
}

/** Kill `child` (SIGKILL) if it is still alive when this process ends; forgotten once it exits. */
export function trackChild(child: ChildProcess): void {
  children.add(child);
  child.once('exit', () => children.delete(child));
  hookExit();
}

let signalHook = false;

/**
 * For test workers: on SIGTERM / SIGINT (ava stops a worker whose event loop is still held,
 * e.g. by a child left running, with SIGTERM) exit 128 + signal number, so that the `exit`
 * sweep still kills the tracked children and removes the tempDirs. No effect once
 * `cleanupOnSignals` is installed.
 */
export function sweepOnTermination(): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      if (!signalHook) process.exit(128 + constants.signals[signal]);
    });
  }
}

/**
 * On SIGINT / SIGTERM: stop every tracked child (SIGTERM, SIGKILL after `graceMs`), remove
 * every tempDir, print `NAME: interrupted by SIGNAL; scratch removed` on stderr and exit
 * 128 + signal number. For commands that start child processes (demo, fio, bench); a
 * second signal during the cleanup exits at once (the `exit` sweep still runs). While the
 * cleanup runs, `process.exit` calls from the command's own error paths are deferred.
 */
export function cleanupOnSignals(name: string, graceMs = 3000): void {
  if (signalHook) return;
  signalHook = true;
  let busy = false;
  const realExit = process.exit.bind(process);
  const log = (line: string): void => {
    if (process.env.FRACTOS_LOG === 'debug') process.stderr.write(`${name}: ${line}\n`);
  };
  const on = (signal: 'SIGINT' | 'SIGTERM'): void => {
    const code = 128 + constants.signals[signal];
    if (busy) realExit(code);
    busy = true;
    // The command's own error paths (a child it waits on just went away) must not end the
    // process with their exit code before the cleanup is done: this handler owns the exit.
    process.exit = ((c?: number) => {
      log(`exit(${c ?? 0}) deferred until the cleanup is done`);
    }) as typeof process.exit;
    const live = [...children].filter((c) => c.exitCode === null && c.signalCode === null);
    const exited = live.map((c) => new Promise<void>((r) => c.once('exit', () => r())));
    for (const c of live) c.kill('SIGTERM');
    const kill = setTimeout(() => {
      for (const c of live) c.kill('SIGKILL');
    }, graceMs);
    void Promise.all(exited).then(() => {
      clearTimeout(kill);
      sweep();
      process.stderr.write(`${name}: interrupted by ${signal}; scratch removed\n`);
      realExit(code);
    });
  };
  process.on('SIGINT', () => on('SIGINT'));
  process.on('SIGTERM', () => on('SIGTERM'));
}

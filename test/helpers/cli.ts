/** Run `node ...` commands as a user would (own cwd, env) and watch their output, exit and children. */
import { spawn, type ChildProcess } from 'node:child_process';
import { REPO_ROOT } from './spawn.js';

/** True while `pid` is a live process. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export { until } from './wait.js';

export interface Run {
  child: ChildProcess;
  out: () => string;
  /** Resolves with the first stdout+stderr text matching `re` (its match). */
  waitFor(re: RegExp, ms?: number): Promise<RegExpMatchArray>;
  /** Resolves once the process has exited and all of its output has been read (out() is complete). */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawn `node ...argv` in `cwd` (default the repository) with FRACTOS_LOG=warn and `env` added. */
export function run(argv: string[], env: NodeJS.ProcessEnv = {}, cwd = REPO_ROOT): Run {
  const child = spawn(process.execPath, argv, { cwd, env: { ...process.env, FRACTOS_LOG: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  const waiters: (() => void)[] = [];
  const feed = (d: Buffer): void => {
    text += d.toString();
    for (const w of waiters) w();
  };
  child.stdout!.on('data', feed);
  child.stderr!.on('data', feed);
  // 'close', not 'exit': the process has exited and its stdout and stderr are read to the end
  // (at 'exit' the last lines may still be in the pipes; a loaded machine reads them later).
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('close', (code, signal) => r({ code, signal })));
  return {
    child,
    out: () => text,
    exit,
    waitFor: (re, ms = 60_000) =>
      new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no ${re} in ${ms} ms; output:\n${text}`)), ms);
        const check = (): void => {
          const m = re.exec(text);
          if (m) {
            clearTimeout(t);
            resolve(m);
          }
        };
        waiters.push(check);
        void exit.then(() => {
          check();
          clearTimeout(t);
          if (!re.exec(text)) reject(new Error(`exited before ${re}; output:\n${text}`));
        });
        check();
      }),
  };
}

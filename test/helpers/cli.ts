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
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
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

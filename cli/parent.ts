/**
 * Children of a `fractos` command (the demo's, the benchmarks' and the fio runner's
 * Controller and services, spawned by testbed/spawn.ts) stop when that command dies, even by
 * kill -9 (which leaves it no chance to stop them): the spawner names itself in
 * `FRACTOS_PARENT_PID`, and the child checks every WATCH_MS that it still has that parent
 * (a dead parent's children are re-parented, so `process.ppid` changes). When it has not,
 * the child logs one line and sends itself SIGTERM: the same stop as a requested one
 * (cli/lifecycle.ts), so it closes what it holds.
 */

/** Environment variable: the pid of the `fractos` command that spawned this one. */
export const PARENT_PID_ENV = 'FRACTOS_PARENT_PID';

/** How often the parent is checked (ms). */
export const WATCH_MS = 500;

/**
 * Start watching the spawner when `FRACTOS_PARENT_PID` names one (a no-op otherwise, e.g.
 * a command a user started). `ppid` and `stop` are for tests. Returns the timer, unref'ed
 * (it never keeps the process alive), or null.
 */
export function watchParent(
  env: NodeJS.ProcessEnv = process.env,
  ppid: () => number = () => process.ppid,
  stop: () => void = () => process.kill(process.pid, 'SIGTERM'),
): NodeJS.Timeout | null {
  const want = Number(env[PARENT_PID_ENV]);
  if (!Number.isInteger(want) || want <= 1) return null;
  if (ppid() !== want) return null; // exec'ed through a wrapper: nothing reliable to watch
  const timer = setInterval(() => {
    if (ppid() === want) return;
    clearInterval(timer);
    // Our stdout/stderr were most likely pipes to the dead parent: writes now fail with
    // EPIPE, which must not end the process before its stop has closed what it holds.
    // (cli/log.ts guardStdout would end it on that error: its handler goes too.)
    for (const s of [process.stdout, process.stderr]) s.removeAllListeners('error').on('error', () => {});
    process.stderr.write(`fractos: parent pid ${want} is gone; stopping\n`);
    stop();
  }, WATCH_MS);
  timer.unref();
  return timer;
}

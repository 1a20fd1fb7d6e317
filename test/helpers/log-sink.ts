/** A Controller log sink for tests: every info/warn line, in order, for assertions. */
import type { ControllerOptions } from '../../controller/index.js';

export interface LogLine {
  level: 'info' | 'warn';
  o: Record<string, unknown>;
  msg: string;
}

/** `log` to pass as ControllerOptions.log; `lines` fills as the Controller logs. */
export function logSink(): { lines: LogLine[]; log: NonNullable<ControllerOptions['log']> } {
  const lines: LogLine[] = [];
  return {
    lines,
    log: {
      info: (o, m) => lines.push({ level: 'info', o: o as Record<string, unknown>, msg: m ?? '' }),
      warn: (o, m) => lines.push({ level: 'warn', o: o as Record<string, unknown>, msg: m ?? '' }),
    },
  };
}

/**
 * fio job-file parser (the subset FractOS's fio runner supports).
 *
 * Syntax (as fio's INI-like format):
 * - `[name]` starts a job section; `[global]` sets defaults for the job sections that
 *   follow it (several `[global]` sections are allowed; each applies to later jobs only);
 * - `key=value` or `key = value`; a bare `key` is a flag (`time_based`);
 * - lines starting with `;` or `#` are comments; ` ;...` / ` #...` after whitespace too.
 *
 * Supported keys: see `SUPPORTED_KEYS`. Any other key is rejected with
 * `FractosError('ENOTSUP', "fio key 'X' (file:line) is not supported by fractos fio; supported: ...")`;
 * malformed lines and values are `EINVAL` with `file:line`.
 *
 * Sizes (`bs`, `size`): an integer or decimal (or 0x hex) with an optional suffix,
 * case-insensitive: `b`; `k`/`kb`, `m`/`mb`, `g`/`gb`, `t`/`tb`, `p`/`pb`; and the IEC forms
 * `kib`, `mib`, `gib`, `tib`, `pib`. As in real fio, the default `kb_base=1024` is fio's
 * "compatibility mode": `k`/`kb` = 1024 and, oddly, `kib` = 1000 (verified on fio 3.33:
 * size=1MiB moves 1,000,000 bytes). With `kb_base=1000`, `k`/`kb` = 1000 and `kib` = 1024.
 * Unlike fio, `kb_base` applies to the whole job wherever it appears. `%` sizes: ENOTSUP.
 *
 * Times (`runtime`): a number with an optional unit; default seconds; `us`/`usec`,
 * `ms`/`msec`, `s`/`sec`, `m`/`min`, `h`/`hour`, `d`/`day`.
 */
import { readFile } from 'node:fs/promises';
import { FractosError } from '../../libfractos/errors.js';

/** fio I/O patterns supported. `rw` is fio's sequential mixed mode (`readwrite` is folded into it). */
export type FioRw = 'read' | 'write' | 'randread' | 'randwrite' | 'rw' | 'randrw';

/** One fio job (a `[section]` with `[global]` defaults applied). Units in the field names. */
export interface FioJob {
  /** Job name: the section name, or the `name=` key. */
  name: string;
  /** I/O pattern (fio default: `read`). */
  rw: FioRw;
  /** Block size in bytes (fio default 4096). */
  bs: number;
  /** Ops kept in flight per clone (fio default 1). */
  iodepth: number;
  /** Bytes of the I/O region per clone; undefined = the whole target (fio's default for a device). */
  size?: number;
  /** Run-time limit in milliseconds (fio `runtime`, default unit seconds); undefined = none. */
  runtimeMs?: number;
  /** Keep going until `runtimeMs` even after `size` bytes (fio `time_based`). */
  timeBased: boolean;
  /** Number of clones of this job run concurrently (fio `numjobs`, default 1). */
  numjobs: number;
  /** Percentage of reads in mixed modes (`rw`, `randrw`), 0..100 (fio default 50). */
  rwmixread: number;
  /** Target file or device (fio `filename`; `--device` overrides it). */
  filename?: string;
  /** fio `direct` (O_DIRECT); recorded, targets decide what it means. */
  direct: boolean;
  /** fio `ioengine`; accepted and recorded only (FractOS targets bring their own engine). */
  ioengine?: string;
  /** fio `kb_base`: 1024 (default) or 1000. */
  kbBase: 1000 | 1024;
  /** Where the job section starts. */
  source: { file: string; line: number };
  /** Raw `[global]` options in effect for this job, as fio's JSON "global options" (flags omitted). */
  globalOptions: Record<string, string>;
  /** Raw options of the job section itself, as fio's JSON "job options" (flags omitted). */
  jobOptions: Record<string, string>;
}

/** Options of `parseJobFile` / `loadJobFile`. */
export interface ParseJobOptions {
  /** File name used in error messages (default `<jobfile>`). */
  file?: string;
  /** Override every job's `filename` (the runner's `--device`). */
  device?: string;
  /** Override every job's runtime, in milliseconds. */
  runtimeMs?: number;
}

/** Keys accepted (aliases included). `group_reporting` and `description` are accepted and ignored. */
export const SUPPORTED_KEYS = [
  'name', 'rw', 'readwrite', 'bs', 'blocksize', 'iodepth', 'size', 'runtime', 'timeout', 'time_based',
  'numjobs', 'rwmixread', 'rwmixwrite', 'filename', 'direct', 'ioengine', 'kb_base', 'group_reporting',
  'description',
] as const;

const SUPPORTED = new Set<string>(SUPPORTED_KEYS);
const ALIASES: Record<string, string> = { readwrite: 'rw', blocksize: 'bs', timeout: 'runtime' };
const FLAG_KEYS = new Set(['time_based', 'group_reporting', 'direct']);
const RW_VALUES: Record<string, FioRw> = {
  read: 'read', write: 'write', randread: 'randread', randwrite: 'randwrite', rw: 'rw', readwrite: 'rw',
  randrw: 'randrw',
};
const RW_UNSUPPORTED = new Set(['trim', 'randtrim', 'trimwrite', 'randtrimwrite']);

interface RawOpt {
  key: string; // canonical (aliases resolved)
  rawKey: string;
  value: string | undefined; // undefined for flags
  line: number;
}

/** Default target when neither the job file nor `--device` names one. */
export const DEFAULT_FIO_FILENAME = '/tmp/fractos-fio.img';

/**
 * Parse a fio job file's text into jobs, in file order.
 * @param text job file contents
 * @param opts file name for messages, `device` / `runtimeMs` overrides
 * @returns one `FioJob` per non-global section
 * @throws FractosError EINVAL (malformed line or value, no job section, option before any section),
 *         ENOTSUP (unsupported key or value)
 */
export function parseJobFile(text: string, opts: ParseJobOptions = {}): FioJob[] {
  const file = opts.file ?? '<jobfile>';
  const where = (line: number): string => `${file}:${line}`;
  const lines = text.split(/\r?\n/);
  const globals: RawOpt[] = [];
  type Section = { name: string; line: number; opts: RawOpt[]; globals: RawOpt[] };
  const sections: Section[] = [];
  let current: { global: boolean; opts: RawOpt[] } | undefined;
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1;
    let s = lines[i]!;
    // Trailing comments: ';' or '#' preceded by whitespace.
    const m = /\s[;#]/.exec(s);
    if (m) s = s.slice(0, m.index);
    s = s.trim();
    if (s === '' || s.startsWith(';') || s.startsWith('#')) continue;
    if (s.startsWith('[')) {
      const h = /^\[([^\]]*)\]$/.exec(s);
      if (!h || h[1]!.trim() === '') throw new FractosError('EINVAL', `malformed section header '${s}' (${where(lineNo)})`);
      const name = h[1]!.trim();
      if (name === 'global') {
        // A [global] adds to (and may override) the defaults of the jobs that follow it.
        current = { global: true, opts: globals };
      } else {
        // Snapshot: a later [global] must not change this job.
        const sec: Section = { name, line: lineNo, opts: [], globals: globals.slice() };
        sections.push(sec);
        current = { global: false, opts: sec.opts };
      }
      continue;
    }
    const kv = /^([A-Za-z0-9_]+)\s*(?:=\s*(.*))?$/.exec(s);
    if (!kv) throw new FractosError('EINVAL', `malformed line '${s}' (${where(lineNo)}): expected key=value, key or [section]`);
    if (!current) throw new FractosError('EINVAL', `option '${kv[1]}' before any [section] (${where(lineNo)})`);
    const rawKey = kv[1]!.toLowerCase();
    if (!SUPPORTED.has(rawKey)) {
      throw new FractosError(
        'ENOTSUP',
        `fio key '${kv[1]}' (${where(lineNo)}) is not supported by fractos fio; supported: ${SUPPORTED_KEYS.join(', ')}`,
      );
    }
    const value = kv[2] === undefined ? undefined : kv[2].trim();
    if (value !== undefined && value.includes('${')) {
      throw new FractosError('ENOTSUP', `environment expansion in '${s}' (${where(lineNo)}) is not supported by fractos fio`);
    }
    current.opts.push({ key: ALIASES[rawKey] ?? rawKey, rawKey, value, line: lineNo });
  }
  if (sections.length === 0) throw new FractosError('EINVAL', `no job section in ${file}`);
  return sections.map((sec) => buildJob(sec.name, sec.line, sec.globals, sec.opts, file, opts));
}

/**
 * Read and parse a job file (see `parseJobFile`).
 * @throws FractosError ENOENT (file missing), EINVAL, ENOTSUP
 */
export async function loadJobFile(path: string, opts: Omit<ParseJobOptions, 'file'> = {}): Promise<FioJob[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FractosError(code === 'ENOENT' ? 'ENOENT' : 'EIO', `cannot read fio job file ${path}: ${(e as Error).message}`);
  }
  return parseJobFile(text, { ...opts, file: path });
}

function buildJob(name: string, line: number, globals: RawOpt[], own: RawOpt[], file: string, po: ParseJobOptions): FioJob {
  const all = [...globals, ...own];
  const where = (o: RawOpt): string => `${file}:${o.line}`;
  const need = (o: RawOpt): string => {
    if (o.value === undefined || o.value === '') throw new FractosError('EINVAL', `fio key '${o.rawKey}' needs a value (${where(o)})`);
    return o.value;
  };
  // kb_base first: it changes how every size of the job is read.
  let kbBase: 1000 | 1024 = 1024;
  for (const o of all) {
    if (o.key !== 'kb_base') continue;
    const v = need(o);
    if (v !== '1000' && v !== '1024') throw new FractosError('EINVAL', `kb_base must be 1000 or 1024, got '${v}' (${where(o)})`);
    kbBase = v === '1000' ? 1000 : 1024;
  }
  const job: FioJob = {
    name,
    rw: 'read',
    bs: 4096,
    iodepth: 1,
    timeBased: false,
    numjobs: 1,
    rwmixread: 50,
    direct: false,
    kbBase,
    source: { file, line },
    globalOptions: rawRecord(globals),
    jobOptions: rawRecord(own),
  };
  for (const o of all) {
    const ctx = where(o);
    switch (o.key) {
      case 'name':
        job.name = need(o);
        break;
      case 'rw': {
        const v = need(o).toLowerCase();
        if (v.includes(':')) throw new FractosError('ENOTSUP', `rw modifier in '${o.value}' (${ctx}) is not supported by fractos fio`);
        if (RW_UNSUPPORTED.has(v)) throw new FractosError('ENOTSUP', `rw=${v} (${ctx}) is not supported by fractos fio`);
        const rw = RW_VALUES[v];
        if (!rw) throw new FractosError('EINVAL', `bad rw value '${o.value}' (${ctx}); expected one of ${Object.keys(RW_VALUES).join(', ')}`);
        job.rw = rw;
        break;
      }
      case 'bs': {
        const v = need(o);
        if (v.includes(',') || v.includes(':')) {
          throw new FractosError('ENOTSUP', `per-direction or ranged bs '${v}' (${ctx}) is not supported by fractos fio`);
        }
        job.bs = positiveInt(parseSize(v, kbBase, ctx), 'bs', ctx);
        break;
      }
      case 'size':
        job.size = positiveInt(parseSize(need(o), kbBase, ctx), 'size', ctx);
        break;
      case 'iodepth':
        job.iodepth = positiveInt(parseInteger(need(o), ctx), 'iodepth', ctx);
        break;
      case 'numjobs':
        job.numjobs = positiveInt(parseInteger(need(o), ctx), 'numjobs', ctx);
        break;
      case 'runtime': {
        const ms = parseTimeMs(need(o), ctx);
        job.runtimeMs = ms > 0 ? ms : undefined; // fio: runtime=0 means no limit
        break;
      }
      case 'time_based':
        job.timeBased = parseBool(o, ctx);
        break;
      case 'direct':
        job.direct = parseBool(o, ctx);
        break;
      case 'rwmixread':
      case 'rwmixwrite': {
        const pct = parseInteger(need(o), ctx);
        if (pct < 0 || pct > 100) throw new FractosError('EINVAL', `${o.rawKey} must be 0..100, got ${pct} (${ctx})`);
        job.rwmixread = o.key === 'rwmixread' ? pct : 100 - pct;
        break;
      }
      case 'filename':
        job.filename = need(o);
        break;
      case 'ioengine':
        job.ioengine = need(o);
        break;
      case 'kb_base':
      case 'group_reporting':
      case 'description':
        break;
      default:
        throw new FractosError('ENOTSUP', `fio key '${o.rawKey}' (${ctx}) is not supported by fractos fio`);
    }
  }
  if (po.device !== undefined) job.filename = po.device;
  if (po.runtimeMs !== undefined) job.runtimeMs = po.runtimeMs > 0 ? po.runtimeMs : undefined;
  if (job.timeBased && job.runtimeMs === undefined) {
    throw new FractosError('EINVAL', `job '${job.name}' (${file}:${line}) is time_based but has no runtime`);
  }
  if (job.size !== undefined && job.size < job.bs) {
    throw new FractosError('EINVAL', `job '${job.name}' (${file}:${line}): size ${job.size} B is smaller than bs ${job.bs} B`);
  }
  return job;
}

function rawRecord(opts: RawOpt[]): Record<string, string> {
  const r: Record<string, string> = {};
  for (const o of opts) if (o.value !== undefined) r[o.rawKey] = o.value;
  return r;
}

function positiveInt(n: number, key: string, ctx: string): number {
  if (!Number.isSafeInteger(n) || n <= 0) throw new FractosError('EINVAL', `${key} must be a positive integer, got ${n} (${ctx})`);
  return n;
}

function parseInteger(v: string, ctx: string): number {
  if (!/^\d+$/.test(v)) throw new FractosError('EINVAL', `expected an integer, got '${v}' (${ctx})`);
  return Number(v);
}

function parseBool(o: RawOpt, ctx: string): boolean {
  if (o.value === undefined || o.value === '') return FLAG_KEYS.has(o.key) || failBool(o, ctx);
  const v = o.value.toLowerCase();
  if (v === '1' || v === 'true' || v === 'on' || v === 'yes') return true;
  if (v === '0' || v === 'false' || v === 'off' || v === 'no') return false;
  return failBool(o, ctx);
}

function failBool(o: RawOpt, ctx: string): never {
  throw new FractosError('EINVAL', `${o.rawKey} expects 0 or 1, got '${o.value ?? ''}' (${ctx})`);
}

/**
 * Parse a fio size string into bytes (see the module comment for the suffix rules).
 * @param v e.g. `4k`, `256m`, `1MiB`, `4096`, `0x1000`
 * @param kbBase fio `kb_base`: 1024 (default, k=1024, KiB=1000) or 1000 (k=1000, KiB=1024)
 * @param ctx `file:line` for errors
 * @returns bytes (rounded down to an integer)
 * @throws FractosError EINVAL (malformed), ENOTSUP (percentages)
 */
export function parseSize(v: string, kbBase: 1000 | 1024 = 1024, ctx = '<value>'): number {
  const m = /^(0x[0-9a-f]+|\d+(?:\.\d+)?|\.\d+)\s*([a-z%]*)$/i.exec(v.trim());
  if (!m) throw new FractosError('EINVAL', `malformed size '${v}' (${ctx})`);
  const num = m[1]!.toLowerCase().startsWith('0x') ? parseInt(m[1]!, 16) : Number(m[1]);
  const suf = m[2]!.toLowerCase();
  if (suf === '%') throw new FractosError('ENOTSUP', `percentage size '${v}' (${ctx}) is not supported by fractos fio`);
  const other = kbBase === 1024 ? 1000 : 1024;
  const POW: Record<string, number> = { k: 1, m: 2, g: 3, t: 4, p: 5 };
  let mult: number;
  if (suf === '' || suf === 'b') mult = 1;
  else if (/^[kmgtp]b?$/.test(suf)) mult = kbBase ** POW[suf[0]!]!;
  else if (/^[kmgtp]ib$/.test(suf)) mult = other ** POW[suf[0]!]!;
  else throw new FractosError('EINVAL', `unknown size suffix '${m[2]}' in '${v}' (${ctx})`);
  const bytes = Math.floor(num * mult);
  if (!Number.isSafeInteger(bytes)) throw new FractosError('EINVAL', `size '${v}' too large (${ctx})`);
  return bytes;
}

/**
 * Parse a fio time string (default unit: seconds) into milliseconds.
 * @param v e.g. `10`, `10s`, `500ms`, `2m`, `250us`
 * @param ctx `file:line` for errors
 * @throws FractosError EINVAL
 */
export function parseTimeMs(v: string, ctx = '<value>'): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(v.trim());
  if (!m) throw new FractosError('EINVAL', `malformed time '${v}' (${ctx})`);
  const n = Number(m[1]);
  const UNITS: Record<string, number> = {
    '': 1000, s: 1000, sec: 1000, ms: 1, msec: 1, us: 1e-3, usec: 1e-3, m: 60_000, min: 60_000,
    h: 3_600_000, hour: 3_600_000, d: 86_400_000, day: 86_400_000,
  };
  const u = UNITS[m[2]!.toLowerCase()];
  if (u === undefined) throw new FractosError('EINVAL', `unknown time unit '${m[2]}' in '${v}' (${ctx})`);
  return n * u;
}

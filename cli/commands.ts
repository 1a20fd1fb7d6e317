/**
 * The `fractos` command tree. Each component registers its subcommands from its own file
 * (cli/<component>.ts exporting `register(program)`). A group that cannot be loaded (a
 * missing dependency, a broken build) fails the whole command loudly: it is never dropped
 * from the tree in silence.
 */
import { Command, Help, type Option } from 'commander';
import { FractosError, withoutCode } from '../libfractos/errors.js';
import { register as registerCore } from './core.js';

/** Subcommand groups loaded after the core ones, as module specifiers relative to cli/. */
export const GROUPS = ['./bench.js', './storage.js', './gpu.js', './rm.js', './demo.js', './mount.js', './cluster.js', './dashboard.js', './names.js'] as const;

/** Loads a module (default: dynamic `import`); tests pass one that fails. */
export type Importer = (specifier: string) => Promise<unknown>;

/**
 * The `fractos` program with every group registered.
 * @throws FractosError ENODEV `cannot load the fractos commands of ./X.js: <cause>` (the
 *   original error as `cause`) when a group's module or one of its imports fails to load
 *   (ERR_MODULE_NOT_FOUND included); EINVAL when a module has no `register` function.
 */
export async function buildProgram(importer: Importer = (s) => import(s)): Promise<Command> {
  const program = new Command();
  program.name('fractos').description('FractOS-TS: capability-based userspace storage and accelerator stack').showHelpAfterError();
  // `--help` marks options that must be given (commander's requiredOption); subcommands
  // inherit this setting.
  program.configureHelp({
    optionDescription(this: Help, option: Option): string {
      const d = Help.prototype.optionDescription.call(this, option);
      return option.mandatory ? `${d} (required)` : d;
    },
  });
  registerCore(program);
  for (const spec of GROUPS) {
    let m: { register?: unknown };
    try {
      m = (await importer(spec)) as { register?: unknown };
    } catch (err) {
      const e = err as { code?: string; message?: string };
      const why = e.code ? `${e.code}: ${withoutCode(e.code, e.message ?? '')}` : (e.message ?? String(err));
      throw Object.assign(new FractosError('ENODEV', `cannot load the fractos commands of ${spec}: ${why}`), { cause: err });
    }
    if (typeof m.register !== 'function') throw new FractosError('EINVAL', `${spec} exports no register(program)`);
    (m.register as (p: Command) => void)(program);
  }
  return program;
}

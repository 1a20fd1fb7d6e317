/**
 * `fractos` command line. Each component registers its subcommands from its own file
 * (cli/<component>.ts exporting `register(program)`).
 */
import { Command } from 'commander';
import { register as registerCore } from './core.js';

const program = new Command();
program.name('fractos').description('FractOS-TS: capability-based userspace storage and accelerator stack').showHelpAfterError();
registerCore(program);
for (const mod of ['./bench.js', './storage.js', './gpu.js', './demo.js']) {
  try {
    const m = (await import(mod)) as { register: (p: Command) => void };
    m.register(program);
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_MODULE_NOT_FOUND') throw err;
  }
}
await program.parseAsync(process.argv);

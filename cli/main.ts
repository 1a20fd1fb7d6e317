/** `fractos` entry (bin/fractos.js imports the compiled file): build the command tree, run it. */
import { buildProgram } from './commands.js';
import { die, guardStdout } from './log.js';
import { watchParent } from './parent.js';

guardStdout();
watchParent();

let program;
try {
  program = await buildProgram();
} catch (err) {
  die(err);
}
await program.parseAsync(process.argv);

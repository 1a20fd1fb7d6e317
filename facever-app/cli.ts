/** `fractos facever enroll|serve|bench`. */
import type { Command } from 'commander';

export function registerFacever(program: Command): void {
  program.command('facever').description('face verification (enroll, serve, bench)');
}

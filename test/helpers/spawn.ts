/**
 * Test-side name of the process-spawning helpers (they live in testbed/spawn.ts). Loading
 * it makes a worker that ava stops with SIGTERM still remove its tempDirs and kill its
 * children (testbed/scratch.ts sweepOnTermination).
 */
import { sweepOnTermination } from '../../testbed/scratch.js';

export * from '../../testbed/spawn.js';

sweepOnTermination();

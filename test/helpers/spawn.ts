/** Test-side name of the process-spawning helpers (they live in testbed/spawn.ts). */
export * from '../../testbed/spawn.js';

/** Test-side name of the process-spawning helpers (they live in cli/spawn.ts). */
export * from '../../cli/spawn.js';

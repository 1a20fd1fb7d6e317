/**
 * The semantics tests of test/core.test.ts again with Processes on their unix socket only
 * (FRACTOS_QUEUE=0: no queue pair), so both transports of a local Process stay covered;
 * core.test.ts itself runs on queue pairs (the default when the queue addon loads).
 */
process.env.FRACTOS_QUEUE = '0';
await import('./core.test.js');

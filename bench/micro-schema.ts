/** Request schemas of the microbenchmarks. */
import { defineRequest } from '../libfractos/schema.js';

/** Echo: invoke onSuccess at once. `pad` carries the immediate payload under test. */
export const BenchEcho = defineRequest('bench.echo', { pad: { bytes: 4096 } }, ['onSuccess', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8'] as const);
/** Hold: keep every delegated cap, then invoke onSuccess. */
export const BenchHold = defineRequest('bench.hold', {}, ['onSuccess', 'cap'] as const);

#!/usr/bin/env node
// Prints the sources of the fractos_controller addon for controller/binding.gyp: every
// src/*.cc, except src/host_test_core.cc (a minimal core for the host's own tests) when the
// real core (src/core.cc) is present.
import { readdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const src = join(dirname(fileURLToPath(import.meta.url)), 'src');
const real = existsSync(join(src, 'core.cc'));
const files = readdirSync(src).filter((f) => f.endsWith('.cc') && !(real && f === 'host_test_core.cc')).sort();
process.stdout.write(files.map((f) => `src/${f}`).join('\n') + '\n');

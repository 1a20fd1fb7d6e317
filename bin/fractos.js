#!/usr/bin/env node
// Entry point: the compiled CLI lives in dist/ (run `npm run build` first). Only a missing
// dist/cli/main.js means "not built"; any other load error (a missing dependency) propagates.
import { existsSync } from 'node:fs';

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  console.error('fractos: not built yet; run `npm run build` first');
  process.exit(1);
}
await import(main.href);

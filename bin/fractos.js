#!/usr/bin/env node
// Entry point: the compiled CLI lives in dist/ (run `npm run build` first).
import('../dist/cli/main.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND') {
    console.error('fractos: not built yet; run `npm run build` first');
    process.exit(1);
  }
  throw err;
});

#!/usr/bin/env bash
# The native Controller and the io_uring addon (with the blockdev's native I/O loop) built
# with AddressSanitizer and UBSan (no recovery: a report fails the run) run the Controller's
# tests and the native loop's (issue #8). The normal builds are left alone: the
# sanitized addon goes to .sanitize/ and is loaded through FRACTOS_NATIVE_DIR.
# Usage: .ci/sanitize.sh [ava test files...] (default: the Controller's tests);
# SKIP_BUILD=1 reuses the last sanitized build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_BUILD:-}" = 1 ] || node native/build.mjs --sanitize controller uring
npx tsc -p tsconfig.json
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
if [ $# -gt 0 ]; then files=("$@"); else
  files=(dist/test/controller-host.test.js dist/test/core.test.js dist/test/multi.test.js dist/test/names-store.test.js dist/test/remote-copy.test.js dist/test/blockdev-native.test.js)
  for f in dist/test/field-core-*.test.js dist/test/field-hostile-*.test.js; do files+=("$f"); done
fi
# Node itself leaks by design at exit: leak checks off; anything else aborts the worker.
# --serial: a sanitized node starts slowly, and tests that spawnSync one (the CLI) block
# their worker's JS thread meanwhile, which starves timers of concurrent tests.
FRACTOS_NATIVE_DIR="$PWD/.sanitize" \
  LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  npx ava --serial "${files[@]}"

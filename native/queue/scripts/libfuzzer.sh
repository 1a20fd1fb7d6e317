#!/usr/bin/env bash
# Build and run the queue decoder's libFuzzer target (src/ring_fuzz.cc) for SECONDS (default 60).
# Needs clang with libFuzzer (Debian: apt-get install clang). Not run in CI: CI runs the seeded
# random driver of the same target (`ring_test fuzz`, test/queue-ring.test.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
cxx="${CLANG:-clang++}"
command -v "$cxx" >/dev/null || { echo "libfuzzer.sh: $cxx not found (apt-get install clang)" >&2; exit 2; }
mkdir -p build/fuzz/corpus
"$cxx" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all src/ring_fuzz.cc -o build/fuzz/ring_fuzz
exec build/fuzz/ring_fuzz -max_total_time="$secs" -max_len=8192 build/fuzz/corpus 2>&1

// libFuzzer entry point of the queue decoder's fuzz target (ring_fuzz.h). Built by
// native/queue/scripts/libfuzzer.sh with clang -fsanitize=fuzzer,address,undefined.
#include "ring_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fractos::queue::fuzz_one(data, size);
}

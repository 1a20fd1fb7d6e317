// The queue decoder's fuzz target (docs/queues.md, "Tests"): one input drives a consumer and
// a producer over a ring whose shared words and bytes come from the input, as a hostile peer
// would write them. Used by the seeded random driver (ring_test.cc `fuzz`) and by libFuzzer
// (ring_fuzz.cc, scripts/libfuzzer.sh). Any out-of-bounds access is reported by ASan; the
// invariants below abort.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ring.h"

namespace fractos::queue {

/** What the fuzz runs reached (the seeded driver prints it: a fuzzer that only ever hits EPROTO at once tests little). */
struct FuzzStats {
  uint64_t entries = 0, eproto = 0, empty = 0, producer_eproto = 0;
};
inline FuzzStats& fuzz_stats() {
  static FuzzStats s;
  return s;
}

inline void fuzz_check(bool ok) {
  if (!ok) std::abort();
}

/**
 * input: [u8 mode][u64 head][u64 tail][ring bytes...]. mode bit 0: start from a valid stream
 * of entries (u16 lengths from the input, until one whose high byte has bit 7 set) and then
 * overwrite bytes from the input (triples u16 offset, byte: torn, mutated entries), bit 1:
 * then publish the input's tail; otherwise the ring is the raw input and bits 2, 3 keep the
 * head and tail whole (else masked to plausible values). The consumer pops until empty or
 * EPROTO; then a producer faces a hostile head (bit 4: a plausible one).
 */
inline int fuzz_one(const uint8_t* in, size_t n) {
  constexpr uint32_t RB = MIN_RING_BYTES;
  std::vector<uint64_t> mem(pair_bytes(RB) / 8, 0);
  auto* base = reinterpret_cast<uint8_t*>(mem.data());
  init_pair(base, RB);
  RingCtl ctl = RingCtl::at(base, RING_REQUEST, RB);
  if (n < 17) return 0;
  uint8_t mode = in[0];
  uint64_t head, tail;
  std::memcpy(&head, in + 1, 8);
  std::memcpy(&tail, in + 9, 8);
  in += 17;
  n -= 17;
  if (mode & 1) {
    // A well-formed stream first (lengths from the input), then mutations.
    Producer p(ctl, default_max_entry(RB), -1);
    size_t i = 0;
    uint8_t payload[RB];
    std::memset(payload, 0xab, sizeof payload);
    while (i + 2 <= n) {
      uint32_t len = (uint32_t(in[i]) | uint32_t(in[i + 1]) << 8) % (default_max_entry(RB) + 1);
      i += 2;
      if (p.push(payload, len) != 0) break;
      if (in[i - 1] & 0x80) break;
    }
    p.publish();
    // mutations: pairs (offset u16, byte)
    for (; i + 3 <= n; i += 3) {
      uint32_t off = (uint32_t(in[i]) | uint32_t(in[i + 1]) << 8) % RB;
      ctl.data[off] = in[i + 2];
    }
    if (mode & 2) ctl.tail->store(tail, std::memory_order_relaxed);
  } else {
    std::memcpy(ctl.data, in, n < RB ? n : RB);
    ctl.head->store(head & (mode & 4 ? ~uint64_t(0) : 0x1ff8), std::memory_order_relaxed);
    ctl.tail->store(tail & (mode & 8 ? ~uint64_t(0) : 0x3ff8), std::memory_order_relaxed);
  }
  Consumer c(ctl, default_max_entry(RB), -1);
  std::vector<uint8_t> out(RB);
  uint64_t consumed = 0;
  for (int k = 0; k < int(RB / 8) + 2; k++) {
    uint32_t len = 0;
    int r = c.pop(out.data(), uint32_t(out.size()), &len);
    if (r < 0) {
      fuzz_check(r == -EPROTO && c.pop(out.data(), uint32_t(out.size()), &len) == -EPROTO);
      fuzz_stats().eproto++;
      break;
    }
    if (r == 0) {
      fuzz_stats().empty++;
      break;
    }
    fuzz_stats().entries++;
    fuzz_check(len <= default_max_entry(RB));
    consumed += ENTRY_HEADER + pad8(len);
    fuzz_check(consumed <= uint64_t(RB) * 2);
  }
  c.commit();
  // A hostile head seen by a producer: never writes outside, EPROTO or EAGAIN or ok.
  RingCtl ctl2 = RingCtl::at(base, RING_COMPLETION, RB);
  Producer p2(ctl2, default_max_entry(RB), -1);
  ctl2.head->store(mode & 16 ? (head & 0x1ff8) : head, std::memory_order_relaxed);
  uint8_t small[64] = {};
  for (int k = 0; k < 200; k++) {
    int r = p2.push(small, uint32_t(k % 64));
    fuzz_check(r == 0 || r == -EAGAIN || r == -EPROTO);
    if (r == -EPROTO) {
      fuzz_stats().producer_eproto++;
      break;
    }
  }
  return 0;
}

}  // namespace fractos::queue

// The frames a native I/O loop behind a frame hook (frame_hook.h) builds and reads on a
// Process's channel, shared by the blockdev's io_uring loop (native/uring/src/ioloop.cc) and
// the mount's native DAX path (native/fuse/fuse.cc): the wire constants of docs/protocol.md
// (libfractos/protocol.ts Op, HEADER_BYTES), little-endian loads and stores, the frame header,
// and the two credit frames a loop sends at the end of a batch (CAP_DROP_MANY, DELIVER_ACK).
// An include guard, not #pragma once (see frame_hook.h).
#ifndef FRACTOS_INCLUDE_HOOK_FRAMES_H
#define FRACTOS_INCLUDE_HOOK_FRAMES_H

#include <cstdint>
#include <cstring>
#include <vector>

namespace fractos::hookframes {

constexpr uint16_t OP_REPLY = 0x7f;
constexpr uint16_t OP_DELIVER = 0x80;
/** REQUEST_INVOKE_QUIET: as REQUEST_INVOKE, but its success REPLY does not wake the invoker by itself. */
constexpr uint16_t OP_REQUEST_INVOKE_QUIET = 0x23;
constexpr uint16_t OP_DELIVER_ACK = 0x60;
constexpr uint16_t OP_CAP_DROP_MANY = 0x61;
/** Bytes of a frame header: u32 length, u16 op, u16 flags, u32 seq, u16 code, u16 0. */
constexpr uint32_t HEADER = 16;
/** Seqs of a loop's own calls: the top bit set (libfractos/calls.ts keeps JS's below it). */
constexpr uint32_t SEQ_NATIVE = 0x80000000u;

inline uint16_t ld16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
inline uint32_t ld32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t ld64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
inline void st16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline void st32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void st64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }

/** Write a frame header of `len` bytes (the whole frame) at `f`: flags 0, code 0. */
inline void header(uint8_t* f, uint32_t len, uint16_t op, uint32_t seq) {
  st32(f, len);
  st16(f + 4, op);
  st16(f + 6, 0);
  st32(f + 8, seq);
  st32(f + 12, 0);
}

/** `n` more bytes at the end of `out`; returns where they start. */
inline uint8_t* grow(std::vector<uint8_t>& out, size_t n) {
  size_t at = out.size();
  out.resize(at + n);
  return out.data() + at;
}

/** Append CAP_DROP_MANY of `drops` (u32 cids) to `out` when there are any, and clear `drops`. */
inline void appendDropMany(std::vector<uint8_t>& out, std::vector<uint32_t>& drops) {
  if (drops.empty()) return;
  uint32_t bytes = HEADER + 4 * uint32_t(drops.size());
  uint8_t* p = grow(out, bytes);
  header(p, bytes, OP_CAP_DROP_MANY, 0);
  for (size_t i = 0; i < drops.size(); i++) st32(p + HEADER + 4 * i, drops[i]);
  drops.clear();
}

/** Append DELIVER_ACK of `acks` deliveries to `out` when there are any, and zero `acks`. */
inline void appendDeliverAck(std::vector<uint8_t>& out, uint32_t& acks) {
  if (!acks) return;
  uint8_t* p = grow(out, HEADER + 4);
  header(p, HEADER + 4, OP_DELIVER_ACK, 0);
  st32(p + HEADER, acks);
  acks = 0;
}

}  // namespace fractos::hookframes

#endif  // FRACTOS_INCLUDE_HOOK_FRAMES_H

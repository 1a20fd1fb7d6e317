// Splitting a byte stream into whole frames in C++ (docs/protocol.md "Framing": a 16-byte
// header whose u32 length is in [16, maxFrameBytes], reserved bytes 6..7 and 14..15 zero),
// for the client addon: the socket (sock.cc) and, later, the rings feed one splitter each,
// and JS is called once per batch of whole frames, never per byte or per entry.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "fd_stream.h"
#include "frame_hook.h"

namespace fractos::queue {

constexpr uint32_t FRAME_HEADER = 16;

/** Whole frames collected for one JS call: bytes back to back, fds as (frame offset, fd). */
struct FrameBatch {
  std::vector<uint8_t>* bytes = nullptr;  // allocated lazily; handed to JS (which frees it)
  std::vector<std::pair<uint32_t, int>> fds;
  uint32_t frames = 0;
  /** Frames taken by the native hook (frame_hook.h) in this batch: its `flush` is due. */
  uint32_t hooked = 0;
  size_t size() const { return bytes ? bytes->size() : 0; }
  void clear() {
    bytes = nullptr;
    fds.clear();
    frames = 0;
    hooked = 0;
  }
};

/** One input stream; frames that complete move to a FrameBatch. */
class FrameSplitter {
 public:
  explicit FrameSplitter(uint32_t maxFrameBytes) : max_(maxFrameBytes) {}

  /** Room for the next read: the rest of the current frame when its length is known (at least 64 KiB). */
  uint8_t* space(size_t* room) {
    size_t want = 64 * 1024;
    if (len_ >= 4) {
      uint32_t n;
      std::memcpy(&n, buf_.data(), 4);
      if (n >= FRAME_HEADER && n <= max_ && n > want) want = n;
    }
    if (buf_.size() < want) buf_.resize(want);
    if (buf_.size() - len_ < 4096 && len_ < want) buf_.resize(len_ + 64 * 1024);
    *room = buf_.size() - len_;
    return buf_.data() + len_;
  }

  /** Append bytes (a ring entry's payload). */
  void append(const uint8_t* p, size_t n) {
    if (buf_.size() - len_ < n) buf_.resize(len_ + n);
    std::memcpy(buf_.data() + len_, p, n);
    len_ += n;
    pos_ += n;
  }

  /**
   * `n` bytes were written at space(): take them, then move every whole frame to `out`
   * (with the fds `rx` holds for it, when given). @return 0, or -EPROTO (bad length or
   * reserved field; nothing after the bad frame is taken).
   */
  int commit(size_t n, FrameBatch& out, fdstream::RxFds* rx) {
    len_ += n;
    pos_ += n;
    return split(out, rx);
  }

  int split(FrameBatch& out, fdstream::RxFds* rx) {
    size_t off = 0;
    const uint64_t base = pos_ - len_;
    int err = 0;
    while (len_ - off >= FRAME_HEADER) {
      const uint8_t* h = buf_.data() + off;
      uint32_t n;
      uint16_t r1, r2;
      std::memcpy(&n, h, 4);
      std::memcpy(&r1, h + 6, 2);
      std::memcpy(&r2, h + 14, 2);
      if (n < FRAME_HEADER || n > max_ || r1 != 0 || r2 != 0) {
        err = -EPROTO;
        break;
      }
      if (len_ - off < n) break;
      // A native I/O loop (frame_hook.h) may take the frame before JS sees it; never one
      // that came with fds.
      if (hook_ && !(rx && rx->n && rx->q[0].end > base + off && rx->q[0].end <= base + off + n) &&
          hook_->on_frame(hook_->ctx, h, n) == 1) {
        out.hooked++;
        off += n;
        continue;
      }
      if (!out.bytes) out.bytes = new std::vector<uint8_t>();
      uint32_t at = uint32_t(out.bytes->size());
      out.bytes->insert(out.bytes->end(), h, h + n);
      out.frames++;
      if (rx && rx->n) {
        for (int fd; (fd = rx->take(base + off, base + off + n)) >= 0;) out.fds.emplace_back(at, fd);
        rx->dropThrough(base + off + n);
      }
      off += n;
    }
    if (off) {
      std::memmove(buf_.data(), buf_.data() + off, len_ - off);
      len_ -= off;
    }
    if (len_ == 0 && buf_.size() > 256 * 1024) {
      buf_.resize(64 * 1024);
      buf_.shrink_to_fit();
    }
    if (!err && len_ >= 4) {  // a bad length is refused before a buffer grows for it
      uint32_t n;
      std::memcpy(&n, buf_.data(), 4);
      if (n < FRAME_HEADER || n > max_) err = -EPROTO;
    }
    return err;
  }

  /** Offer every later whole frame to `hook` first (frame_hook.h); nullptr: none. */
  void setHook(const fractos_frame_hook* hook) { hook_ = hook; }

  /** Bytes that entered the stream so far (the position tags of received fds). */
  uint64_t pos() const { return pos_; }
  /** Bytes of a partial frame held. */
  size_t pending() const { return len_; }

 private:
  uint32_t max_;
  const fractos_frame_hook* hook_ = nullptr;
  std::vector<uint8_t> buf_;
  size_t len_ = 0;
  uint64_t pos_ = 0;
};

}  // namespace fractos::queue

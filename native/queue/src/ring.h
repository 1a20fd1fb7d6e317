// Single-producer / single-consumer rings of variable-length entries in a shared mapping,
// two per queue pair (docs/queues.md). Header-only: used by the queue addon, the ping-pong
// benchmark, the tests and (next) the C++ Controller.
//
// Layout of a queue pair (one memfd, PAIR_HEADER_BYTES + 2 * ring_bytes bytes):
//   [0, 64)            PairHeader: magic, version, ring_bytes (informational only: each side
//                      takes the geometry from its own configuration and the file size)
//   ring r (0: requests, Process -> Controller; 1: completions/deliveries, Controller -> Process)
//     producer line at 128 * (1 + 2r): u64 tail, u32 prod_wait (producer sleeps for space)
//     consumer line at 128 * (2 + 2r): u64 head, u32 cons_wait (consumer sleeps for entries)
//     data at PAIR_HEADER_BYTES + r * ring_bytes, ring_bytes (a power of two) bytes
//   Lines are 128 bytes apart (two cache lines: the adjacent-line prefetcher pairs lines).
//
// Indices are u64 byte positions that only grow (offset = pos & (ring_bytes - 1)); the
// consumer's head is the acknowledgement: the producer's free space is ring_bytes - (tail - head).
//
// Entry: u32 len, u32 kind, then len bytes, padded to 8. kind DATA (1) or WRAP (2, len 0: the
// rest of the ring up to its end is padding; the next entry starts at offset 0). An entry never
// crosses the end of the ring.
//
// Hostile peer rules (each side maps the whole pair writable, so the other side can write any
// byte at any time): a side keeps its own index privately and only ever stores it; every index,
// header and length it reads is validated before use; an invalid one is EPROTO and sticky (the
// trusted side drops the channel). A payload is copied out of the mapping after its header was
// validated (one read of the header; the copy is bounded by the validated length), so that
// what the caller decodes cannot change under it (TOCTOU). No loop depends on shared values.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sys/uio.h>

#include "wake.h"

namespace fractos::queue {

constexpr uint32_t PAIR_MAGIC = 0x31305146;  // "FQ01"
constexpr uint32_t PAIR_VERSION = 1;
constexpr size_t PAIR_HEADER_BYTES = 4096;
constexpr size_t CTL_LINE = 128;
constexpr uint32_t MIN_RING_BYTES = 4096;
constexpr uint32_t MAX_RING_BYTES = 1u << 26;  // 64 MiB per ring
constexpr uint32_t ENTRY_HEADER = 8;
constexpr uint32_t KIND_DATA = 1;
constexpr uint32_t KIND_WRAP = 2;
enum Ring : int { RING_REQUEST = 0, RING_COMPLETION = 1 };

constexpr size_t producer_line(int r) { return CTL_LINE * (1 + 2 * size_t(r)); }
constexpr size_t consumer_line(int r) { return CTL_LINE * (2 + 2 * size_t(r)); }
constexpr size_t ring_data(int r, uint32_t ring_bytes) { return PAIR_HEADER_BYTES + size_t(r) * ring_bytes; }
constexpr size_t pair_bytes(uint32_t ring_bytes) { return PAIR_HEADER_BYTES + 2 * size_t(ring_bytes); }
constexpr uint32_t pad8(uint32_t n) { return (n + 7u) & ~7u; }
/** Largest payload an entry may carry by default: a quarter of the ring. */
constexpr uint32_t default_max_entry(uint32_t ring_bytes) { return ring_bytes / 4 - ENTRY_HEADER; }
constexpr bool valid_ring_bytes(uint64_t n) {
  return n >= MIN_RING_BYTES && n <= MAX_RING_BYTES && (n & (n - 1)) == 0;
}

struct PairHeader {
  uint32_t magic, version, ring_bytes, reserved;
};

/** Views of one ring's control words inside a mapping. */
struct RingCtl {
  std::atomic<uint64_t>* tail;
  std::atomic<uint32_t>* prod_wait;
  std::atomic<uint64_t>* head;
  std::atomic<uint32_t>* cons_wait;
  uint8_t* data;
  uint32_t size;

  static RingCtl at(uint8_t* base, int r, uint32_t ring_bytes) {
    static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);
    uint8_t* p = base + producer_line(r);
    uint8_t* c = base + consumer_line(r);
    return RingCtl{reinterpret_cast<std::atomic<uint64_t>*>(p), reinterpret_cast<std::atomic<uint32_t>*>(p + 8),
                   reinterpret_cast<std::atomic<uint64_t>*>(c), reinterpret_cast<std::atomic<uint32_t>*>(c + 8),
                   base + ring_data(r, ring_bytes), ring_bytes};
  }
};

/** Initialise a fresh pair mapping (all zero but the header). Creator side only. */
inline void init_pair(uint8_t* base, uint32_t ring_bytes) {
  std::memset(base, 0, PAIR_HEADER_BYTES);
  auto* h = reinterpret_cast<PairHeader*>(base);
  h->magic = PAIR_MAGIC;
  h->version = PAIR_VERSION;
  h->ring_bytes = ring_bytes;
}

/** A position is sane relative to another: 8-aligned, at or after `lo`, at most `size` beyond it. */
inline bool pos_ok(uint64_t pos, uint64_t lo, uint32_t size) { return (pos & 7u) == 0 && pos - lo <= size; }

/** One 8-byte entry header, read once from shared memory. */
inline void read_header(const uint8_t* p, uint32_t* len, uint32_t* kind) {
  uint64_t v = reinterpret_cast<const std::atomic<uint64_t>*>(p)->load(std::memory_order_relaxed);
  *len = uint32_t(v);
  *kind = uint32_t(v >> 32);
}
inline void write_header(uint8_t* p, uint32_t len, uint32_t kind) {
  reinterpret_cast<std::atomic<uint64_t>*>(p)->store(uint64_t(len) | (uint64_t(kind) << 32), std::memory_order_relaxed);
}

/**
 * Consumer of one ring. Errors (negative errno): EPROTO for anything the producer wrote that
 * breaks the rules (sticky: every later call returns it too).
 */
class Consumer {
 public:
  Consumer() = default;
  /** `max_entry`: largest payload accepted (bytes); bigger is EPROTO. */
  Consumer(RingCtl ctl, uint32_t max_entry, int bell_efd)
      : c_(ctl), max_entry_(max_entry), bell_{ctl.cons_wait, bell_efd}, peer_{ctl.prod_wait, -1} {
    // Start from the indices as found (a fresh pair: 0, 0), validated like any later read.
    head_ = c_.head->load(std::memory_order_acquire);
    tail_ = c_.tail->load(std::memory_order_acquire);
    if ((head_ & 7u) || !pos_ok(tail_, head_, c_.size)) err_ = -EPROTO;
    committed_ = head_;
  }
  /** The doorbell (eventfd) of the producer, rung when it waits for space; -1: futex. */
  void set_peer_efd(int efd) { peer_.efd = efd; }

  /**
   * Copy the next entry into `dst` (capacity `cap` >= max_entry) and consume it privately
   * (publish with commit()). @return 1 with *len set, 0 when empty, -EPROTO.
   */
  int pop(uint8_t* dst, uint32_t cap, uint32_t* len) {
    if (err_) return err_;
    for (int hop = 0; hop < 2; hop++) {  // at most one WRAP before a DATA entry
      if (tail_ == head_) {
        uint64_t t = c_.tail->load(std::memory_order_acquire);
        if (!pos_ok(t, head_, c_.size)) return fail();
        tail_ = t;
        if (t == head_) return 0;
      }
      uint64_t avail = tail_ - head_;  // 8..size, a multiple of 8
      uint32_t off = uint32_t(head_ & (c_.size - 1));
      uint32_t n, kind;
      read_header(c_.data + off, &n, &kind);
      if (kind == KIND_WRAP) {
        uint32_t skip = c_.size - off;
        if (n != 0 || off == 0 || hop != 0 || skip > avail) return fail();
        head_ += skip;
        continue;
      }
      if (kind != KIND_DATA || n > max_entry_ || n > cap) return fail();
      uint64_t need = uint64_t(ENTRY_HEADER) + pad8(n);
      if (need > avail || off + need > c_.size) return fail();
      std::memcpy(dst, c_.data + off + ENTRY_HEADER, n);
      head_ += need;
      *len = n;
      return 1;
    }
    return fail();
  }

  /** True when the producer published something not yet consumed (unvalidated peek). */
  bool readable() const {
    return err_ != 0 || tail_ != head_ || c_.tail->load(std::memory_order_acquire) != head_;
  }

  /** Publish the head (the acknowledgement) and wake the producer if it waits for space. */
  void commit() {
    if (committed_ == head_) return;
    c_.head->store(head_, std::memory_order_release);
    committed_ = head_;
    peer_.notify();
  }

  /** Block (policy) until readable or the deadline (abs ns, 0 none). 0, -ETIMEDOUT. */
  int wait(const WakePolicy& p, uint64_t deadline_ns = 0) {
    return wait_until([this] { return readable(); }, bell_, p, deadline_ns);
  }
  /** Announce sleep for an event-loop waiter; returns true if entries arrived meanwhile (then awake). */
  bool arm(bool all = false) {
    bell_.announce(all ? WAKE_SLEEPING_ALL : WAKE_SLEEPING);
    if (readable()) {
      bell_.awake();
      return true;
    }
    return false;
  }
  void disarm() { bell_.awake(); }

  int error() const { return err_; }
  uint64_t head() const { return head_; }
  uint32_t max_entry() const { return max_entry_; }

 private:
  int fail() { return err_ = -EPROTO; }
  RingCtl c_{};
  uint32_t max_entry_ = 0;
  uint64_t head_ = 0, tail_ = 0, committed_ = 0;
  int err_ = 0;
  Doorbell bell_, peer_;
};

/**
 * Producer of one ring. Errors: EMSGSIZE (entry larger than max_entry: the caller's mistake,
 * not sticky), EAGAIN (full: retry after the consumer acknowledges), EPROTO (the consumer's
 * head is invalid: sticky).
 */
class Producer {
 public:
  Producer() = default;
  Producer(RingCtl ctl, uint32_t max_entry, int bell_efd)
      : c_(ctl), max_entry_(max_entry), bell_{ctl.prod_wait, bell_efd}, peer_{ctl.cons_wait, -1} {
    tail_ = c_.tail->load(std::memory_order_acquire);
    head_ = c_.head->load(std::memory_order_acquire);
    if ((head_ & 7u) || !pos_ok(tail_, head_, c_.size)) err_ = -EPROTO;
    published_ = tail_;
  }
  /** The doorbell (eventfd) of the consumer; -1: futex on its wake word. */
  void set_peer_efd(int efd) { peer_.efd = efd; }

  /** Bytes an entry of `n` payload bytes takes at the current tail, wrap padding included. */
  uint64_t cost(uint32_t n) const {
    uint64_t need = uint64_t(ENTRY_HEADER) + pad8(n);
    uint32_t off = uint32_t(tail_ & (c_.size - 1));
    uint32_t rem = c_.size - off;
    return need <= rem ? need : rem + need;
  }

  /** Re-read the consumer's head (the acknowledgement). 0 or -EPROTO. */
  int refresh() {
    if (err_) return err_;
    uint64_t h = c_.head->load(std::memory_order_acquire);
    // The consumer may only move forward, up to what we wrote.
    if ((h & 7u) || h < head_ || h > tail_) return err_ = -EPROTO;
    head_ = h;
    return 0;
  }

  /** Write one entry (not yet visible: publish()). 0, -EAGAIN, -EMSGSIZE, -EPROTO. */
  int push(const void* src, uint32_t n) {
    iovec v{const_cast<void*>(src), n};
    return push_gather(&v, 1, 0, n);
  }

  /**
   * push() of the n bytes that follow the first `skip` bytes of iov[0, iovcnt) (a gather:
   * no contiguous copy of a frame first). Same results as push().
   */
  int push_gather(const iovec* iov, int iovcnt, size_t skip, uint32_t n) {
    if (err_) return err_;
    if (n > max_entry_) return -EMSGSIZE;
    uint64_t total = cost(n);
    if (c_.size - (tail_ - head_) < total) {
      if (int e = refresh()) return e;
      if (c_.size - (tail_ - head_) < total) return -EAGAIN;
    }
    uint32_t off = uint32_t(tail_ & (c_.size - 1));
    uint64_t need = uint64_t(ENTRY_HEADER) + pad8(n);
    if (need > c_.size - off) {
      write_header(c_.data + off, 0, KIND_WRAP);
      tail_ += c_.size - off;
      off = 0;
    }
    uint8_t* dst = c_.data + off + ENTRY_HEADER;
    uint32_t left = n;
    for (int i = 0; i < iovcnt && left; i++) {
      size_t len = iov[i].iov_len;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      size_t k = len - skip < left ? len - skip : left;
      std::memcpy(dst, static_cast<const uint8_t*>(iov[i].iov_base) + skip, k);
      dst += k;
      left -= uint32_t(k);
      skip = 0;
    }
    write_header(c_.data + off, n - left, KIND_DATA);  // left is 0 unless iov was shorter
    tail_ += uint64_t(ENTRY_HEADER) + pad8(n - left);
    return 0;
  }

  /**
   * Event-loop waiter for space: announce sleep on the producer word (the consumer's commit
   * rings our doorbell) and re-check. @return true when an entry of n bytes fits now (then
   * awake again: no wake-up will come).
   */
  bool arm_space(uint32_t n) {
    bell_.announce();
    if (fits(n)) {
      bell_.awake();
      return true;
    }
    return false;
  }
  void disarm_space() { bell_.awake(); }

  /** Make written entries visible (release) and wake the consumer iff it announced sleep. */
  void publish() {
    if (published_ == tail_) return;
    c_.tail->store(tail_, std::memory_order_release);
    published_ = tail_;
    peer_.notify();
  }

  /**
   * Make written entries visible; wake the consumer only if it sleeps for every entry
   * (WAKE_SLEEPING_ALL), not for ordinary sleep: for entries nobody waits for
   * (acknowledgements; docs/queues.md "No wake-up for nothing"). They are read with the
   * next woken batch.
   */
  void publish_quiet() {
    if (published_ == tail_) return;
    c_.tail->store(tail_, std::memory_order_release);
    published_ = tail_;
    peer_.notify(true);
  }

  /** Space check for waiting: true when an entry of n bytes fits (re-reads the head). */
  bool fits(uint32_t n) {
    if (c_.size - (tail_ - head_) >= cost(n)) return true;
    if (refresh()) return true;  // error: stop waiting, push reports it
    return c_.size - (tail_ - head_) >= cost(n);
  }

  /** Wait (policy) until an entry of n bytes fits; 0, -ETIMEDOUT, -EPROTO, -EMSGSIZE. */
  int wait_space(uint32_t n, const WakePolicy& p, uint64_t deadline_ns = 0) {
    if (n > max_entry_) return -EMSGSIZE;
    int r = wait_until([&] { return fits(n); }, bell_, p, deadline_ns);
    return err_ ? err_ : r;
  }

  /** Acknowledged position: everything written before it was consumed (validated). */
  uint64_t acked() {
    refresh();
    return head_;
  }
  uint64_t tail() const { return tail_; }
  int error() const { return err_; }
  uint32_t max_entry() const { return max_entry_; }

 private:
  RingCtl c_{};
  uint32_t max_entry_ = 0;
  uint64_t head_ = 0, tail_ = 0, published_ = 0;
  int err_ = 0;
  Doorbell bell_, peer_;
};

/** Which end of a pair a side is. */
enum Side : int { SIDE_PROCESS = 0, SIDE_CONTROLLER = 1 };

/**
 * Both rings of a pair from one side: the Process produces requests and consumes
 * completions; the Controller the reverse. `own_efd`: the eventfd this side sleeps on (-1:
 * futexes); `peer_efd`: the peer's (-1: futexes).
 */
struct Endpoint {
  Producer tx;
  Consumer rx;
  Endpoint() = default;
  Endpoint(uint8_t* base, uint32_t ring_bytes, Side side, uint32_t max_entry, int own_efd, int peer_efd) {
    int out = side == SIDE_PROCESS ? RING_REQUEST : RING_COMPLETION;
    int in = side == SIDE_PROCESS ? RING_COMPLETION : RING_REQUEST;
    tx = Producer(RingCtl::at(base, out, ring_bytes), max_entry, own_efd);
    rx = Consumer(RingCtl::at(base, in, ring_bytes), max_entry, own_efd);
    tx.set_peer_efd(peer_efd);
    rx.set_peer_efd(peer_efd);
  }
};

}  // namespace fractos::queue

// The host's spinner budget (docs/queues.md "Spinner budget"; issue #8: three pure spinners on
// two vCPUs collapsed to 8 ms per op: never more spinners than vCPUs minus one).
//
// One 4 KiB page in a sealed memfd that the Controller creates and passes to every Process it
// gives a queue pair (the 4th fd of the HELLO reply). The page holds `slots` words (vCPUs - 1
// by default); whoever spins (the Controller's loop, a poll-mode client, a native I/O loop
// with I/O in flight) first takes a slot with a compare-and-swap and gives it back when it
// stops, so that the spinners of all those processes together never exceed the slots.
//
// A slot is one u64: 0 when free, else (tag << 32) | deadline, where tag is the holder's pid
// (the Controller knows each Process's from SO_PEERCRED) and deadline the low 32 bits of
// CLOCK_MONOTONIC in microseconds at which the hold ends (compared modulo 2^32). A hold lasts
// at most MAX_HOLD_US; a spinner that spins longer renews it. Anyone may take a slot whose
// deadline has passed or lies more than MAX_HOLD_US ahead (garbage): a Process that dies or
// stops while holding one, or scribbles on the page, blocks it for at most MAX_HOLD_US.
//
// Hostile Processes (the page is writable by all of them): one can keep re-taking every
// slot, which only makes the others skip their spin (they sleep, as without a budget); the
// Controller never trusts the page for its own decisions beyond that: it ignores (and
// clears) slots held by tags that are not one of its live Processes or that hold more than
// one slot at once (`take`'s `ignore`), and its own spin is bounded by its own clock, never
// by a value in the page. Nothing loops on a shared value: each take visits each slot once.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wake.h"

namespace fractos::queue {

constexpr uint32_t BUDGET_MAGIC = 0x31425346;  // "FSB1"
constexpr size_t BUDGET_BYTES = 4096;
/** Slots start here, one per 64-byte line (takers of different slots do not share a line). */
constexpr size_t BUDGET_SLOT0 = 64;
constexpr size_t BUDGET_SLOT_STRIDE = 64;
constexpr uint32_t BUDGET_MAX_SLOTS = 32;
/** Longest single hold (µs); a later deadline reads as garbage (free). */
constexpr uint32_t MAX_HOLD_US = 1000;

inline uint32_t now_us32() { return uint32_t(now_ns() / 1000u); }

/** Slots for this host by default: online CPUs - 1 (0 on one CPU), at most BUDGET_MAX_SLOTS. */
inline uint32_t default_budget_slots() {
  long c = sysconf(_SC_NPROCESSORS_ONLN);
  if (c <= 1) return 0;
  return uint32_t(c - 1 > long(BUDGET_MAX_SLOTS) ? BUDGET_MAX_SLOTS : c - 1);
}

/** A view of the budget page (mapped by its owner). Not copyable state: just pointers. */
class SpinBudget {
 public:
  SpinBudget() = default;
  /** `base`: the mapped page; `slots` <= BUDGET_MAX_SLOTS (from configuration, never the page); `tag`: our pid. */
  /** `max_hold_us`: MAX_HOLD_US but in tests (every user of one page must use the same). */
  SpinBudget(uint8_t* base, uint32_t slots, uint32_t tag, uint32_t max_hold_us = MAX_HOLD_US)
      : base_(base), slots_(slots > BUDGET_MAX_SLOTS ? BUDGET_MAX_SLOTS : slots), tag_(tag), max_hold_(max_hold_us ? max_hold_us : 1) {}

  bool valid() const { return base_ != nullptr; }
  uint32_t slots() const { return slots_; }
  uint32_t tag() const { return tag_; }
  std::atomic<uint64_t>& slot(uint32_t i) const {
    return *reinterpret_cast<std::atomic<uint64_t>*>(base_ + BUDGET_SLOT0 + BUDGET_SLOT_STRIDE * i);
  }

  static uint32_t tag_of(uint64_t v) { return uint32_t(v >> 32); }
  /** Free for a taker at time `now`: empty, expired, or a deadline too far ahead (garbage). */
  bool stale(uint64_t v, uint32_t now) const {
    if (v == 0) return true;
    int32_t d = int32_t(uint32_t(v) - now);
    return d <= 0 || d > int32_t(max_hold_);
  }

  /**
   * Take a free slot for `hold_us` (clamped to [1, the max hold]). `ignore(tag)`: slots held by
   * such a tag count as free (the Controller's view). @return the slot's index, or -1 when all
   * are held. Visits each slot once.
   */
  template <class Ignore>
  int take(uint32_t hold_us, Ignore&& ignore) {
    if (!base_ || held_ >= 0) return held_;
    for (uint32_t i = 0; i < slots_; i++) {
      uint64_t v = slot(i).load(std::memory_order_acquire);
      // the clock after the load: a value written before it has a deadline <= now + MAX_HOLD_US,
      // so a live hold never reads as garbage however long we were preempted
      const uint32_t now = now_us32();
      if (!stale(v, now) && !(tag_of(v) != tag_ && ignore(tag_of(v)))) continue;
      uint64_t mine = make(now, hold_us);
      if (slot(i).compare_exchange_strong(v, mine, std::memory_order_acq_rel)) {
        held_ = int(i);
        value_ = mine;
        return held_;
      }
    }
    return -1;
  }
  int take(uint32_t hold_us) {
    return take(hold_us, [](uint32_t) { return false; });
  }

  /** Extend our hold to now + hold_us. False when the slot was taken from us (then we hold none). */
  bool renew(uint32_t hold_us) {
    if (held_ < 0) return false;
    uint64_t v = value_, mine = make(now_us32(), hold_us);
    if (slot(uint32_t(held_)).compare_exchange_strong(v, mine, std::memory_order_acq_rel)) {
      value_ = mine;
      return true;
    }
    held_ = -1;
    return false;
  }

  /** Give our slot back (unless someone reclaimed it meanwhile). */
  void release() {
    if (held_ < 0) return;
    uint64_t v = value_;
    slot(uint32_t(held_)).compare_exchange_strong(v, 0, std::memory_order_acq_rel);
    held_ = -1;
  }

  bool holding() const { return held_ >= 0; }
  /** Deadline (µs, mod 2^32) of our hold. */
  uint32_t deadline() const { return uint32_t(value_); }

  /** Slots held now (not stale), and of those by `tag`. */
  uint32_t busy(uint32_t now, uint32_t tag = 0, uint32_t* by_tag = nullptr) const {
    uint32_t n = 0, t = 0;
    for (uint32_t i = 0; i < slots_; i++) {
      uint64_t v = slot(i).load(std::memory_order_relaxed);
      if (stale(v, now)) continue;
      n++;
      if (tag && tag_of(v) == tag) t++;
    }
    if (by_tag) *by_tag = t;
    return n;
  }

  /** Clear every slot whose holder `drop(tag)` says must not hold one (the Controller's reclaim). @return how many. */
  template <class Drop>
  uint32_t reclaim(Drop&& drop) {
    // decide on one snapshot (drop may count a tag's slots), then clear what did not change
    uint64_t seen[BUDGET_MAX_SLOTS];
    bool clear[BUDGET_MAX_SLOTS];
    for (uint32_t i = 0; i < slots_; i++) seen[i] = slot(i).load(std::memory_order_acquire);
    const uint32_t now = now_us32();
    for (uint32_t i = 0; i < slots_; i++) {
      uint64_t v = seen[i];
      clear[i] = v != 0 && !(int(i) == held_ && v == value_) && (stale(v, now) || drop(tag_of(v)));
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < slots_; i++) {
      uint64_t v = seen[i];
      if (clear[i]) n += slot(i).compare_exchange_strong(v, 0, std::memory_order_acq_rel) ? 1 : 0;
    }
    return n;
  }

 private:
  uint64_t make(uint32_t now, uint32_t hold_us) const {
    if (hold_us == 0) hold_us = 1;
    if (hold_us > max_hold_) hold_us = max_hold_;
    uint32_t d = now + hold_us;
    if (d == 0 && tag_ == 0) d = 1;  // never the free value
    return (uint64_t(tag_) << 32) | d;
  }
  uint8_t* base_ = nullptr;
  uint32_t slots_ = 0;
  uint32_t tag_ = 0;
  uint32_t max_hold_ = MAX_HOLD_US;
  int held_ = -1;
  uint64_t value_ = 0;
};

/** Pure spinning (pause) at the start of a budget_spin; after it, each check yields the CPU first. */
constexpr uint64_t PURE_SPIN_NS = 4000;
/**
 * A gap this long between two checks means we were preempted or a yield gave the CPU to
 * someone else for a time slice: the CPU is contended, so budget_spin stops at once (spinning
 * on would only delay the sleep that lets the peer run; under CFS one sched_yield() to a busy
 * task can cost milliseconds).
 */
constexpr uint64_t CONTENDED_GAP_NS = 30'000;

/**
 * Wait for `ready()` up to `ns`: spin briefly, then yield (issue #8: spin briefly, yield, then
 * sleep; the caller sleeps after). The first PURE_SPIN_NS spin with `pause` while holding a
 * slot of `b`; after that, or without a slot (all held: each check tries to take one again),
 * every check follows a sched_yield(), so that a thread that shares this CPU (the peer we
 * wait for, on a loaded machine) runs first instead of waiting out our time slice; a gap
 * of CONTENDED_GAP_NS between two checks (we were preempted, or a yield ran someone else's
 * time slice) ends the spin, after one last check. Renews the hold before it ends; gives the slot back on return. With no budget page (`b` null or
 * invalid) the process-local budget of wake.h is used instead.
 * @return true when ready() became true.
 */
template <class Ready, class Ignore>
bool budget_spin(SpinBudget* b, Ready&& ready, uint64_t ns, Ignore&& ignore) {
  if (ready()) return true;
  if (ns == 0) return false;
  const uint64_t start = now_ns(), end = start + ns, pure = start + (ns < PURE_SPIN_NS ? ns : PURE_SPIN_NS);
  const uint32_t hold = uint32_t(ns / 1000u + 20u);
  if (!b || !b->valid()) {
    auto& n = spinners();
    bool got = false;
    if (n.fetch_add(1, std::memory_order_relaxed) < max_spinners()) {
      uint64_t t = start;
      for (unsigned i = 0;; i++) {
        if (ready()) {
          got = true;
          break;
        }
        if (t < pure) cpu_relax();
        else sched_yield();
        if (t >= pure || (i & 15) == 15) {
          uint64_t last = t;
          t = now_ns();
          if (t >= end || t - last > CONTENDED_GAP_NS) break;
        }
      }
    }
    n.fetch_sub(1, std::memory_order_relaxed);
    return got || ready();
  }
  bool got = false;
  b->take(hold, ignore);
  uint64_t t = start;
  for (unsigned i = 0;; i++) {
    if (ready()) {
      got = true;
      break;
    }
    if (b->holding() && t < pure) {
      cpu_relax();
      if ((i & 15) != 15) continue;
    } else {
      if (!b->holding()) b->take(hold, ignore);
      sched_yield();
    }
    uint64_t last = t;
    t = now_ns();
    if (t >= end || t - last > CONTENDED_GAP_NS) break;
    // renew 100 µs before the hold ends (a spin longer than the longest hold)
    if (b->holding() && int32_t(b->deadline() - uint32_t(t / 1000u)) < 100) b->renew(hold);
  }
  b->release();
  return got || ready();
}
template <class Ready>
bool budget_spin(SpinBudget* b, Ready&& ready, uint64_t ns) {
  return budget_spin(b, ready, ns, [](uint32_t) { return false; });
}

/** Create the budget page: a sealed memfd (no shrink, grow, or further seals) of BUDGET_BYTES. -errno. */
inline int create_budget_fd(uint32_t slots) {
  int fd = memfd_create("fractos-spin-budget", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -errno;
  if (ftruncate(fd, BUDGET_BYTES) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  uint32_t h[4] = {BUDGET_MAGIC, 1, slots, 0};
  if (pwrite(fd, h, sizeof h, 0) != ssize_t(sizeof h) || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    int e = errno ? errno : EIO;
    close(fd);
    return -e;
  }
  return fd;
}

/**
 * Map a budget page received from the peer: it must be a memfd sealed against shrinking and
 * growing, of exactly BUDGET_BYTES (else EPROTO, before any mapping). @return the mapping or
 * nullptr with *err = -errno. Unmap with munmap(p, BUDGET_BYTES).
 */
inline uint8_t* map_budget_fd(int fd, int* err) {
  int seals = fcntl(fd, F_GET_SEALS);
  struct stat st;
  if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW) || fstat(fd, &st) != 0 ||
      !S_ISREG(st.st_mode) || st.st_size != off_t(BUDGET_BYTES)) {
    *err = -EPROTO;
    return nullptr;
  }
  void* p = mmap(nullptr, BUDGET_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    *err = -errno;
    return nullptr;
  }
  *err = 0;
  return static_cast<uint8_t*>(p);
}

}  // namespace fractos::queue

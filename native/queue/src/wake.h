// Adaptive wake-ups for the shared-memory queues (docs/queues.md, "Wake-up policy").
//
// A waiter spins up to `spin_ns`, then calls sched_yield() `yields` times, then announces
// that it sleeps (its wake word := SLEEPING) and blocks on a futex on that word, or on an
// eventfd (its "doorbell"). A notifier (the peer, after publishing an index) makes a system
// call only when the waiter announced sleep: an awake peer costs no syscall.
//
// Memory ordering (the Dekker / store-buffer pattern):
//   waiter:   word.store(SLEEPING); fence(seq_cst); if (ready()) ... else block
//   notifier: index.store(v, release); fence(seq_cst); if (word == SLEEPING) wake
// With both seq_cst fences, at least one side sees the other's store: either the waiter sees
// the new index and does not block, or the notifier sees SLEEPING and wakes it. Without the
// fences both loads may be satisfied before the other side's store is visible (x86 store
// buffer) and the waiter sleeps forever. The notifier takes the word with exchange(AWAKE)
// so that one announcement is answered by exactly one wake.
//
// The word lives in shared memory and may be scribbled on by a hostile peer: the waiter
// never trusts it (it only ever blocks with a bounded timeout slice and re-checks its own
// condition), and a notifier that finds garbage treats it as AWAKE. A hostile waiter that
// keeps announcing sleep costs the notifier one futex_wake/eventfd write per publish, on
// entries it had to send anyway.
//
// Spinners: never more spinning threads in this process than online CPUs minus one (issue
// #8: three pure spinners on two vCPUs collapsed to 8 ms per op). A waiter that finds the
// budget taken skips the spin phase. Across processes the budget is the Controller's to
// hand out (it chooses each Process's spin_ns at connect).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <ctime>
#include <climits>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace fractos::queue {

/** Values of a wake word (u32 in shared memory). Anything else reads as AWAKE. */
/**
 * WAKE_SLEEPING: wake me for what the peer publishes (but quiet publishes: acknowledgements
 * nobody waits for). WAKE_SLEEPING_ALL: wake me for quiet publishes too (a Controller
 * waiting for a provider's credits; docs/queues.md "No wake-up for nothing").
 */
enum : uint32_t { WAKE_AWAKE = 0, WAKE_SLEEPING = 1, WAKE_SLEEPING_ALL = 3 };

/** How a waiter waits. Units: nanoseconds, counts. */
struct WakePolicy {
  /** Spin (polling the condition) up to this long before yielding. 0: no spin. */
  uint64_t spin_ns = 2000;
  /** sched_yield() calls (each followed by a check) before sleeping. */
  uint32_t yields = 4;
  /** Longest single block (ns) before re-checking; bounds the effect of a lost wake. */
  uint64_t sleep_slice_ns = 100'000'000;
};

inline uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/** Process-wide budget of concurrent spinners: online CPUs - 1 (0 on one CPU). */
inline std::atomic<int>& spinners() {
  static std::atomic<int> n{0};
  return n;
}
inline int max_spinners() {
  static const int m = [] {
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c > 1 ? int(c - 1) : 0;
  }();
  return m;
}

/** A futex-based or eventfd-based sleep/wake on one shared word. efd < 0: futex. */
struct Doorbell {
  std::atomic<uint32_t>* word = nullptr;  // in the shared mapping
  int efd = -1;                           // eventfd the waiter blocks on, or -1 for the futex

  /** Block up to `ns` while the word still reads SLEEPING (futex) or the eventfd is unread. */
  void block(uint64_t ns) const {
    if (efd >= 0) {
      pollfd p{efd, POLLIN, 0};
      int ms = int(ns / 1'000'000u);
      if (ms <= 0) ms = 1;
      if (poll(&p, 1, ms) > 0) {
        uint64_t v;
        ssize_t r = read(efd, &v, sizeof v);  // non-blocking eventfd: clears the count
        (void)r;
      }
      return;
    }
    timespec ts{time_t(ns / 1'000'000'000u), long(ns % 1'000'000'000u)};
    // Shared (not FUTEX_PRIVATE): the word is in a MAP_SHARED mapping of a memfd.
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, WAKE_SLEEPING, &ts, nullptr, 0);
  }

  /**
   * Notifier side, after its release store of the index: wake the waiter iff it announced
   * sleep. Returns true when a syscall was made.
   */
  bool notify(bool quiet = false) const {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    uint32_t w = word->load(std::memory_order_relaxed);
    if (!(w == WAKE_SLEEPING_ALL || (!quiet && w == WAKE_SLEEPING))) return false;
    w = word->exchange(WAKE_AWAKE, std::memory_order_acq_rel);
    if (w != WAKE_SLEEPING && w != WAKE_SLEEPING_ALL) return false;
    if (efd >= 0) {
      uint64_t one = 1;
      ssize_t r = write(efd, &one, sizeof one);  // non-blocking: EAGAIN only at 2^64-2, harmless
      (void)r;
    } else {
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, 1, nullptr, nullptr, 0);
    }
    return true;
  }

  /** Waiter side: announce sleep (SLEEPING + seq_cst fence). Re-check the condition after. */
  void announce(uint32_t how = WAKE_SLEEPING) const {
    word->store(how, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  void awake() const { word->store(WAKE_AWAKE, std::memory_order_relaxed); }
};

/**
 * Wait until `ready()` is true: spin, yield, then sleep on `bell` (policy above).
 * `deadline_ns`: absolute CLOCK_MONOTONIC time, or 0 for none.
 * @return 0 when ready, -ETIMEDOUT at the deadline. Never loops without either re-checking
 *   `ready()` or blocking; a hostile peer scribbling the word can cause early wake-ups only.
 */
template <class Ready>
int wait_until(Ready&& ready, const Doorbell& bell, const WakePolicy& p, uint64_t deadline_ns = 0) {
  if (ready()) return 0;
  uint64_t t0 = now_ns();
  if (p.spin_ns > 0) {
    auto& n = spinners();
    if (n.fetch_add(1, std::memory_order_relaxed) < max_spinners()) {
      uint64_t end = t0 + p.spin_ns;
      if (deadline_ns && deadline_ns < end) end = deadline_ns;
      unsigned i = 0;
      for (;;) {
        if (ready()) {
          n.fetch_sub(1, std::memory_order_relaxed);
          return 0;
        }
        cpu_relax();
        if ((++i & 15) == 0 && now_ns() >= end) break;
      }
    }
    n.fetch_sub(1, std::memory_order_relaxed);
  }
  for (uint32_t i = 0; i < p.yields; i++) {
    sched_yield();
    if (ready()) return 0;
  }
  for (;;) {
    bell.announce();
    if (ready()) {
      bell.awake();
      return 0;
    }
    uint64_t slice = p.sleep_slice_ns ? p.sleep_slice_ns : 100'000'000;
    if (deadline_ns) {
      uint64_t now = now_ns();
      if (now >= deadline_ns) {
        bell.awake();
        return ready() ? 0 : -ETIMEDOUT;
      }
      if (deadline_ns - now < slice) slice = deadline_ns - now;
    }
    bell.block(slice);
    bell.awake();
    if (ready()) return 0;
  }
}

}  // namespace fractos::queue

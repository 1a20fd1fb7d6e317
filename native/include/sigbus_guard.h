// The SIGBUS guard shared by the addons that copy between shared mappings (native/shm for the
// services, controller/src/memory.cc for the native Controller).
//
// A shared mapping whose file was truncated under it raises SIGBUS on the first access past
// the new end (a hostile owner can ftruncate its own /dev/shm object at any time), and
// SIGBUS's default action kills the whole process. A copy through fractos::guardedMove that
// faults jumps back out and reports the faulting address; a SIGBUS anywhere else (or one sent
// with kill) keeps its previous disposition: the handler chains to whatever was installed
// before it, so two addons in one process that each install it still work.
// A stop-gap: sealed memfds (F_SEAL_SHRINK) make the fault impossible in the first place.
//
// Header-only: each addon (a shared object with hidden visibility) gets its own copy of the
// thread-local state and of the handler, installed once per addon on its first guarded copy.
// An include guard, not #pragma once: the sanitizer build compiles a copy of controller/
// that reaches this header by two paths (two files to #pragma once).
#ifndef FRACTOS_INCLUDE_SIGBUS_GUARD_H
#define FRACTOS_INCLUDE_SIGBUS_GUARD_H
#include <setjmp.h>
#include <signal.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>

namespace fractos::sigbus {

// The jump buffer of the copy running on this thread, or null outside a guarded copy.
inline thread_local sigjmp_buf* volatile tl_guard = nullptr;
// si_addr of the SIGBUS that ended this thread's last guarded copy.
inline thread_local void* volatile tl_fault = nullptr;
inline struct sigaction g_prev;
inline std::once_flag g_once;

inline void onSigbus(int sig, siginfo_t* si, void* uctx) {
  sigjmp_buf* jb = tl_guard;
  // A fault (si_code > 0) during a guarded copy; a kill(SIGBUS) (si_code <= 0) is not ours.
  if (jb != nullptr && si != nullptr && si->si_code > 0) {
    tl_guard = nullptr;
    tl_fault = si->si_addr;
    siglongjmp(*jb, 1);  // restores the signal mask saved by sigsetjmp(.., 1): SIGBUS unblocked
  }
  if ((g_prev.sa_flags & SA_SIGINFO) && g_prev.sa_sigaction != nullptr) {
    g_prev.sa_sigaction(sig, si, uctx);
    return;
  }
  if (g_prev.sa_handler != SIG_DFL && g_prev.sa_handler != SIG_IGN && g_prev.sa_handler != nullptr) {
    g_prev.sa_handler(sig);
    return;
  }
  // The default action, as without this handler: a fault re-executes the faulting access on
  // return and dies of it; a sent signal is raised again.
  signal(SIGBUS, SIG_DFL);
  if (si == nullptr || si->si_code <= 0) raise(SIGBUS);
}

inline void install() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = onSigbus;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &g_prev);
}

__attribute__((noinline)) inline void* move(void* dst, const void* src, size_t n) {
  sigjmp_buf jb;
  if (sigsetjmp(jb, 1) != 0) return tl_fault;
  tl_guard = &jb;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::memmove(dst, src, n);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  tl_guard = nullptr;
  return nullptr;
}

}  // namespace fractos::sigbus

namespace fractos {

/**
 * memmove(dst, src, n) under the SIGBUS guard (overlap allowed). Returns nullptr when all n
 * bytes were copied, else the faulting address (the bytes before it may have been copied).
 */
inline void* guardedMove(void* dst, const void* src, size_t n) {
  if (n == 0) return nullptr;
  std::call_once(sigbus::g_once, sigbus::install);
  return sigbus::move(dst, src, n);
}

/** True when `p` lies in [base, base + n). */
inline bool inRange(const void* p, const uint8_t* base, size_t n) {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto b = reinterpret_cast<uintptr_t>(base);
  return a >= b && a - b < n;
}

}  // namespace fractos

#endif  // FRACTOS_INCLUDE_SIGBUS_GUARD_H

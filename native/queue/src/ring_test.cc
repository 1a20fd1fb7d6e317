// Tests of the queue library (ring.h, wake.h, memfd.h), run from ava (test/queue-ring.test.ts),
// plain and built with -fsanitize=address,undefined.
//   ring_test all                 every test below; prints "ok NAME" per test, exit 1 on failure
//   ring_test fuzz SECONDS SEED   the seeded random driver of the decoder fuzz target (ring_fuzz.h)
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "memfd.h"
#include "ring.h"
#include "ring_fuzz.h"
#include "spin_budget.h"
#include "wake.h"

using namespace fractos::queue;

static int failures = 0;
#define CHECK(c)                                                             \
  do {                                                                       \
    if (!(c)) {                                                              \
      std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);      \
      failures++;                                                            \
      return;                                                                \
    }                                                                        \
  } while (0)

/** A pair in private memory (no fd), for single-process tests. */
struct LocalPair {
  std::vector<uint64_t> mem;
  uint8_t* base;
  uint32_t rb;
  explicit LocalPair(uint32_t ring_bytes) : mem(pair_bytes(ring_bytes) / 8), base(reinterpret_cast<uint8_t*>(mem.data())), rb(ring_bytes) {
    init_pair(base, rb);
  }
  RingCtl ring(int r) { return RingCtl::at(base, r, rb); }
};

static void fill(uint8_t* p, uint32_t n, uint32_t seq) {
  for (uint32_t i = 0; i < n; i++) p[i] = uint8_t(seq * 31 + i);
}
static bool same(const uint8_t* p, uint32_t n, uint32_t seq) {
  for (uint32_t i = 0; i < n; i++)
    if (p[i] != uint8_t(seq * 31 + i)) return false;
  return true;
}

static void t_roundtrip() {
  LocalPair lp(4096);
  Producer p(lp.ring(0), default_max_entry(4096), -1);
  Consumer c(lp.ring(0), default_max_entry(4096), -1);
  uint8_t buf[4096], out[4096];
  uint32_t sizes[] = {0, 1, 7, 8, 9, 64, 1000};
  for (uint32_t s : sizes) {
    fill(buf, s, s);
    CHECK(p.push(buf, s) == 0);
  }
  uint32_t len;
  CHECK(c.pop(out, sizeof out, &len) == 0);  // nothing published yet
  p.publish();
  for (uint32_t s : sizes) {
    CHECK(c.pop(out, sizeof out, &len) == 1);
    CHECK(len == s && same(out, len, s));
  }
  CHECK(c.pop(out, sizeof out, &len) == 0);
  CHECK(p.push(buf, default_max_entry(4096) + 1) == -EMSGSIZE);
  CHECK(p.error() == 0);  // EMSGSIZE is not sticky
}

static void t_wrap() {
  LocalPair lp(4096);
  Producer p(lp.ring(0), default_max_entry(4096), -1);
  Consumer c(lp.ring(0), default_max_entry(4096), -1);
  std::mt19937 rng(7);
  uint8_t buf[1024], out[1024];
  uint32_t sent = 0, got = 0, len = 0;
  while (got < 20000) {
    uint32_t s = rng() % 1000;
    fill(buf, s, sent);
    int r = p.push(buf, s);
    if (r == 0) {
      sent++;
      p.publish();
      continue;
    }
    CHECK(r == -EAGAIN);
    while (c.pop(out, sizeof out, &len) == 1) {
      CHECK(same(out, len, got));
      got++;
    }
    CHECK(c.error() == 0);
    c.commit();
  }
  CHECK(p.tail() > 100ull * 4096);  // wrapped many times
}

static void t_full_backpressure() {
  LocalPair lp(4096);
  Producer p(lp.ring(0), default_max_entry(4096), -1);
  Consumer c(lp.ring(0), default_max_entry(4096), -1);
  uint8_t buf[64] = {}, out[4096];
  uint32_t n = 0, len;
  while (p.push(buf, 56) == 0) n++;
  CHECK(n == 4096 / 64);  // exactly full: 64 bytes per entry
  CHECK(p.push(buf, 0) == -EAGAIN);
  p.publish();
  CHECK(c.pop(out, sizeof out, &len) == 1);
  CHECK(p.push(buf, 0) == -EAGAIN);  // not acknowledged yet: the head is the ack
  c.commit();
  CHECK(p.push(buf, 56) == 0);
  CHECK(p.acked() == 64);
}

/** Producer-written garbage, each case in a fresh pair; a neighbour pair keeps working. */
static void t_hostile_consumer() {
  struct Case {
    const char* name;
    void (*spoil)(RingCtl&);
  };
  Case cases[] = {
      {"tail unaligned", [](RingCtl& r) { r.tail->store(13); }},
      {"tail beyond ring", [](RingCtl& r) { r.tail->store(8192); }},
      {"tail behind head", [](RingCtl& r) { r.tail->store(~uint64_t(7)); }},
      {"huge length", [](RingCtl& r) { write_header(r.data, 0xfffffff0u, KIND_DATA); r.tail->store(64); }},
      {"torn entry", [](RingCtl& r) { write_header(r.data, 100, KIND_DATA); r.tail->store(64); }},
      {"bad kind", [](RingCtl& r) { write_header(r.data, 8, 7); r.tail->store(16); }},
      {"wrap at 0", [](RingCtl& r) { write_header(r.data, 0, KIND_WRAP); r.tail->store(64); }},
      {"past the end", [](RingCtl& r) {
         // at offset 4088 an entry claiming 64 bytes: it would cross the end of the ring
         r.head->store(4088); write_header(r.data + 4088, 56, KIND_DATA); r.tail->store(4088 + 64); }},
      {"double wrap", [](RingCtl& r) {
         r.head->store(4088); write_header(r.data + 4088, 0, KIND_WRAP); write_header(r.data, 0, KIND_WRAP);
         r.tail->store(4088 + 8 + 64); }},
  };
  LocalPair good(4096);
  Producer gp(good.ring(0), default_max_entry(4096), -1);
  Consumer gc(good.ring(0), default_max_entry(4096), -1);
  uint8_t out[4096];
  uint32_t len;
  for (auto& k : cases) {
    LocalPair lp(4096);
    RingCtl r = lp.ring(0);
    k.spoil(r);
    Consumer c(r, default_max_entry(4096), -1);
    int e = c.error() ? c.error() : c.pop(out, sizeof out, &len);
    if (e != -EPROTO) std::fprintf(stderr, "case %s: %d\n", k.name, e);
    CHECK(e == -EPROTO);
    CHECK(c.pop(out, sizeof out, &len) == -EPROTO);  // sticky
    CHECK(c.readable());                              // a waiter wakes to see it
    uint8_t b[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    CHECK(gp.push(b, 8) == 0);
    gp.publish();
    CHECK(gc.pop(out, sizeof out, &len) == 1 && len == 8 && out[7] == 8);
    gc.commit();
  }
}

static void t_hostile_producer_side() {
  LocalPair lp(4096);
  RingCtl r = lp.ring(1);
  Producer p(r, default_max_entry(4096), -1);
  uint8_t b[56] = {};
  for (int i = 0; i < 64; i++) CHECK(p.push(b, 56) == 0);
  p.publish();
  r.head->store(64);
  CHECK(p.acked() == 64);
  r.head->store(8);  // backwards
  p.acked();
  CHECK(p.error() == -EPROTO);
  CHECK(p.push(b, 0) == -EPROTO);
  LocalPair lp2(4096);
  RingCtl r2 = lp2.ring(1);
  Producer p2(r2, default_max_entry(4096), -1);
  r2.head->store(1 << 20);  // beyond anything written
  for (int i = 0; i < 100; i++) {
    int e = p2.push(b, 56);
    if (e) {
      CHECK(e == -EPROTO);
      break;
    }
  }
  CHECK(p2.error() == -EPROTO);
}

static void t_notify_only_when_sleeping() {
  LocalPair lp(4096);
  RingCtl r = lp.ring(0);
  Doorbell bell{r.cons_wait, -1};
  CHECK(!bell.notify());  // awake peer: no syscall
  bell.announce();
  CHECK(bell.notify());  // announced: one wake
  CHECK(!bell.notify());  // answered once
  r.cons_wait->store(0xdeadbeef);  // garbage reads as awake
  CHECK(!bell.notify());
}

/** Cross-process round trip through a memfd pair (fork), futex or eventfd doorbells. */
static void t_cross_process(bool use_efd) {
  int fd = create_pair_fd(8192);
  CHECK(fd >= 0);
  int efd_p = use_efd ? make_doorbell() : -1, efd_c = use_efd ? make_doorbell() : -1;
  constexpr uint32_t N = 20000;
  pid_t pid = fork();
  if (pid == 0) {  // Controller side: echo every request back as a completion
    PairMap m;
    if (m.map(fd, 0) != 0) _exit(10);
    Endpoint e(m.base, m.ring_bytes, SIDE_CONTROLLER, default_max_entry(m.ring_bytes), efd_c, efd_p);
    WakePolicy pol;
    uint8_t buf[8192];
    uint32_t len = 0;
    for (uint32_t i = 0; i < N;) {
      if (e.rx.wait(pol, now_ns() + 10'000'000'000ull) != 0) _exit(11);
      int r;
      while ((r = e.rx.pop(buf, sizeof buf, &len)) == 1) {
        if (e.tx.wait_space(len, pol, now_ns() + 10'000'000'000ull) != 0) _exit(12);
        if (e.tx.push(buf, len) != 0) _exit(13);
        i++;
      }
      if (r < 0) _exit(14);
      e.rx.commit();
      e.tx.publish();
    }
    _exit(0);
  }
  PairMap m;
  CHECK(m.map(fd, 8192) == 0);
  Endpoint e(m.base, m.ring_bytes, SIDE_PROCESS, default_max_entry(8192), efd_p, efd_c);
  WakePolicy pol;
  pol.spin_ns = 0;  // exercise the sleep path
  uint8_t buf[2048], out[8192];
  uint32_t sent = 0, got = 0, len = 0;
  while (got < N) {
    while (sent < N && sent - got < 64) {
      uint32_t s = (sent * 7919u) % 1500u;
      fill(buf, s, sent);
      int r = e.tx.push(buf, s);
      if (r == -EAGAIN) break;
      CHECK(r == 0);
      sent++;
    }
    e.tx.publish();
    CHECK(e.rx.wait(pol, now_ns() + 10'000'000'000ull) == 0);
    int r;
    while ((r = e.rx.pop(out, sizeof out, &len)) == 1) {
      CHECK(len == (got * 7919u) % 1500u && same(out, len, got));
      got++;
    }
    CHECK(r == 0);
    e.rx.commit();
  }
  int st;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  close(fd);
  if (use_efd) close(efd_p), close(efd_c);
}

/** A producer killed -9 in the middle of a write, and one killed at a random point of a stream. */
static void t_killed_mid_write() {
  int fd = create_pair_fd(4096);
  CHECK(fd >= 0);
  pid_t pid = fork();
  if (pid == 0) {
    PairMap m;
    if (m.map(fd, 0) != 0) _exit(10);
    Producer p(RingCtl::at(m.base, RING_REQUEST, m.ring_bytes), default_max_entry(4096), -1);
    uint8_t b[200];
    fill(b, 200, 0);
    p.push(b, 200);
    p.publish();
    // second entry: header and half of the body written, tail not published
    uint8_t* d = RingCtl::at(m.base, RING_REQUEST, m.ring_bytes).data + 208;
    write_header(d, 200, KIND_DATA);
    std::memcpy(d + 8, b, 100);
    kill(getpid(), SIGKILL);
    _exit(1);
  }
  int st;
  waitpid(pid, &st, 0);
  CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  PairMap m;
  CHECK(m.map(fd, 4096) == 0);
  Consumer c(RingCtl::at(m.base, RING_REQUEST, 4096), default_max_entry(4096), -1);
  uint8_t out[4096];
  uint32_t len;
  CHECK(c.pop(out, sizeof out, &len) == 1 && len == 200 && same(out, 200, 0));
  CHECK(c.pop(out, sizeof out, &len) == 0);  // the unpublished half entry is invisible
  close(fd);

  // a stream killed at a random moment: everything visible is whole, nothing after
  fd = create_pair_fd(65536);
  CHECK(fd >= 0);
  int go[2];
  CHECK(pipe(go) == 0);
  pid = fork();
  if (pid == 0) {
    close(go[0]);
    PairMap m2;
    if (m2.map(fd, 0) != 0) _exit(10);
    Producer p(RingCtl::at(m2.base, RING_REQUEST, m2.ring_bytes), default_max_entry(65536), -1);
    uint8_t b[1000];
    for (uint32_t i = 0;; i++) {
      uint32_t s = i % 1000;
      fill(b, s, i);
      if (p.push(b, s) != 0) pause();  // full: wait to be killed
      p.publish();
      if (i == 0 && write(go[1], "1", 1) != 1) _exit(11);  // streaming: kill me any time now
    }
  }
  close(go[1]);
  char one;
  CHECK(read(go[0], &one, 1) == 1);
  close(go[0]);
  usleep(1000);
  kill(pid, SIGKILL);
  waitpid(pid, &st, 0);
  PairMap m2;
  CHECK(m2.map(fd, 65536) == 0);
  Consumer c2(RingCtl::at(m2.base, RING_REQUEST, 65536), default_max_entry(65536), -1);
  uint32_t i = 0;
  int r;
  std::vector<uint8_t> big(65536);
  while ((r = c2.pop(big.data(), uint32_t(big.size()), &len)) == 1) {
    CHECK(len == i % 1000 && same(big.data(), len, i));
    i++;
  }
  CHECK(r == 0 && i > 0);
  close(fd);
}

static void t_seals() {
  // no seals at all
  int fd = memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  CHECK(ftruncate(fd, off_t(pair_bytes(4096))) == 0);
  CHECK(verify_pair_fd(fd, 4096) == -EPROTO);
  // shrink sealed only (grow missing)
  CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
  CHECK(verify_pair_fd(fd, 4096) == -EPROTO);
  CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW) == 0);
  CHECK(verify_pair_fd(fd, 4096) == 4096);
  CHECK(verify_pair_fd(fd, 0) == 4096);
  CHECK(verify_pair_fd(fd, 8192) == -EPROTO);  // not the size configured
  close(fd);
  // memfd without MFD_ALLOW_SEALING: F_SEAL_SEAL preset, nothing else
  fd = memfd_create("t", MFD_CLOEXEC);
  CHECK(ftruncate(fd, off_t(pair_bytes(4096))) == 0);
  CHECK(verify_pair_fd(fd, 4096) == -EPROTO);
  close(fd);
  // truncated (sealed at a smaller size)
  fd = memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  CHECK(ftruncate(fd, off_t(pair_bytes(4096) - 4096)) == 0);
  CHECK(fcntl(fd, F_ADD_SEALS, REQUIRED_SEALS) == 0);
  CHECK(verify_pair_fd(fd, 4096) == -EPROTO);
  CHECK(verify_pair_fd(fd, 0) == -EPROTO);
  PairMap m;
  CHECK(m.map(fd, 4096) == -EPROTO && m.base == nullptr);
  close(fd);
  // not a memfd: a pipe, a regular file
  int pp[2];
  CHECK(pipe(pp) == 0);
  CHECK(verify_pair_fd(pp[0], 4096) == -EPROTO);
  close(pp[0]), close(pp[1]);
  FILE* f = tmpfile();
  CHECK(f != nullptr);
  CHECK(ftruncate(fileno(f), off_t(pair_bytes(4096))) == 0);
  CHECK(verify_pair_fd(fileno(f), 4096) == -EPROTO);
  fclose(f);
  // a created pair can be neither shrunk nor grown
  fd = create_pair_fd(4096);
  CHECK(fd >= 0);
  CHECK(ftruncate(fd, 100) != 0 && errno == EPERM);
  CHECK(ftruncate(fd, off_t(pair_bytes(8192))) != 0 && errno == EPERM);
  CHECK(create_pair_fd(5000) == -EINVAL);
  close(fd);
}

static bool fd_open(int fd) { return fcntl(fd, F_GETFD) >= 0; }

static void t_scm_rights() {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  int fd = create_pair_fd(4096), e1 = make_doorbell(), e2 = make_doorbell();
  int fds[3] = {fd, e1, e2}, got[3];
  uint8_t one = 1, buf[16];
  CHECK(send_fds(sv[0], fds, 3, &one, 1) == 0);
  CHECK(recv_fds(sv[1], got, 3, buf, sizeof buf) == 1);
  CHECK((fcntl(got[0], F_GETFD) & FD_CLOEXEC) != 0);
  CHECK(verify_pair_fd(got[0], 4096) == 4096);
  for (int g : got) close(g);
  // fewer than expected: refused, what arrived is closed
  CHECK(send_fds(sv[0], fds, 2, &one, 1) == 0);
  int before = dup(0);
  close(before);  // the next fd number the kernel hands out
  CHECK(recv_fds(sv[1], got, 3, buf, sizeof buf) == -EPROTO);
  CHECK(!fd_open(before) && !fd_open(before + 1));
  // more than MAX_FDS in one message (raw sendmsg): truncated control data is refused
  int many[MAX_FDS + 4];
  for (int& x : many) x = e1;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof many)];
  iovec iov{&one, 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl;
  msg.msg_controllen = sizeof ctl;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof many);
  std::memcpy(CMSG_DATA(c), many, sizeof many);
  CHECK(sendmsg(sv[0], &msg, 0) == 1);
  CHECK(recv_fds(sv[1], got, 3, buf, sizeof buf) == -EPROTO);
  CHECK(!fd_open(before) && !fd_open(before + 1));
  CHECK(send_fds(sv[0], many, MAX_FDS + 1, &one, 1) == -EINVAL);
  close(sv[0]);
  CHECK(recv_fds(sv[1], got, 3, buf, sizeof buf) == 0);  // peer closed
  close(sv[1]), close(fd), close(e1), close(e2);
}

/** A consumer sleeping for 300 ms uses next to no CPU (and its wait times out). */
static void t_idle_cpu() {
  LocalPair lp(4096);
  Consumer c(lp.ring(0), default_max_entry(4096), -1);
  WakePolicy pol;
  rusage a, b;
  getrusage(RUSAGE_SELF, &a);
  uint64_t t0 = now_ns();
  CHECK(c.wait(pol, t0 + 300'000'000) == -ETIMEDOUT);
  uint64_t wall = now_ns() - t0;
  getrusage(RUSAGE_SELF, &b);
  double cpu = (b.ru_utime.tv_sec - a.ru_utime.tv_sec) + (b.ru_stime.tv_sec - a.ru_stime.tv_sec) +
               1e-6 * ((b.ru_utime.tv_usec - a.ru_utime.tv_usec) + (b.ru_stime.tv_usec - a.ru_stime.tv_usec));
  std::printf("idle: %.3f ms CPU in %.1f ms asleep\n", cpu * 1e3, wall / 1e6);
  CHECK(wall >= 290'000'000);
  CHECK(cpu < 0.03);  // the spin phase is 2 us; anything near 10% would mean busy waiting
}

/** The spinner budget page: takes up to its slots, releases, renews; only a sealed 4 KiB memfd maps. */
static void t_budget_basic() {
  int fd = create_budget_fd(2);
  CHECK(fd >= 0);
  int e = 0;
  uint8_t* m = map_budget_fd(fd, &e);
  CHECK(m && e == 0);
  constexpr uint32_t HOLD = 100'000'000;  // µs: no check depends on how fast this test runs
  SpinBudget a(m, 2, 100, HOLD), b(m, 2, 101, HOLD), c(m, 2, 102, HOLD);
  CHECK(a.take(HOLD / 2) == 0 && a.holding());
  CHECK(a.take(HOLD / 2) == 0);  // already holding: the same slot, no second one
  CHECK(b.take(HOLD / 2) == 1);
  CHECK(c.take(HOLD / 2) == -1 && !c.holding());
  CHECK(a.busy(now_us32()) == 2);
  CHECK(a.renew(HOLD / 2) && a.holding());
  a.release();
  CHECK(!a.holding() && a.slot(0).load() == 0);
  CHECK(c.take(HOLD / 2) == 0);
  b.release(), c.release();
  CHECK(a.busy(now_us32()) == 0);
  // a slot taken from us: renew fails, release leaves the new holder alone
  CHECK(a.take(HOLD / 2) == 0);
  a.slot(0).store((uint64_t(101) << 32) | (now_us32() + HOLD / 2));
  CHECK(!a.renew(HOLD / 2) && !a.holding());
  a.release();
  CHECK(SpinBudget::tag_of(a.slot(0).load()) == 101);
  munmap(m, BUDGET_BYTES);
  // not a budget page: unsealed, wrong size, a pipe
  int u = memfd_create("x", MFD_CLOEXEC);
  CHECK(u >= 0 && ftruncate(u, BUDGET_BYTES) == 0);
  CHECK(map_budget_fd(u, &e) == nullptr && e == -EPROTO);
  int w = memfd_create("y", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  CHECK(w >= 0 && ftruncate(w, 2 * BUDGET_BYTES) == 0 && fcntl(w, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
  CHECK(map_budget_fd(w, &e) == nullptr && e == -EPROTO);
  int pp[2];
  CHECK(pipe(pp) == 0);
  CHECK(map_budget_fd(pp[0], &e) == nullptr && e == -EPROTO);
  close(fd), close(u), close(w), close(pp[0]), close(pp[1]);
}

/**
 * A hostile Process writing the page: garbage deadlines (too far ahead) read as free; a valid
 * hold lapses after MAX_HOLD_US; the Controller's `ignore` takes slots from a tag that holds
 * two, and `reclaim` clears them; budget_spin without a slot still sees its condition.
 */
static void t_budget_hostile() {
  std::vector<uint64_t> page(BUDGET_BYTES / 8);
  uint8_t* m = reinterpret_cast<uint8_t*>(page.data());
  // holds of up to 100 s here, so that no check depends on how fast this test runs
  constexpr uint32_t HOLD = 100'000'000;
  SpinBudget me(m, 2, 7, HOLD), ctl(m, 2, 1, HOLD);
  const uint64_t evil = uint64_t(666) << 32;
  auto held = [&](uint32_t i) { me.slot(i).store(evil | (now_us32() + HOLD / 2)); };
  // deadlines beyond the longest hold, half the clock's circle away, or passed: free
  for (uint64_t v : {evil | (now_us32() + HOLD + 1'000'000u), (~uint64_t(0) << 32) | (now_us32() + 0x80000000u), evil | (now_us32() - 5),
                     uint64_t(now_us32() - 1)}) {
    me.slot(0).store(v), me.slot(1).store(v);
    CHECK(me.take(10) >= 0);
    me.release();
  }
  // a valid hold of both slots: a Process skips its spin
  held(0), held(1);
  CHECK(me.take(10) == -1);
  bool spun = budget_spin(&me, [] { return true; }, 1000);  // ready at once: no slot needed
  CHECK(spun && !me.holding());
  int polls = 0;
  spun = budget_spin(&me, [&] { return ++polls > 1; }, 50'000'000);  // no slot: yields, checks again
  CHECK(spun && polls == 2 && !me.holding());
  // the Controller ignores a tag that holds two slots: reclaims both, or takes one
  uint32_t by = 0;
  CHECK(ctl.busy(now_us32(), 666, &by) == 2 && by == 2);
  auto two = [&](uint32_t tag) {
    uint32_t n = 0;
    ctl.busy(now_us32(), tag, &n);
    return n > 1;
  };
  CHECK(ctl.reclaim(two) == 2);
  CHECK(ctl.busy(now_us32()) == 0);
  held(0), held(1);
  CHECK(ctl.take(10, two) >= 0);
  ctl.release();
  CHECK(ctl.busy(now_us32(), 666, &by) == 1 && by == 1);  // one slot of 666 left: a legitimate-looking hold
  // a hold asked for longer than the longest is cut to it
  ctl.reclaim([](uint32_t) { return true; });
  CHECK(me.take(2 * HOLD) >= 0);
  CHECK(int32_t(me.deadline() - now_us32()) <= int32_t(HOLD));
  me.release();
  // with the real bound: a valid hold lapses after MAX_HOLD_US, then anyone takes the slot
  SpinBudget real(m, 2, 7);
  uint32_t now = now_us32();
  real.slot(0).store(evil | (now + MAX_HOLD_US)), real.slot(1).store(evil | (now + MAX_HOLD_US));
  usleep(MAX_HOLD_US + 200);
  CHECK(real.take(10) >= 0);
  real.release();
}

/**
 * Processes taking and giving back slots as fast as they can: a slot is never held by two at
 * once (a holder finds its own value in its slot at the end of its hold unless the hold lapsed:
 * a holder preempted past its deadline loses the slot, by design).
 */
static void t_budget_bound() {
  for (uint32_t slots : {1u, 2u}) {
    int fd = create_budget_fd(slots);
    CHECK(fd >= 0);
    int e = 0;
    uint8_t* m = map_budget_fd(fd, &e);
    CHECK(m);
    // counters in a shared anonymous page: takes, holds lost before their deadline, lapsed holds
    auto* shared = static_cast<std::atomic<int64_t>*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    CHECK(shared != MAP_FAILED);
    new (shared) std::atomic<int64_t>[3]{};
    const int kids = 4;
    std::vector<pid_t> pids;
    for (int k = 0; k < kids; k++) {
      pid_t p = fork();
      if (p == 0) {
        SpinBudget b(m, slots, uint32_t(getpid()));
        uint64_t end = now_ns() + 150'000'000;
        while (now_ns() < end) {
          int i = b.take(MAX_HOLD_US);
          if (i < 0) {
            sched_yield();
            continue;
          }
          shared[0].fetch_add(1);
          const uint64_t mine = (uint64_t(getpid()) << 32) | b.deadline();
          for (int j = 0; j < 50; j++) cpu_relax();
          bool ours = b.slot(uint32_t(i)).load() == mine;
          bool live = int32_t(b.deadline() - now_us32()) > 0;
          if (!ours && live) shared[1].fetch_add(1);
          if (!ours && !live) shared[2].fetch_add(1);
          b.release();
        }
        _exit(0);
      }
      pids.push_back(p);
    }
    for (pid_t p : pids) waitpid(p, nullptr, 0);
    std::printf("budget %u slot(s): %lld takes by %d processes, %lld slots shared with another holder, %lld holds lapsed (preempted)\n",
                slots, (long long)shared[0].load(), kids, (long long)shared[1].load(), (long long)shared[2].load());
    CHECK(shared[0].load() > 0);
    CHECK(shared[1].load() == 0);
    munmap(shared, 4096);
    munmap(m, BUDGET_BYTES);
    close(fd);
  }
}

static int fuzz(double seconds, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> in;
  uint64_t end = now_ns() + uint64_t(seconds * 1e9), runs = 0;
  while (now_ns() < end) {
    for (int k = 0; k < 64; k++, runs++) {
      in.assign(17, 0);
      for (auto& b : in) b = uint8_t(rng());
      if (rng() & 1) {
        // structured: a valid stream of 1..60 entries, then 0..3 mutations (see ring_fuzz.h)
        in[0] |= 1;
        int k = 1 + int(rng() % 60);
        for (int i = 0; i < k; i++) {
          uint32_t len = rng() % (rng() & 1 ? 64 : 1100);
          in.push_back(uint8_t(len));
          in.push_back(uint8_t((len >> 8) & 0x7f) | (i == k - 1 ? 0x80 : 0));
        }
        int m = int(rng() % 4);
        for (int i = 0; i < 3 * m; i++) in.push_back(uint8_t(rng()));
      } else {
        size_t n = rng() % 6000;
        for (size_t i = 0; i < n; i++) in.push_back(uint8_t(rng()));
      }
      fuzz_one(in.data(), in.size());
    }
  }
  const FuzzStats& st = fuzz_stats();
  std::printf("fuzz: %llu inputs in %.1f s, seed %llu, no failure (%llu entries decoded; consumer: %llu EPROTO, %llu drained; "
              "producer: %llu EPROTO)\n",
              (unsigned long long)runs, seconds, (unsigned long long)seed, (unsigned long long)st.entries,
              (unsigned long long)st.eproto, (unsigned long long)st.empty, (unsigned long long)st.producer_eproto);
  return 0;
}

int main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "all";
  if (cmd == "fuzz") return fuzz(argc > 2 ? std::atof(argv[2]) : 2.0, argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1);
  struct T {
    const char* name;
    void (*fn)();
  } tests[] = {
      {"roundtrip", t_roundtrip},
      {"wrap", t_wrap},
      {"full_backpressure", t_full_backpressure},
      {"hostile_consumer", t_hostile_consumer},
      {"hostile_producer_side", t_hostile_producer_side},
      {"notify_only_when_sleeping", t_notify_only_when_sleeping},
      {"cross_process_futex", [] { t_cross_process(false); }},
      {"cross_process_eventfd", [] { t_cross_process(true); }},
      {"killed_mid_write", t_killed_mid_write},
      {"seals", t_seals},
      {"scm_rights", t_scm_rights},
      {"idle_cpu", t_idle_cpu},
      {"budget_basic", t_budget_basic},
      {"budget_hostile", t_budget_hostile},
      {"budget_bound", t_budget_bound},
  };
  for (auto& t : tests) {
    if (argc > 2 && cmd == "only" && std::string(argv[2]) != t.name) continue;
    int before = failures;
    t.fn();
    std::printf("%s %s\n", failures == before ? "ok" : "not ok", t.name);
    std::fflush(stdout);
  }
  return failures ? 1 : 0;
}

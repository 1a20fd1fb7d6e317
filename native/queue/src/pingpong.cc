// Raw round trip of the queue mechanism: two processes (fork) over one queue pair with the
// wake-up policy of wake.h, the baseline of the Controller's null operation (issue #8,
// "Targets"; docs/queues.md, docs/measurements.md). Built by native/queue/binding.gyp.
//
//   pingpong bench [SECONDS_PER_CASE]   one JSON line per case: payload 0/64/4096 bytes x
//       policy spin (spin 2 us, 4 yields, then sleep) / sleep (sleep at once) x doorbell
//       futex / eventfd, placement "any" (the scheduler's); then, 64 B over a futex, both
//       policies with the processes pinned to two CPUs ("split") and to one ("same"):
//       {"case":"rtt","policy":..,"wake":..,"payload":..,"placement":..,"n":..,"median_ns":..,
//       "p99_ns":..}; then {"case":"idle",...}: CPU used by a consumer asleep for 1 s.
//   pingpong echo SOCK_FD [SPIN_NS]      receive [pair memfd, Process doorbell, Controller
//       doorbell] over the unix socket SOCK_FD (SCM_RIGHTS), then echo every request as a
//       completion until the socket closes (the far side of the addon's tests and bench).
#include <poll.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "memfd.h"
#include "ring.h"
#include "wake.h"

using namespace fractos::queue;

static uint8_t buf[1 << 16];

/** Echo loop of the Controller side until `alive()` is false or an error. 0 or an exit code. */
template <class Alive>
static int echo(Endpoint& e, const WakePolicy& pol, Alive alive) {
  uint32_t len = 0;
  for (;;) {
    int w = e.rx.wait(pol, now_ns() + 100'000'000);
    if (w == -ETIMEDOUT) {
      if (!alive()) return 0;
      continue;
    }
    int r;
    while ((r = e.rx.pop(buf, sizeof buf, &len)) == 1) {
      if (buf[0] == 0xff && len == 1) return 0;  // stop entry (bench)
      if (e.tx.wait_space(len, pol, now_ns() + 5'000'000'000ull) != 0) return 3;
      if (e.tx.push(buf, len) != 0) return 4;
      e.tx.publish();  // answer at once: a round trip is what we measure
      e.rx.commit();   // and acknowledge at once: the Process may be waiting for space
    }
    if (r < 0) return 5;  // EPROTO: drop the channel
    e.rx.commit();
  }
}

/** Pin the calling process to one CPU (-1: leave it to the scheduler). */
static void pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

/** placement: "any" (scheduler's choice), "split" (CPUs 0 and 1), "same" (both on CPU 0). */
static void bench_case(const char* policy, const char* wake, uint32_t payload, double seconds, const char* placement = "any") {
  int cpu_parent = -1, cpu_child = -1;
  if (std::strcmp(placement, "split") == 0) cpu_parent = 0, cpu_child = 1;
  if (std::strcmp(placement, "same") == 0) cpu_parent = 0, cpu_child = 0;
  cpu_set_t saved;
  sched_getaffinity(0, sizeof saved, &saved);
  int fd = create_pair_fd(1 << 16);
  bool efd = std::strcmp(wake, "eventfd") == 0;
  int efd_p = efd ? make_doorbell() : -1, efd_c = efd ? make_doorbell() : -1;
  WakePolicy pol;
  if (std::strcmp(policy, "sleep") == 0) pol.spin_ns = 0, pol.yields = 0;
  pid_t pid = fork();
  if (pid == 0) {
    pin(cpu_child);
    PairMap m;
    if (m.map(fd, 0) != 0) _exit(2);
    Endpoint e(m.base, m.ring_bytes, SIDE_CONTROLLER, default_max_entry(m.ring_bytes), efd_c, efd_p);
    _exit(echo(e, pol, [] { return getppid() != 1; }));
  }
  pin(cpu_parent);
  PairMap m;
  if (m.map(fd, 0) != 0) std::exit(2);
  Endpoint e(m.base, m.ring_bytes, SIDE_PROCESS, default_max_entry(m.ring_bytes), efd_p, efd_c);
  std::vector<uint8_t> msg(payload ? payload : 1, 7);
  uint32_t len = 0;
  std::vector<uint32_t> samples;
  samples.reserve(1 << 20);
  uint64_t start = now_ns(), end = start + uint64_t(seconds * 1e9), warm = start + uint64_t(seconds * 1e8);
  while (true) {
    uint64_t t0 = now_ns();
    if (t0 >= end) break;
    msg[0] = 1;
    int p;
    while ((p = e.tx.push(msg.data(), payload)) == -EAGAIN)
      if (e.tx.wait_space(payload, pol, now_ns() + 5'000'000'000ull) != 0) std::exit(3);
    if (p != 0) std::exit(3);
    e.tx.publish();
    int r;
    while ((r = e.rx.pop(buf, sizeof buf, &len)) == 0)
      if (e.rx.wait(pol, now_ns() + 5'000'000'000ull) != 0) std::exit(4);
    if (r < 0 || len != payload) std::exit(5);
    e.rx.commit();
    uint64_t t1 = now_ns();
    if (t0 >= warm && samples.size() < samples.capacity()) samples.push_back(uint32_t(std::min<uint64_t>(t1 - t0, UINT32_MAX)));
  }
  uint8_t stop = 0xff;
  while (e.tx.push(&stop, 1) == -EAGAIN) e.tx.wait_space(1, pol);
  e.tx.publish();
  int st;
  waitpid(pid, &st, 0);
  std::sort(samples.begin(), samples.end());
  size_t n = samples.size();
  sched_setaffinity(0, sizeof saved, &saved);
  std::printf("{\"case\":\"rtt\",\"policy\":\"%s\",\"wake\":\"%s\",\"payload\":%u,\"placement\":\"%s\",\"n\":%zu,\"median_ns\":%u,\"p99_ns\":%u,\"echo_exit\":%d}\n",
              policy, wake, payload, placement, n, n ? samples[n / 2] : 0, n ? samples[n * 99 / 100] : 0,
              WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  std::fflush(stdout);
  close(fd);
  if (efd) close(efd_p), close(efd_c);
}

static double cpu_s() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

static void idle_case(double seconds) {
  int fd = create_pair_fd(4096);
  PairMap m;
  if (m.map(fd, 0) != 0) std::exit(2);
  Endpoint e(m.base, m.ring_bytes, SIDE_CONTROLLER, default_max_entry(4096), -1, -1);
  WakePolicy pol;
  double c0 = cpu_s();
  uint64_t t0 = now_ns();
  int r = e.rx.wait(pol, t0 + uint64_t(seconds * 1e9));
  double wall = double(now_ns() - t0) / 1e9, cpu = cpu_s() - c0;
  std::printf("{\"case\":\"idle\",\"policy\":\"spin\",\"wake\":\"futex\",\"wall_s\":%.3f,\"cpu_s\":%.6f,\"cpu_pct\":%.4f,\"timed_out\":%s}\n",
              wall, cpu, 100.0 * cpu / wall, r == -ETIMEDOUT ? "true" : "false");
  close(fd);
}

int main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "bench") {
    double secs = argc > 2 ? std::atof(argv[2]) : 0.5;
    if (!(secs > 0)) secs = 0.5;
    const char* cases[][2] = {{"spin", "futex"}, {"sleep", "futex"}, {"sleep", "eventfd"}};
    for (auto& c : cases)
      for (uint32_t payload : {0u, 64u, 4096u}) bench_case(c[0], c[1], payload, secs);
    // Placement pinned (64 B, futex): where the two processes run decides what a wake costs.
    if (sysconf(_SC_NPROCESSORS_ONLN) >= 2)
      for (const char* policy : {"spin", "sleep"})
        for (const char* placement : {"split", "same"}) bench_case(policy, "futex", 64, secs, placement);
    idle_case(1.0);
    return 0;
  }
  if (cmd == "echo" && argc > 2) {
    int sock = std::atoi(argv[2]);
    WakePolicy pol;
    if (argc > 3) pol.spin_ns = std::strtoull(argv[3], nullptr, 10);
    int fds[3];
    uint8_t hello[64];
    ssize_t r = recv_fds(sock, fds, 3, hello, sizeof hello);
    if (r <= 0) {
      std::fprintf(stderr, "pingpong echo: recv_fds: %s\n", r == 0 ? "closed" : std::strerror(int(-r)));
      return 2;
    }
    PairMap m;
    if (int e = m.map(fds[0], 0)) {
      std::fprintf(stderr, "pingpong echo: pair refused: %s\n", std::strerror(-e));
      return 2;
    }
    Endpoint e(m.base, m.ring_bytes, SIDE_CONTROLLER, default_max_entry(m.ring_bytes), fds[2], fds[1]);
    uint8_t ok = 1;
    if (write(sock, &ok, 1) != 1) return 2;
    int rc = echo(e, pol, [sock] {
      pollfd p{sock, POLLIN, 0};
      if (poll(&p, 1, 0) <= 0) return true;
      uint8_t b;
      return recv(sock, &b, 1, MSG_DONTWAIT) > 0;  // 0: closed (the Process is gone)
    });
    if (rc == 5) std::fprintf(stderr, "pingpong echo: EPROTO from the Process: channel dropped\n");
    return rc;
  }
  std::fprintf(stderr, "usage: pingpong bench [SECONDS] | pingpong echo SOCK_FD [SPIN_NS]\n");
  return 2;
}

// A queue pair's memfd: creation (sized, then sealed against shrinking and growing), the
// receiving side's verification before it maps it, and passing fds over a unix socket with
// SCM_RIGHTS (docs/queues.md). Header-only; every function returns 0/fd or -errno.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../include/fd_stream.h"
#include "ring.h"

namespace fractos::queue {

/** Seals every queue pair carries: no shrinking (SIGBUS), no growing, no further seals. */
constexpr int REQUIRED_SEALS = F_SEAL_SHRINK | F_SEAL_GROW;
/** Most fds one message may carry; more is refused (and all of them closed). */
constexpr int MAX_FDS = fdstream::kMaxFds;

/**
 * Create a queue pair memfd of pair_bytes(ring_bytes), initialised and sealed
 * (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL). @return the fd (O_CLOEXEC) or -errno
 * (EINVAL: ring_bytes not a power of two in [MIN_RING_BYTES, MAX_RING_BYTES]).
 */
inline int create_pair_fd(uint32_t ring_bytes) {
  if (!valid_ring_bytes(ring_bytes)) return -EINVAL;
  int fd = memfd_create("fractos-queue", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -errno;
  size_t size = pair_bytes(ring_bytes);
  if (ftruncate(fd, off_t(size)) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  void* p = mmap(nullptr, PAIR_HEADER_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    close(fd);
    return -e;
  }
  init_pair(static_cast<uint8_t*>(p), ring_bytes);
  munmap(p, PAIR_HEADER_BYTES);
  if (fcntl(fd, F_ADD_SEALS, REQUIRED_SEALS | F_SEAL_SEAL) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/**
 * Check a received fd before mapping it: a memfd (F_GET_SEALS works) carrying at least
 * F_SEAL_SHRINK | F_SEAL_GROW, a regular file of exactly pair_bytes(ring_bytes) bytes. With
 * ring_bytes 0 the geometry is derived from the size (which must then be valid).
 * @return ring_bytes, or -EPROTO (not a memfd, seals missing, wrong size) / -errno of fstat.
 */
inline int64_t verify_pair_fd(int fd, uint32_t ring_bytes) {
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return -EPROTO;  // EINVAL: not a file that supports seals
  if ((seals & REQUIRED_SEALS) != REQUIRED_SEALS) return -EPROTO;
  struct stat st;
  if (fstat(fd, &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode) || st.st_size < off_t(PAIR_HEADER_BYTES)) return -EPROTO;
  uint64_t rb = ring_bytes ? ring_bytes : (uint64_t(st.st_size) - PAIR_HEADER_BYTES) / 2;
  if (!valid_ring_bytes(rb) || uint64_t(st.st_size) != pair_bytes(uint32_t(rb))) return -EPROTO;
  return int64_t(rb);
}

/** A verified, mapped pair (munmap on destruction). */
struct PairMap {
  uint8_t* base = nullptr;
  uint32_t ring_bytes = 0;
  size_t bytes = 0;
  PairMap() = default;
  PairMap(const PairMap&) = delete;
  PairMap& operator=(const PairMap&) = delete;
  ~PairMap() { unmap(); }
  void unmap() {
    if (base) munmap(base, bytes);
    base = nullptr;
  }
  /** Verify (verify_pair_fd) and map `fd` shared read-write. 0 or -errno (EPROTO refused). */
  int map(int fd, uint32_t want_ring_bytes) {
    int64_t rb = verify_pair_fd(fd, want_ring_bytes);
    if (rb < 0) return int(rb);
    size_t size = pair_bytes(uint32_t(rb));
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return -errno;
    unmap();
    base = static_cast<uint8_t*>(p);
    ring_bytes = uint32_t(rb);
    bytes = size;
    return 0;
  }
};

/** A non-blocking, close-on-exec eventfd (a doorbell). fd or -errno. */
inline int make_doorbell() {
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

/**
 * Send `n` (1..MAX_FDS) fds and `len` (>= 1) bytes in one message on a unix stream socket.
 * @return 0, -EINVAL (counts), -errno of sendmsg (a short write is -EIO).
 */
inline int send_fds(int sock, const int* fds, int n, const void* data, size_t len) {
  if (n < 1 || n > MAX_FDS || len < 1) return -EINVAL;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  iovec iov{const_cast<void*>(data), len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  fdstream::putRights(m, ctl, fds, n);
  ssize_t r;
  do r = sendmsg(sock, &m, MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  return size_t(r) == len ? 0 : -EIO;
}

/**
 * Receive one message with exactly `want` fds (1..MAX_FDS) and up to `cap` bytes. The fds
 * arrive close-on-exec (MSG_CMSG_CLOEXEC). Anything unexpected is refused with -EPROTO after
 * closing every fd that arrived: a truncated control message (more fds than MAX_FDS), another
 * count than `want`, a control message other than SCM_RIGHTS. @return bytes received (0: the
 * peer closed, no fds), or -errno (-EAGAIN on a non-blocking socket with nothing to read).
 */
inline ssize_t recv_fds(int sock, int* fds, int want, void* buf, size_t cap) {
  if (want < 1 || want > MAX_FDS || cap < 1) return -EINVAL;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  iovec iov{buf, cap};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = ctl;
  m.msg_controllen = sizeof ctl;
  ssize_t r;
  do r = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
  while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  int got[MAX_FDS];
  int ngot;
  bool bad = fdstream::takeRights(m, got, MAX_FDS, &ngot) || (m.msg_flags & MSG_TRUNC) != 0;
  if (bad || ngot != want) {
    for (int i = 0; i < ngot; i++) close(got[i]);
    if (r == 0 && ngot == 0 && !bad) return 0;
    return -EPROTO;
  }
  std::memcpy(fds, got, sizeof(int) * size_t(want));
  return r;
}

}  // namespace fractos::queue

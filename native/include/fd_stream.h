// File descriptors beside a framed byte stream on a unix socket (SCM_RIGHTS), shared by the
// native Controller's host (controller/src/host_conns.cc) and the client addon
// (native/queue/src/sock.cc). docs/protocol.md "Frames with file descriptors".
//
// Which frame an fd belongs to. A sender attaches the fds of a frame to a sendmsg() that
// starts at the frame's first byte and ends at or before its last byte (nothing of another
// frame in it; what the kernel does not take goes later as plain bytes). Linux attaches them to the first
// skb of that message, detaches them when a reader first consumes that skb, and ends the
// reader's recvmsg() right after it (unix_stream_read_generic: "if (scm.fp) break"). So the
// fds arrive in the recvmsg() that returns bytes of their frame last: they belong to the
// frame that holds the last byte of the read that brought them. Each received fd is tagged
// with the stream position where that read ended (`end`: bytes of the stream before it plus
// the read's length); the frame [start, stop) owns the fds with start < end <= stop. The
// rule needs no header field and stays exact when the reader's buffer ends inside the frame.
//
// Header-only, no exceptions; every call returns a value or -errno.
// An include guard, not #pragma once: the sanitizer build compiles a copy of controller/
// that reaches this header by two paths (two files to #pragma once).
#ifndef FRACTOS_INCLUDE_FD_STREAM_H
#define FRACTOS_INCLUDE_FD_STREAM_H

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

namespace fractos::fdstream {

/** Most fds one connection may hold received and not yet handled (more: EPROTO). */
constexpr int kMaxFds = 8;

/** Put one SCM_RIGHTS control message with `n` (1..kMaxFds) fds into `m` (ctl: CMSG_SPACE(kMaxFds ints), aligned). */
inline void putRights(msghdr& m, char* ctl, const int* fds, int n) {
  std::memset(ctl, 0, CMSG_SPACE(sizeof(int) * kMaxFds));
  m.msg_control = ctl;
  m.msg_controllen = CMSG_SPACE(sizeof(int) * size_t(n));
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * size_t(n));
  std::memcpy(CMSG_DATA(c), fds, sizeof(int) * size_t(n));
}

/**
 * The fds of a received message into got[0, cap) (*ngot of them; any beyond cap closed).
 * @return true when the message is not acceptable: truncated control data (MSG_CTRUNC) or a
 * control message that is not SCM_RIGHTS (the caller closes what it got and refuses).
 */
inline bool takeRights(msghdr& m, int* got, int cap, int* ngot) {
  *ngot = 0;
  bool bad = (m.msg_flags & MSG_CTRUNC) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k; i++) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        if (*ngot < cap) got[(*ngot)++] = fd;
        else close(fd);
      }
    } else {
      bad = true;  // SCM_CREDENTIALS etc.: never asked for
    }
  }
  return bad;
}

/** Received fds, oldest first, each tagged with the stream position its read ended at. */
struct RxFds {
  struct Entry {
    int fd;
    uint64_t end;
  };
  Entry q[kMaxFds];
  int n = 0;

  RxFds() = default;
  RxFds(const RxFds&) = delete;
  RxFds& operator=(const RxFds&) = delete;
  ~RxFds() { closeAll(); }

  /** The oldest fd owned by the frame [start, stop) (see the file comment), removed; -1 when none. */
  int take(uint64_t start, uint64_t stop) {
    if (n == 0 || !(q[0].end > start && q[0].end <= stop)) return -1;
    int fd = q[0].fd;
    std::memmove(q, q + 1, sizeof(Entry) * size_t(n - 1));
    n--;
    return fd;
  }
  /** Close the fds of every frame that ends at or before `stop` (handled: not taken = dropped). */
  void dropThrough(uint64_t stop) {
    int k = 0;
    while (k < n && q[k].end <= stop) close(q[k++].fd);
    if (k) {
      std::memmove(q, q + k, sizeof(Entry) * size_t(n - k));
      n -= k;
    }
  }
  void closeAll() {
    for (int i = 0; i < n; i++) close(q[i].fd);
    n = 0;
  }
};

/**
 * recvmsg() on a non-blocking unix stream socket into buf[0, cap), fds (close-on-exec) into
 * `rx` tagged with `pos + bytes read`. Refused with -EPROTO, after closing every fd that
 * arrived: a truncated control message (MSG_CTRUNC: more than kMaxFds fds in one message),
 * a control message that is not SCM_RIGHTS, fds with no byte, or more than kMaxFds held.
 * @return bytes read (0: EOF), -EAGAIN, or -errno.
 */
inline ssize_t recvWithFds(int sock, void* buf, size_t cap, RxFds& rx, uint64_t pos) {
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  iovec iov{buf, cap};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = ctl;
  m.msg_controllen = sizeof ctl;
  ssize_t r;
  do r = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  if (m.msg_controllen == 0 && !(m.msg_flags & MSG_CTRUNC)) return r;
  int got[kMaxFds];
  int ngot;
  bool bad = takeRights(m, got, kMaxFds, &ngot);
  if (bad || r == 0 || rx.n + ngot > kMaxFds) {
    for (int i = 0; i < ngot; i++) close(got[i]);
    return -EPROTO;
  }
  for (int i = 0; i < ngot; i++) rx.q[rx.n++] = RxFds::Entry{got[i], pos + uint64_t(r)};
  return r;
}

/**
 * sendmsg() of `iov` with `nfds` (0..kMaxFds) fds attached (SCM_RIGHTS), non-blocking.
 * @return bytes taken (the fds went with the first of them when > 0), -EAGAIN, or -errno.
 */
inline ssize_t sendWithFds(int sock, const iovec* iov, int iovcnt, const int* fds, int nfds) {
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr m{};
  m.msg_iov = const_cast<iovec*>(iov);
  m.msg_iovlen = size_t(iovcnt);
  if (nfds > 0) {
    if (nfds > kMaxFds) return -EINVAL;
    putRights(m, ctl, fds, nfds);
  }
  ssize_t r;
  do r = sendmsg(sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : r;
}

/**
 * Fds waiting in an output queue with the frame they go with: `pos` is the queue position
 * (bytes ever queued before the frame's first byte). At most kMaxQueuedFds per queue.
 */
constexpr int kMaxQueuedFds = 64;
struct TxMark {
  uint64_t pos;
  uint64_t len;  // the frame's bytes: the sendmsg carrying the fds covers no byte after them
  int n;
  int fds[kMaxFds];

  /** A mark holding duplicates (close-on-exec) of fds[0, n). 0, or -errno (none kept). */
  int dup(uint64_t at, uint64_t bytes, const int* src, int count) {
    pos = at;
    len = bytes;
    n = 0;
    for (int i = 0; i < count; i++) {
      int d = fcntl(src[i], F_DUPFD_CLOEXEC, 0);
      if (d < 0) {
        int e = errno;
        release();
        return -e;
      }
      fds[n++] = d;
    }
    return 0;
  }
  void release() {
    for (int i = 0; i < n; i++) close(fds[i]);
    n = 0;
  }
};

/**
 * Bytes waiting to be written somewhere that takes them a part at a time (a socket, a ring):
 * [data(), data() + size()). Appending copies (the caller reuses its buffers); the consumed
 * head is dropped when it is at least half the buffer, so appends stay amortised O(bytes).
 * One implementation for the Controller's sockets and rings and the client's ring backlog.
 */
class ByteQueue {
 public:
  size_t size() const { return buf_.size() - head_; }
  const uint8_t* data() const { return buf_.data() + head_; }

  /** Copy the bytes of iov after the first `skip` (those already taken). */
  void append(const iovec* iov, int iovcnt, size_t skip) {
    compact();
    for (int i = 0; i < iovcnt; i++) {
      const uint8_t* p = static_cast<const uint8_t*>(iov[i].iov_base);
      size_t n = iov[i].iov_len;
      if (skip >= n) {
        skip -= n;
        continue;
      }
      buf_.insert(buf_.end(), p + skip, p + n);
      skip = 0;
    }
  }

  /** `n` more bytes at the end, for the caller to fill at once (e.g. a guarded copy). */
  uint8_t* extend(size_t n) {
    compact();
    const size_t at = buf_.size();
    buf_.resize(at + n);
    return buf_.data() + at;
  }

  /** The first `n` bytes (n <= size()) were taken. */
  void consume(size_t n) { head_ += n; }

  /** Empty; a buffer grown past `keepBytes` is given back. */
  void clear(size_t keepBytes = 256 * 1024) {
    buf_.clear();
    head_ = 0;
    if (buf_.capacity() > keepBytes) buf_.shrink_to_fit();
  }

 private:
  void compact() {
    if (head_ > 0 && head_ >= buf_.size() / 2) {
      buf_.erase(buf_.begin(), buf_.begin() + long(head_));
      head_ = 0;
    }
  }

  std::vector<uint8_t> buf_;
  size_t head_ = 0;
};

/**
 * The bytes of a socket not yet taken by the kernel, with the fds of the frames among them
 * (TxMark): a write stops before a mark, and a write that starts at a mark carries its fds
 * and covers only that frame (the rule of the file comment). Used by the Controller's conns
 * and the client's socket alike. Fds queued: at most kMaxQueuedFds (`mark` refuses more).
 */
class OutQueue {
 public:
  OutQueue() = default;
  OutQueue(const OutQueue&) = delete;
  OutQueue& operator=(const OutQueue&) = delete;
  ~OutQueue() { clear(); }

  size_t size() const { return bytes_.size(); }

  /** Copy the bytes of iov after the first `skip` (those the kernel took). */
  void append(const iovec* iov, int iovcnt, size_t skip) { bytes_.append(iov, iovcnt, skip); }

  /** `n` more bytes at the end, for the caller to fill at once (e.g. a guarded copy). */
  uint8_t* extend(size_t n) { return bytes_.extend(n); }

  /**
   * The next `frameBytes` appended are one frame that leaves with duplicates of fds[0, n).
   * Call before append(). @return 0, -EMFILE (more than kMaxQueuedFds would wait), or the
   * -errno of a failed dup.
   */
  int mark(uint64_t frameBytes, const int* fds, int n) {
    if (nfds_ + n > kMaxQueuedFds) return -EMFILE;
    TxMark m;
    if (int e = m.dup(pos_ + size(), frameBytes, fds, n)) return e;
    marks_.push_back(m);
    nfds_ += n;
    return 0;
  }

  /** Write what the kernel takes. @return 0 (empty, or the socket is full), or -errno. */
  int flush(int sock) {
    while (size() > 0) {
      size_t n = size();
      TxMark* m = marks_.empty() ? nullptr : &marks_.front();
      bool atMark = m && m->pos == pos_;
      if (m && !atMark) n = std::min<uint64_t>(n, m->pos - pos_);
      if (atMark) n = std::min<uint64_t>(n, m->len);
      iovec iov{const_cast<uint8_t*>(bytes_.data()), n};
      ssize_t w = sendWithFds(sock, &iov, 1, atMark ? m->fds : nullptr, atMark ? m->n : 0);
      if (w < 0) return w == -EAGAIN ? 0 : int(w);
      if (atMark && w > 0) {
        nfds_ -= m->n;
        m->release();
        marks_.pop_front();
      }
      bytes_.consume(size_t(w));
      pos_ += uint64_t(w);
    }
    bytes_.clear();
    return 0;
  }

  /** Drop every queued byte and close every queued fd. */
  void clear() {
    pos_ += size();
    bytes_.clear();
    for (auto& m : marks_) m.release();
    marks_.clear();
    nfds_ = 0;
  }

 private:
  ByteQueue bytes_;
  uint64_t pos_ = 0;  // queue position of bytes_.data()
  std::deque<TxMark> marks_;
  int nfds_ = 0;
};

}  // namespace fractos::fdstream

#endif  // FRACTOS_INCLUDE_FD_STREAM_H

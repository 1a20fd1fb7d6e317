// Connections of the native Controller: listeners, accept, framing, output queues and their
// bound, the hello timeout, closing and link counters.
//
// Framing (docs/protocol.md "Framing", libfractos/link.ts FrameDecoder): a u32 length in
// [16, maxFrameBytes], reserved header fields (bytes 6..7 and 14..15) zero; anything else
// closes the connection (EPROTO) and no frame after the bad one is handled. The input buffer
// holds at most one frame.
//
// Output: a frame is written at once (writev) when nothing is queued; what the kernel does
// not take is copied to the connection's queue and drained on EPOLLOUT. A Process channel
// (after HELLO) is not read while its queue holds more than maxOutboundBytes (readPauses
// counts it); once the queue is back at or under it, reading resumes and the core is told
// (drained). Peer links are never paused: two Controllers that both stopped reading would
// deadlock.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "host_impl.h"
#include "sigbus_guard.h"

namespace fractos {

namespace {
constexpr uint64_t kListenerTag = 1ull << 62;
/** Size of a read when the frame length is not known yet, and the input buffer kept when idle. */
constexpr size_t kReadChunk = 64 * 1024;
/** Size of a read on a peer link outside a reassembled frame (zero-copy receive, startSink). */
constexpr size_t kPeerReadChunk = 4096;

uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

std::string sockRemote(int fd) {
  struct sockaddr_storage ss{};
  socklen_t sl = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &sl) != 0) return "?";
  char buf[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(a->sin6_port));
  }
  return "unix";
}
}  // namespace

int HostImpl::listen(const HostAddr& a, std::string* bound, std::string* err) {
  int fd;
  if (a.unix) {
    struct sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (a.path.size() >= sizeof sa.sun_path) {
      *err = "unix:" + a.path + ": path too long";
      return -EINVAL;
    }
    memcpy(sa.sun_path, a.path.data(), a.path.size());
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return *err = strerror(errno), -errno;
    if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 511) != 0) {
      int e = errno;
      ::close(fd);
      *err = a.text + ": " + strerror(e);
      return -e;
    }
    *bound = a.text;
    listeners_.push_back({fd, true, a.path});
    return 0;
  }
  struct addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  std::string port = std::to_string(a.port);
  int g = getaddrinfo(a.host.c_str(), port.c_str(), &hints, &res);
  if (g != 0 || !res) {
    *err = a.text + ": " + gai_strerror(g);
    return -EINVAL;
  }
  fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int e = errno;
    freeaddrinfo(res);
    return *err = strerror(e), -e;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 511) != 0) {
    int e = errno;
    freeaddrinfo(res);
    ::close(fd);
    *err = a.text + ": " + strerror(e);
    return -e;
  }
  freeaddrinfo(res);
  struct sockaddr_storage ss{};
  socklen_t sl = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl);
  uint16_t p = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                        : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  std::string h = a.host.find(':') != std::string::npos ? "[" + a.host + "]" : a.host;
  *bound = "tcp://" + h + ":" + std::to_string(p);
  listeners_.push_back({fd, false, ""});
  return 0;
}

Conn* HostImpl::addConn(int fd, ConnState st, bool unixSock, std::string remote) {
  auto c = std::make_unique<Conn>();
  c->id = nextConn_++;
  c->fd = fd;
  c->state = st;
  c->unixSock = unixSock;
  c->remote = std::move(remote);
  Conn* p = c.get();
  conns_.emplace(p->id, std::move(c));
  p->epollMask = st == ConnState::Connecting ? EPOLLOUT : EPOLLIN;
  p->epollMask |= EPOLLRDHUP;
  struct epoll_event ev{};
  ev.events = p->epollMask;
  ev.data.u64 = p->id;
  epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
  return p;
}

void HostImpl::onListener(size_t idx) {
  if (idx >= listeners_.size()) return;
  const Listener& l = listeners_[idx];
  for (int i = 0; i < 64; i++) {
    int fd = accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      if (e == EAGAIN || e == EINTR || e == ECONNABORTED || e == EPROTO) return;
      // Out of fds or memory: the pending connection stays in the backlog and epoll would
      // report it at once again; stop watching this listener for 100 ms (one warn each time).
      log(LogLevel::Warn, "listener error; not accepting for 100 ms", "{\"err\":" + jsonStr(strerror(e)) + "}");
      int lfd = l.fd;
      epoll_ctl(ep_, EPOLL_CTL_DEL, lfd, nullptr);
      setTimer(100, [this, idx, lfd] {
        if (idx >= listeners_.size() || listeners_[idx].fd != lfd) return;
        struct epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = kListenerTag | idx;
        epoll_ctl(ep_, EPOLL_CTL_ADD, lfd, &ev);
      });
      return;
    }
    uint32_t pid = 0;
    int64_t uid = -1;
    if (l.unix) {
      struct ucred cr{};
      socklen_t cl = sizeof cr;
      if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0) {
        pid = uint32_t(cr.pid);
        uid = int64_t(cr.uid);
      }
    } else {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    Conn* c = addConn(fd, ConnState::Hello, l.unix, l.unix ? "unix" : sockRemote(fd));
    c->kernelPid = pid;
    c->kernelUid = uid;
    ConnId id = c->id;
    uint32_t ms = opts_.helloTimeoutMs;
    c->timer = setTimer(ms, [this, id, ms] {
      auto it = conns_.find(id);
      if (it == conns_.end() || it->second->state != ConnState::Hello) return;
      Conn* cc = it->second.get();
      cc->timer = 0;
      log(LogLevel::Info, "no hello: connection closed",
          "{\"remote\":" + jsonStr(cc->remote) + ",\"ms\":" + std::to_string(ms) + "}");
      closeConn(cc, "", LogLevel::Debug);
    });
  }
}

void HostImpl::onConnEvent(ConnId id, uint32_t events) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn* c = it->second.get();
  if (c->fd < 0) return;
  if (c->state == ConnState::Lingering) {
    if (!c->in.empty()) {
      c->in.clear();
      c->in.shrink_to_fit();
    }
    char buf[4096];
    ssize_t r;
    while ((r = ::read(c->fd, buf, sizeof buf)) > 0) {
    }
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR) || (events & (EPOLLHUP | EPOLLERR))) finishConn(id);
    return;
  }
  if (c->state == ConnState::Connecting) {
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) onConnected(c);
    return;
  }
  if (events & EPOLLOUT) flushConn(c);
  if (c->state == ConnState::Lingering) return;
  if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && !c->paused) readConn(c);
  else if (events & (EPOLLHUP | EPOLLERR)) closeConn(c, "", LogLevel::Debug);
}

void HostImpl::readConn(Conn* c) {
  const uint32_t maxFrame = opts_.core.limits.maxFrameBytes;
  // Bounded reads per event: a flooding connection cannot starve the others.
  for (int round = 0; round < 16; round++) {
    if (c->state == ConnState::Lingering || c->paused) return;
    if (c->sinking) {
      int s = readSink(c);  // a peer frame's payload straight into a mapping (host_peers.cc)
      if (s < 0) return;
      if (s == 0) break;
      continue;
    }
    // how much room: the whole current frame when its length is known, else a chunk
    size_t want = kReadChunk;
    if (c->inLen >= 4) {
      // checked before any buffer grows for it
      uint32_t len = rd32(c->in.data());
      if (len < kHeaderBytes || len > maxFrame) {
        closeConn(c, "frame length " + std::to_string(len) + " outside [16, " + std::to_string(maxFrame) + "]",
                  LogLevel::Debug);
        return;
      }
      want = std::max<size_t>(len, kReadChunk);
    }
    if (c->in.size() < want) c->in.resize(want);
    size_t room = c->in.size() - c->inLen;
    // A peer link reads a little at a time unless it reassembles a frame: the payload of a
    // copy chunk then goes from the socket to its mapping (startSink), not through `in`.
    if (c->state == ConnState::Peer && !c->plainFrame) room = std::min(room, kPeerReadChunk);
    ssize_t r;
    if (c->unixSock) {
      // fds beside the stream (docs/protocol.md "Frames with file descriptors")
      r = fdstream::recvWithFds(c->fd, c->in.data() + c->inLen, room, c->rxFds, c->sockIn);
      if (r == -EPROTO) {
        closeConn(c, "bad control message (fds): more than " + std::to_string(fdstream::kMaxFds) +
                         " fds held, a truncated or a foreign one (EPROTO)", LogLevel::Info);
        return;
      }
      if (r < 0) errno = int(-r);
    } else {
      r = ::read(c->fd, c->in.data() + c->inLen, room);
    }
    if (r == 0) {
      closeConn(c, "", LogLevel::Debug);
      return;
    }
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      closeConn(c, "", LogLevel::Debug);
      return;
    }
    c->inLen += size_t(r);
    c->sockIn += uint64_t(r);
    c->st.bytesIn += uint64_t(r);
    // stream position of in[0]: the fds of a frame are found by it (fd_stream.h)
    if (!takeFrames(c, c->in, c->inLen, c->sockIn - c->inLen, true)) return;
    if (c->sinking) continue;
    if (size_t(r) < room) break;  // the socket is probably empty
  }
  // An idle connection keeps a small buffer (a 16 MiB frame's buffer goes with it).
  if (c->inLen == 0 && c->in.size() > kReadChunk) {
    c->in.resize(kReadChunk);
    c->in.shrink_to_fit();
  }
}

bool HostImpl::takeFrames(Conn* c, std::vector<uint8_t>& in, size_t& inLen, uint64_t base, bool sock) {
  const uint32_t maxFrame = opts_.core.limits.maxFrameBytes;
  size_t off = 0;
  bool open = true;
  while (inLen - off >= kHeaderBytes) {
    const uint8_t* h = in.data() + off;
    uint32_t len = rd32(h);
    if (len < kHeaderBytes || len > maxFrame) {
      closeConn(c, "frame length " + std::to_string(len) + " outside [16, " + std::to_string(maxFrame) + "]", LogLevel::Debug);
      return false;
    }
    if (rd16(h + 6) != 0 || rd16(h + 14) != 0) {
      closeConn(c, "reserved header fields must be 0", LogLevel::Debug);
      return false;
    }
    if (inLen - off < len) {
      // A large peer frame not complete yet: a copy chunk's payload may go from the socket
      // straight to its mapping (startSink), its buffered bytes consumed.
      if (sock && c->state == ConnState::Peer && len >= kPeerSinkMinBytes && !c->plainFrame &&
          inLen - off >= kPeerSinkPeekBytes) {
        if (startSink(c, off, len)) inLen = off;
        else c->plainFrame = true;
        if (c->state == ConnState::Lingering) return false;
      }
      break;
    }
    c->plainFrame = false;
    c->st.framesIn++;
    if (sock) {
      fdConn_ = c->id;
      fdStart_ = base + off;
      fdStop_ = base + off + len;
    }
    handleFrame(c, h, len);
    fdConn_ = 0;
    // the fds of this frame (and of none later) that the core did not take
    if (sock && c->rxFds.n) c->rxFds.dropThrough(base + off + len);
    off += len;
    if (c->state == ConnState::Lingering) {
      open = false;
      break;
    }
  }
  if (off && open) {
    memmove(in.data(), in.data() + off, inLen - off);
    inLen -= off;
  }
  return open;
}

void HostImpl::handleFrame(Conn* c, const uint8_t* f, size_t len) {
  uint16_t op = rd16(f + 4);
  switch (c->state) {
    case ConnState::Hello:
      cancelTimer(c->timer);
      c->timer = 0;
      if (op == kOpHello) {
        // A Process's calls make our frames to it: bound its backlog from now on.
        c->state = ConnState::Process;
        c->limitBacklog = true;
        c->counted = true;
        c->st.peer = false;
        helloConn_ = c->id;  // attachQueue is allowed during this call
        core_->processHello(c->id, c->kernelPid, c->unixSock, f, len);
        helloConn_ = 0;
      } else if (op == kOpPeerHello) {
        acceptPeerHello(c, f, len);
      } else {
        closeConn(c, "first frame must be HELLO or PEER_HELLO, got op " + std::to_string(op), LogLevel::Debug);
      }
      return;
    case ConnState::Process:
      core_->processFrame(c->id, f, len);
      return;
    case ConnState::Peer:
      core_->peerFrame(c->id, f, len);
      return;
    case ConnState::AcceptAuth:
      acceptPeerAuth(c, f, len);
      return;
    case ConnState::DialHello:
      dialPeerHello(c, f, len);
      return;
    default:
      return;
  }
}

bool HostImpl::sendRaw(Conn* c, const uint8_t* p, size_t n) {
  struct iovec iov{const_cast<uint8_t*>(p), n};
  send(c->id, &iov, 1);
  return c->state != ConnState::Lingering;
}

void HostImpl::send(ConnId id, const struct iovec* iov, int iovcnt) { sendImpl(id, iov, iovcnt, false); }

bool HostImpl::sendFromMapping(ConnId id, const struct iovec* iov, int iovcnt) { return sendImpl(id, iov, iovcnt, true); }

bool HostImpl::sendImpl(ConnId id, const struct iovec* iov, int iovcnt, bool guarded) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return false;
  Conn* c = it->second.get();
  if (c->state == ConnState::Lingering || c->state == ConnState::Connecting || c->fd < 0) return false;
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
  c->st.framesOut++;
  c->st.bytesOut += total;
  if (c->q && c->state == ConnState::Process) {
    queueSend(c, iov, iovcnt, total, false);  // host_queue.cc
    return false;
  }
  size_t done = 0;
  if (c->out.size() == 0) {
    struct msghdr mh{};
    mh.msg_iov = const_cast<struct iovec*>(iov);
    mh.msg_iovlen = size_t(iovcnt);
    ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      // EFAULT (guarded): nothing taken; the guarded copy below finds the fault.
      if (errno != EAGAIN && errno != EINTR && !(guarded && errno == EFAULT)) {
        closeConn(c, "", LogLevel::Debug);
        return false;
      }
      w = 0;
    }
    done = size_t(w);
    if (done == total) return false;
  }
  return queueOut(c, iov, iovcnt, done, guarded);
}

bool HostImpl::queueOut(Conn* c, const struct iovec* iov, int iovcnt, size_t skip, bool guarded) {
  // queue the rest (copied: the caller reuses its buffers)
  bool faulted = false;
  if (!guarded) {
    c->out.append(iov, iovcnt, skip);
  } else {
    for (int i = 0; i < iovcnt; i++) {
      const uint8_t* p = static_cast<const uint8_t*>(iov[i].iov_base);
      size_t n = iov[i].iov_len;
      if (skip >= n) {
        skip -= n;
        continue;
      }
      if (i == 0) {
        struct iovec part{const_cast<uint8_t*>(p + skip), n - skip};
        c->out.append(&part, 1, 0);
      } else {
        // zeros where the mapping cannot be read (and after a fault: the frame stays whole)
        uint8_t* at = c->out.extend(n - skip);
        if (!faulted && guardedMove(at, p + skip, n - skip)) faulted = true;
        if (faulted) std::memset(at, 0, n - skip);
      }
      skip = 0;
    }
  }
  if (!(c->epollMask & EPOLLOUT)) {
    c->epollMask |= EPOLLOUT;
    updateMask(c);
  }
  afterBacklogChange(c);
  return faulted;
}

void HostImpl::sendWithFds(ConnId id, const struct iovec* iov, int iovcnt, const int* fds, int nfds) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn* c = it->second.get();
  if (nfds <= 0) return send(id, iov, iovcnt);
  if (c->state == ConnState::Lingering || c->state == ConnState::Connecting || c->fd < 0 || !c->unixSock) return;
  if (nfds > fdstream::kMaxFds) {
    log(LogLevel::Warn, "sendWithFds: more than 8 fds in one frame (dropped)", "{\"conn\":" + std::to_string(id) + "}");
    return;
  }
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
  c->st.framesOut++;
  c->st.bytesOut += total;
  if (c->out.size() == 0) {
    ssize_t w = fdstream::sendWithFds(c->fd, iov, iovcnt, fds, nfds);
    if (w < 0 && w != -EAGAIN) {
      closeConn(c, "", LogLevel::Debug);
      return;
    }
    if (w > 0) {  // the fds went with the first byte
      if (size_t(w) < total) queueOut(c, iov, iovcnt, size_t(w));
      return;
    }
  }
  // queued: duplicates of the fds leave with the frame's first byte (flushConn)
  if (int e = c->out.mark(total, fds, nfds)) {
    closeConn(c, e == -EMFILE ? "more than " + std::to_string(fdstream::kMaxQueuedFds) + " fds waiting to be read"
                              : std::string("dup of an fd to send: ") + strerror(-e),
              LogLevel::Info);
    return;
  }
  queueOut(c, iov, iovcnt, 0);
}

int HostImpl::takeFd(ConnId id) {
  if (id != fdConn_ || id == 0) return -1;
  auto it = conns_.find(id);
  if (it == conns_.end()) return -1;
  return it->second->rxFds.take(fdStart_, fdStop_);
}

uint64_t HostImpl::backlog(ConnId id) const {
  auto it = conns_.find(id);
  if (it == conns_.end() || it->second->state == ConnState::Lingering) return 0;
  return it->second->backlog();
}

void HostImpl::flushConn(Conn* c) {
  // fds leave with their frame's first byte and no byte of another frame (fd_stream.h)
  if (c->out.flush(c->fd) < 0) {
    if (c->state != ConnState::Lingering) closeConn(c, "", LogLevel::Debug);
    return;
  }
  if (c->state == ConnState::Lingering) return;
  if (c->out.size() == 0 && (c->epollMask & EPOLLOUT)) {
    c->epollMask &= ~uint32_t(EPOLLOUT);
    updateMask(c);
  }
  afterBacklogChange(c);
}

void HostImpl::afterBacklogChange(Conn* c) {
  const uint64_t high = opts_.core.limits.maxOutboundBytes;
  uint64_t b = c->backlog();
  c->st.backlogBytes = b;
  if (b > high) {
    c->above = true;
    if (c->limitBacklog && !c->paused) {
      c->paused = true;
      c->st.readPauses++;
      // level-triggered: a half-closed Process would report RDHUP forever while not read
      c->epollMask &= ~uint32_t(EPOLLIN | EPOLLRDHUP);
      updateMask(c);
    }
  } else if (c->above) {
    c->above = false;
    if (c->paused) {
      c->paused = false;
      c->epollMask |= EPOLLIN | EPOLLRDHUP;
      updateMask(c);
      if (c->q && !c->q->ready) {  // read ring 0 again before the loop sleeps
        c->q->ready = true;
        readyQueues_.push_back(c->id);
      }
    }
    if (c->state == ConnState::Process || c->state == ConnState::Peer) core_->drained(c->id);
  }
}

void HostImpl::updateMask(Conn* c) {
  struct epoll_event ev{};
  ev.events = c->epollMask;
  ev.data.u64 = c->id;
  epoll_ctl(ep_, EPOLL_CTL_MOD, c->fd, &ev);
}

void HostImpl::close(ConnId id, const std::string& why) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  closeConn(it->second.get(), why.empty() ? "closed by the controller" : why, LogLevel::Info);
}

void HostImpl::closeConn(Conn* c, const std::string& why, LogLevel level) {
  if (c->state == ConnState::Lingering) return;
  ConnState was = c->state;
  if (!why.empty() && level != LogLevel::Debug) {
    log(level, "connection closed: " + why,
        "{\"conn\":" + std::to_string(c->id) + ",\"remote\":" + jsonStr(c->remote) +
            (c->counted ? ",\"name\":" + jsonStr(c->st.name) : "") + "}");
  }
  if (c->timer) cancelTimer(c->timer);
  c->timer = 0;
  // Hand what the kernel takes now (an error reply before the close), then FIN; the input
  // is read and dropped until the other side closes too, so that our last frames are not
  // lost to a reset.
  // Lingering before the flush: a write error inside flushConn must not close it again
  // (closeConn -> flushConn -> closeConn recursed until the stack overflowed when a
  // Process that had stopped reading reset its socket).
  c->state = ConnState::Lingering;
  if (c->fd >= 0 && was != ConnState::Connecting) flushConn(c);
  c->paused = false;
  c->above = false;
  c->sinking = false;
  c->out.clear();
  c->rxFds.closeAll();
  if (c->q) {
    // entries pushed to ring 1 in this iteration (an error reply sent just before the close)
    // still become visible, as a socket's last write does
    if (c->q->touched && was == ConnState::Process) c->q->ep.tx.publish();
    // no more rings: the doorbell leaves epoll now; the mapping stays until finishConn (the
    // core may still read the frame it was handed from q->in when it closed the conn)
    epoll_ctl(ep_, EPOLL_CTL_DEL, c->q->ctlEfd, nullptr);
    c->q->out.clear();
  }
  // `in` stays: the core may still read the frame it was handed when it closed the conn
  // (freed when the linger reads, or with the conn)
  c->inLen = 0;
  if (c->counted) {
    LinkStats s = c->st;
    s.closed = true;
    s.backlogBytes = 0;
    if (closedStats_.size() < kMaxClosedStats) {
      closedStats_.push_back(std::move(s));
    } else {
      closedStats_[closedHead_] = std::move(s);
      closedHead_ = (closedHead_ + 1) % kMaxClosedStats;
    }
  }
  if (was == ConnState::Process || was == ConnState::Peer) deferred_.push_back(c->id);
  if (was == ConnState::Peer) peerLinkClosed(c);
  if ((was == ConnState::DialHello || was == ConnState::AcceptAuth || was == ConnState::Connecting) && !c->hsOver) {
    c->hsOver = true;
    handshakeClosed(c, was);
  }
  if (was == ConnState::Connecting || was == ConnState::DialHello || was == ConnState::AcceptAuth) {
    // a failed dial or handshake: nothing to linger for
    finishConn(c->id);
    return;
  }
  if (was == ConnState::Peer && c->dialer) retryDial(c->dialIndex, 0, "link closed", false);
  ::shutdown(c->fd, SHUT_WR);
  c->epollMask = EPOLLIN | EPOLLRDHUP;
  updateMask(c);
  ConnId id = c->id;
  c->timer = setTimer(kLingerMs, [this, id] { finishConn(id); });
}

void HostImpl::finishConn(ConnId id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn* c = it->second.get();
  if (c->timer) cancelTimer(c->timer);
  if (c->fd >= 0) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, c->fd, nullptr);
    ::close(c->fd);
  }
  c->fd = -1;
  c->timer = 0;
  c->state = ConnState::Lingering;
  if (c->q) c->q.reset();  // unmap, close the memfd and doorbells (out of epoll since closeConn)
  // erased by runDeferred, after the event that closed it (callers may still hold `c`)
  dead_.push_back(id);
}

void HostImpl::runDeferred() {
  while (!deferred_.empty()) {
    std::vector<ConnId> ids;
    ids.swap(deferred_);
    for (ConnId id : ids) {
      auto it = conns_.find(id);
      if (it == conns_.end()) continue;
      bool peer = it->second->peerLink;
      if (stopping_) continue;
      if (peer) core_->peerClosed(id);
      else core_->processClosed(id);
    }
  }
  for (ConnId id : dead_) conns_.erase(id);
  dead_.clear();
}

void HostImpl::setLinkInfo(ConnId id, bool peer, uint32_t pid, const std::string& name) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  it->second->st.peer = peer;
  it->second->st.id = pid;
  it->second->st.name = name.substr(0, 256);
}

uint32_t HostImpl::handshaking() const {
  uint32_t n = 0;
  for (auto& [id, c] : conns_) n += c->state == ConnState::DialHello || c->state == ConnState::AcceptAuth;
  return n;
}

std::vector<LinkStats> HostImpl::linkStats() const {
  std::vector<LinkStats> out;
  out.reserve(closedStats_.size() + conns_.size());
  for (size_t i = 0; i < closedStats_.size(); i++) out.push_back(closedStats_[(closedHead_ + i) % closedStats_.size()]);
  std::vector<const Conn*> live;
  for (auto& [id, c] : conns_) {
    if (c->counted && c->state != ConnState::Lingering) live.push_back(c.get());
  }
  std::sort(live.begin(), live.end(), [](const Conn* a, const Conn* b) { return a->id < b->id; });
  for (const Conn* c : live) {
    LinkStats s = c->st;
    s.backlogBytes = c->backlog();
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace fractos

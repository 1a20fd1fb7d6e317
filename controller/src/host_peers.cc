// Peer links of the native Controller, up to the end of their handshake: the static peer
// list, dialling (the higher id dials the lower) with backoff, redial after a drop, the
// warnings for peers that should dial us, and the mutual HMAC handshake of docs/protocol.md
// "Peer handshake" (same frames, proofs and log lines as the TS controller/peer-auth.ts):
//
//   dialer   -> acceptor  PEER_HELLO  u32 id, u32 epoch, u8[32] nonce
//   acceptor -> dialer    PEER_HELLO  u32 id, u32 epoch, u8[32] nonce, u8[32] proof('A')
//   dialer   -> acceptor  PEER_AUTH   u8[32] proof('D')
//
// proof(role) = HMAC-SHA256(secret, "fractos peer auth v1\0" | role | dialer nonce |
// acceptor nonce | u32 dialer id | u32 dialer epoch | u32 acceptor id | u32 acceptor epoch),
// integers little-endian. Nonces from getrandom(2); proofs compared with CRYPTO_memcmp. The
// acceptor only answers ids in its list and higher than its own, reads nothing but PEER_AUTH
// before the dialer's proof checks, and the whole handshake is bounded by 5 s. Then
// Core::peerUp decides whether the link replaces a live one (epoch policy).
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "host_impl.h"
#include "sigbus_guard.h"

namespace fractos {

namespace {
constexpr char kLabel[] = "fractos peer auth v1";  // + its NUL: 21 bytes
constexpr size_t kDialerHelloBody = 8 + kNonceBytes;
constexpr size_t kAcceptorHelloBody = 8 + kNonceBytes + kProofBytes;

void wr32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
void header(uint8_t* f, uint32_t len, uint16_t op) {
  memset(f, 0, kHeaderBytes);
  wr32(f, len);
  memcpy(f + 4, &op, 2);
}
bool randomBytes(uint8_t* p, size_t n) {
  while (n) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= size_t(r);
  }
  return true;
}
/** Whether attempt `n` of a dial failing in a row is logged (1, 2, 4, ..., 32, then every 30th). */
bool logDialFailure(uint32_t attempt) {
  if (attempt < 1) return false;  // a redial right after a link closed (logged as 'peer disconnected')
  return attempt <= 32 ? (attempt & (attempt - 1)) == 0 : attempt % 30 == 0;
}
/** Seconds with one decimal as JS prints Math.round(ms / 100) / 10. */
std::string seconds(uint64_t ms) {
  uint64_t tenths = (ms + 50) / 100;
  return tenths % 10 ? std::to_string(tenths / 10) + "." + std::to_string(tenths % 10) : std::to_string(tenths / 10);
}
}  // namespace

void peerProof(const std::vector<uint8_t>& secret, char role, const uint8_t dialerNonce[kNonceBytes],
               const uint8_t acceptorNonce[kNonceBytes], uint32_t dialerId, uint32_t dialerEpoch,
               uint32_t acceptorId, uint32_t acceptorEpoch, uint8_t out[kProofBytes]) {
  uint8_t msg[sizeof kLabel + 1 + 2 * kNonceBytes + 16];
  size_t o = 0;
  memcpy(msg, kLabel, sizeof kLabel);  // with its NUL
  o += sizeof kLabel;
  msg[o++] = uint8_t(role);
  memcpy(msg + o, dialerNonce, kNonceBytes);
  o += kNonceBytes;
  memcpy(msg + o, acceptorNonce, kNonceBytes);
  o += kNonceBytes;
  wr32(msg + o, dialerId);
  wr32(msg + o + 4, dialerEpoch);
  wr32(msg + o + 8, acceptorId);
  wr32(msg + o + 12, acceptorEpoch);
  o += 16;
  unsigned int outLen = kProofBytes;
  HMAC(EVP_sha256(), secret.data(), int(secret.size()), msg, o, out, &outLen);
}

bool HostImpl::peerListed(uint32_t id) const {
  return peerAddr(id) != nullptr;
}

const HostAddr* HostImpl::peerAddr(uint32_t id) const {
  for (auto& [pid, a] : opts_.peers) {
    if (pid == id) return &a;
  }
  return nullptr;
}

void HostImpl::startPeers() {
  const uint32_t self = opts_.core.id;
  for (size_t i = 0; i < opts_.peers.size(); i++) {
    uint32_t id = opts_.peers[i].first;
    if (id < self) dialPeer(i, 0);
    else if (id > self) awaitPeer(id, 0, opts_.peerWaitWarnMs);
  }
}

void HostImpl::dialPeer(size_t idx, uint32_t attempt) {
  if (stopping_ || idx >= opts_.peers.size()) return;
  const uint32_t id = opts_.peers[idx].first;
  const HostAddr& a = opts_.peers[idx].second;
  if (livePeers_.count(id) || failed_.count(id)) return;
  struct sockaddr_storage ss{};
  socklen_t sl = 0;
  if (a.unix) {
    auto* su = reinterpret_cast<sockaddr_un*>(&ss);
    su->sun_family = AF_UNIX;
    size_t n = std::min(a.path.size(), sizeof su->sun_path - 1);
    memcpy(su->sun_path, a.path.data(), n);
    sl = sizeof(sockaddr_un);
  } else {
    struct addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    std::string port = std::to_string(a.port);
    int g = getaddrinfo(a.host.c_str(), port.c_str(), &hints, &res);
    if (g != 0 || !res) {
      retryDial(idx, attempt + 1, "connect to " + a.text + ": " + gai_strerror(g), false);
      return;
    }
    memcpy(&ss, res->ai_addr, res->ai_addrlen);
    sl = res->ai_addrlen;
    freeaddrinfo(res);
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    retryDial(idx, attempt + 1, "connect to " + a.text + ": " + strerror(errno), false);
    return;
  }
  if (!a.unix) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), sl) != 0 && errno != EINPROGRESS) {
    int e = errno;
    ::close(fd);
    retryDial(idx, attempt + 1, "connect to " + a.text + ": " + strerror(e), false);
    return;
  }
  Conn* c = addConn(fd, ConnState::Connecting, a.unix, a.unix ? "unix" : a.host + ":" + std::to_string(a.port));
  c->dialer = true;
  c->dialIndex = idx;
  c->attempt = attempt;
  c->peerId = id;
  ConnId cid = c->id;
  c->timer = setTimer(kDialTimeoutMs, [this, cid] {
    auto it = conns_.find(cid);
    if (it == conns_.end()) return;
    Conn* cc = it->second.get();
    if (cc->state != ConnState::Connecting) return;
    cc->timer = 0;
    handshakeFailed(cc, "ETIMEDOUT", "connect to " + opts_.peers[cc->dialIndex].second.text + " timed out");
  });
}

void HostImpl::onConnected(Conn* c) {
  int err = 0;
  socklen_t el = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) err = errno;
  if (err) {
    handshakeFailed(c, "EDISCONNECTED", "connect to " + opts_.peers[c->dialIndex].second.text + ": " + strerror(err));
    return;
  }
  if (!c->unixSock) c->remote = [&] {
    struct sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    char buf[INET6_ADDRSTRLEN] = "?";
    if (getpeername(c->fd, reinterpret_cast<sockaddr*>(&ss), &sl) == 0 && ss.ss_family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
      return std::string(buf) + ":" + std::to_string(ntohs(a->sin_port));
    }
    return c->remote;
  }();
  if (c->timer) cancelTimer(c->timer);
  c->state = ConnState::DialHello;
  c->epollMask = EPOLLIN | EPOLLRDHUP;
  updateMask(c);
  ConnId cid = c->id;
  c->timer = setTimer(kPeerAuthTimeoutMs, [this, cid] {
    auto it = conns_.find(cid);
    if (it == conns_.end() || it->second->state != ConnState::DialHello) return;
    it->second->timer = 0;
    handshakeFailed(it->second.get(), "ETIMEDOUT",
                    "peer handshake not finished within " + std::to_string(kPeerAuthTimeoutMs) + " ms");
  });
  if (!randomBytes(c->myNonce, kNonceBytes)) {
    handshakeFailed(c, "EIO", std::string("getrandom: ") + strerror(errno));
    return;
  }
  uint8_t f[kHeaderBytes + kDialerHelloBody];
  header(f, sizeof f, kOpPeerHello);
  wr32(f + 16, opts_.core.id);
  wr32(f + 20, epoch_);
  memcpy(f + 24, c->myNonce, kNonceBytes);
  sendRaw(c, f, sizeof f);
}

void HostImpl::acceptPeerHello(Conn* c, const uint8_t* f, size_t len) {
  // admission before anything is sent back
  if (len != kHeaderBytes + kDialerHelloBody) {
    handshakeFailed(c, "EPROTO", "PEER_HELLO body must be " + std::to_string(kDialerHelloBody) + " bytes, got " +
                                     std::to_string(len - kHeaderBytes) + " (a Controller without peer authentication?)");
    return;
  }
  const uint32_t self = opts_.core.id;
  c->peerId = rd32(f + 16);
  c->peerEpoch = rd32(f + 20);
  c->claimed = true;
  memcpy(c->theirNonce, f + 24, kNonceBytes);
  const uint32_t id = c->peerId;
  if (opts_.secret.empty() || !peerListed(id) || id == self) {
    handshakeFailed(c, "EPERM", "controller " + std::to_string(id) + " is not in the peer list");
    return;
  }
  if (id < self) {
    handshakeFailed(c, "EPERM", "controller " + std::to_string(id) + " has a lower id: controller " +
                                    std::to_string(self) + " dials it");
    return;
  }
  if (failed_.count(id)) {
    handshakeFailed(c, "EPERM", "controller " + std::to_string(id) + " was failed by the cluster membership (lease expired); it rejoins with a new epoch");
    return;
  }
  auto me = minEpoch_.find(id);
  if (me != minEpoch_.end() && c->peerEpoch < me->second) {
    handshakeFailed(c, "EPERM", "epoch " + std::to_string(c->peerEpoch) + " of controller " + std::to_string(id) + " is older than its member epoch " + std::to_string(me->second));
    return;
  }
  if (!randomBytes(c->myNonce, kNonceBytes)) {
    handshakeFailed(c, "EIO", std::string("getrandom: ") + strerror(errno));
    return;
  }
  c->state = ConnState::AcceptAuth;
  ConnId cid = c->id;
  c->timer = setTimer(kPeerAuthTimeoutMs, [this, cid] {
    auto it = conns_.find(cid);
    if (it == conns_.end() || it->second->state != ConnState::AcceptAuth) return;
    it->second->timer = 0;
    handshakeFailed(it->second.get(), "ETIMEDOUT",
                    "peer handshake not finished within " + std::to_string(kPeerAuthTimeoutMs) + " ms");
  });
  uint8_t r[kHeaderBytes + kAcceptorHelloBody];
  header(r, sizeof r, kOpPeerHello);
  wr32(r + 16, self);
  wr32(r + 20, epoch_);
  memcpy(r + 24, c->myNonce, kNonceBytes);
  peerProof(opts_.secret, 'A', c->theirNonce, c->myNonce, c->peerId, c->peerEpoch, self, epoch_, r + 24 + kNonceBytes);
  sendRaw(c, r, sizeof r);
}

void HostImpl::acceptPeerAuth(Conn* c, const uint8_t* f, size_t len) {
  uint16_t op;
  memcpy(&op, f + 4, 2);
  if (op != kOpPeerAuth) {
    handshakeFailed(c, "EPROTO", "expected PEER_AUTH, got op " + std::to_string(op));
    return;
  }
  if (len != kHeaderBytes + kProofBytes) {
    handshakeFailed(c, "EPROTO", "PEER_AUTH body must be " + std::to_string(kProofBytes) + " bytes");
    return;
  }
  uint8_t want[kProofBytes];
  peerProof(opts_.secret, 'D', c->theirNonce, c->myNonce, c->peerId, c->peerEpoch, opts_.core.id, epoch_, want);
  if (CRYPTO_memcmp(want, f + kHeaderBytes, kProofBytes) != 0) {
    handshakeFailed(c, "EPERM", "failed authentication (wrong cluster secret?)");
    return;
  }
  peerAuthenticated(c);
}

void HostImpl::dialPeerHello(Conn* c, const uint8_t* f, size_t len) {
  uint16_t op;
  memcpy(&op, f + 4, 2);
  if (op != kOpPeerHello) {
    handshakeFailed(c, "EPROTO", "expected PEER_HELLO, got op " + std::to_string(op));
    return;
  }
  if (len != kHeaderBytes + kAcceptorHelloBody) {
    handshakeFailed(c, "EPROTO", "PEER_HELLO body must be " + std::to_string(kAcceptorHelloBody) + " bytes, got " +
                                     std::to_string(len - kHeaderBytes) + " (a Controller without peer authentication?)");
    return;
  }
  const uint32_t expect = opts_.peers[c->dialIndex].first;
  uint32_t id = rd32(f + 16);
  c->peerEpoch = rd32(f + 20);
  c->claimed = true;
  memcpy(c->theirNonce, f + 24, kNonceBytes);
  if (id != expect) {
    handshakeFailed(c, "EPERM", "dialed controller " + std::to_string(expect) + ", answered by controller " + std::to_string(id));
    return;
  }
  auto me = minEpoch_.find(id);
  if (failed_.count(id) || (me != minEpoch_.end() && c->peerEpoch < me->second)) {
    handshakeFailed(c, "EPERM", "controller " + std::to_string(id) + " answered at epoch " + std::to_string(c->peerEpoch) + ", failed or older than its member epoch");
    return;
  }
  const uint32_t self = opts_.core.id;
  uint8_t want[kProofBytes];
  peerProof(opts_.secret, 'A', c->myNonce, c->theirNonce, self, epoch_, id, c->peerEpoch, want);
  if (CRYPTO_memcmp(want, f + 24 + kNonceBytes, kProofBytes) != 0) {
    handshakeFailed(c, "EPERM", "controller " + std::to_string(id) + " failed authentication (wrong cluster secret?)");
    return;
  }
  uint8_t r[kHeaderBytes + kProofBytes];
  header(r, sizeof r, kOpPeerAuth);
  peerProof(opts_.secret, 'D', c->myNonce, c->theirNonce, self, epoch_, id, c->peerEpoch, r + kHeaderBytes);
  if (!sendRaw(c, r, sizeof r)) return;
  peerAuthenticated(c);
}

void HostImpl::handshakeFailed(Conn* c, const std::string& code, const std::string& msg) {
  if (c->hsOver || c->state == ConnState::Lingering) return;
  c->hsOver = true;
  if (c->dialer) {
    size_t idx = c->dialIndex;
    uint32_t attempt = c->attempt;
    closeConn(c, "", LogLevel::Debug);
    retryDial(idx, attempt + 1, msg, code == "EPERM");
    return;
  }
  std::string claimed = c->claimed ? std::to_string(c->peerId) : "?";
  log(LogLevel::Warn, "peer link from " + c->remote + " claiming controller " + claimed + " refused: " + msg,
      "{\"remote\":" + jsonStr(c->remote) + ",\"peer\":" + (c->claimed ? std::to_string(c->peerId) : "null") +
          ",\"err\":" + jsonStr(msg) + ",\"code\":" + jsonStr(code) + "}");
  closeConn(c, "", LogLevel::Debug);
}

void HostImpl::handshakeClosed(Conn* c, ConnState was) {
  // the other side (or the kernel) closed a link in its handshake
  if (c->dialer) {
    std::string msg = was == ConnState::Connecting
                          ? "connect to " + opts_.peers[c->dialIndex].second.text + ": connection closed"
                          : "link closed during the peer handshake";
    retryDial(c->dialIndex, c->attempt + 1, msg, false);
    return;
  }
  std::string msg = "link closed during the peer handshake before proving it holds the cluster secret (another secret on its side?)";
  std::string claimed = c->claimed ? std::to_string(c->peerId) : "?";
  if (!stopping_) {
    log(LogLevel::Warn, "peer link from " + c->remote + " claiming controller " + claimed + " refused: " + msg,
        "{\"remote\":" + jsonStr(c->remote) + ",\"peer\":" + (c->claimed ? std::to_string(c->peerId) : "null") +
            ",\"err\":" + jsonStr(msg) + ",\"code\":\"EDISCONNECTED\"}");
  }
}

void HostImpl::peerAuthenticated(Conn* c) {
  if (c->timer) cancelTimer(c->timer);
  c->timer = 0;
  c->hsOver = true;
  const uint32_t id = c->peerId ? c->peerId : opts_.peers[c->dialIndex].first;
  c->peerId = id;
  c->st.peer = true;
  c->st.id = id;
  c->st.name = "controller-" + std::to_string(id);
  ConnState hs = c->state;
  if (!core_->peerUp(c->id, id, c->peerEpoch)) {
    if (c->dialer) {
      size_t idx = c->dialIndex;
      closeConn(c, "", LogLevel::Debug);
      retryDial(idx, 1, "a link to controller " + std::to_string(id) + " is live", false);
    } else {
      c->hsOver = false;
      handshakeFailed(c, "EPERM", "epoch " + std::to_string(c->peerEpoch) + " is older than the live link's");
    }
    return;
  }
  if (c->state != hs) return;  // the core closed it
  c->state = ConnState::Peer;
  c->peerLink = true;
  c->counted = true;
  livePeers_[id] = c->id;
  log(LogLevel::Info, "peer connected",
      "{\"peer\":" + std::to_string(id) + ",\"epoch\":" + std::to_string(c->peerEpoch) + "}");
}

// ---- zero-copy receive (Core::peerSinkOpen): a peer frame's payload straight into a mapping --

bool HostImpl::startSink(Conn* c, size_t off, uint32_t len) {
  const uint8_t* f = c->in.data() + off;
  const size_t have = c->inLen - off;
  Core::PeerSink sink;
  if (!core_->peerSinkOpen(c->id, f, have, len, &sink)) return false;
  if (sink.headBytes > have || sink.headBytes > len) {  // a core bug; the frame would be lost
    closeConn(c, "zero-copy receive: head of " + std::to_string(sink.headBytes) + " bytes", LogLevel::Warn);
    return false;
  }
  c->sinking = true;
  c->sinkFault = false;
  c->sinkDst = sink.dst;
  c->sinkLeft = len - sink.headBytes;
  // The payload bytes read with the head go first (a copy of at most one read chunk).
  const size_t early = have - sink.headBytes;
  if (early) {
    if (guardedMove(c->sinkDst, f + sink.headBytes, early)) c->sinkFault = true;
    c->sinkDst += early;
    c->sinkLeft -= early;
  }
  if (c->in.size() < 4096) c->in.resize(4096);  // where a faulted payload is dropped
  return true;
}

int HostImpl::readSink(Conn* c) {
  while (c->sinkLeft > 0) {
    ssize_t r;
    // A truncated mapping makes recv fail with EFAULT (the kernel copies; no SIGBUS); the
    // bytes it did not take stay in the socket and are dropped from then on.
    if (!c->sinkFault) r = ::recv(c->fd, c->sinkDst, c->sinkLeft, MSG_DONTWAIT);
    else r = ::recv(c->fd, c->in.data(), std::min(c->sinkLeft, c->in.size()), MSG_DONTWAIT);
    if (r == 0) {
      closeConn(c, "", LogLevel::Debug);
      return -1;
    }
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) return 0;
      if (errno == EFAULT && !c->sinkFault) {
        c->sinkFault = true;
        continue;
      }
      closeConn(c, "", LogLevel::Debug);
      return -1;
    }
    c->st.bytesIn += uint64_t(r);
    if (!c->sinkFault) c->sinkDst += r;
    c->sinkLeft -= size_t(r);
  }
  c->sinking = false;
  c->sinkDst = nullptr;
  c->st.framesIn++;
  core_->peerSinkDone(c->id, c->sinkFault);
  return c->state == ConnState::Lingering ? -1 : 1;
}

void HostImpl::peerLinkClosed(Conn* c) {
  auto it = livePeers_.find(c->peerId);
  if (it == livePeers_.end() || it->second != c->id) return;
  livePeers_.erase(it);
  if (stopping_) return;
  if (c->peerId > opts_.core.id) awaitPeer(c->peerId, 0, opts_.peerWaitWarnMs);
  log(LogLevel::Warn, "peer disconnected", "{\"peer\":" + std::to_string(c->peerId) + "}");
}

void HostImpl::retryDial(size_t idx, uint32_t attempt, const std::string& err, bool authErr) {
  if (stopping_ || idx >= opts_.peers.size()) return;
  const uint32_t id = opts_.peers[idx].first;
  if (livePeers_.count(id)) return;
  const uint32_t retryMs = std::min<uint32_t>(2000, 50u << std::min<uint32_t>(attempt, 6));
  if (logDialFailure(attempt)) {
    const std::string& addr = opts_.peers[idx].second.text;
    const char* what = authErr ? "refused (authentication)" : "unreachable";
    log(LogLevel::Warn,
        "peer " + std::to_string(id) + " " + what + " at " + addr + "; retrying in " + std::to_string(retryMs) + " ms",
        "{\"peer\":" + std::to_string(id) + ",\"addr\":" + jsonStr(addr) + ",\"attempt\":" + std::to_string(attempt) +
            ",\"retryMs\":" + std::to_string(retryMs) + ",\"err\":" + jsonStr(err) + "}");
  }
  const uint32_t gen = dialGen_[id];
  setTimer(retryMs, [this, idx, attempt, id, gen] {
    if (dialGen_[id] == gen) dialPeer(idx, attempt);
  });
}

void HostImpl::addPeer(uint32_t id, HostAddr addr, uint32_t epoch) {
  const uint32_t self = opts_.core.id;
  if (id == self || id == 0) return;
  size_t idx = opts_.peers.size();
  for (size_t i = 0; i < opts_.peers.size(); i++)
    if (opts_.peers[i].first == id) idx = i;
  if (idx == opts_.peers.size()) opts_.peers.emplace_back(id, std::move(addr));
  else opts_.peers[idx].second = std::move(addr);
  failed_.erase(id);
  if (epoch > minEpoch_[id]) minEpoch_[id] = epoch;
  dialGen_[id]++;
  if (core_) core_->setPeerListed(id, true);
  log(LogLevel::Info, "member " + std::to_string(id) + " at " + opts_.peers[idx].second.text + " epoch " + std::to_string(epoch),
      "{\"peer\":" + std::to_string(id) + ",\"addr\":" + jsonStr(opts_.peers[idx].second.text) + ",\"epoch\":" + std::to_string(epoch) + "}");
  auto lp = livePeers_.find(id);
  if (lp != livePeers_.end()) {
    auto ci = conns_.find(lp->second);
    // a live link of an older life of this member: closed (the dialer side redials)
    if (ci != conns_.end() && ci->second->peerEpoch < epoch) close(lp->second, "controller " + std::to_string(id) + " rejoined with epoch " + std::to_string(epoch));
    return;
  }
  if (!running_ || stopping_) return;
  if (id < self) dialPeer(idx, 0);
}

void HostImpl::failPeer(uint32_t id, uint32_t epoch, const std::string& why) {
  if (id == opts_.core.id) return;
  failed_.insert(id);
  dialGen_[id]++;
  uint32_t next = epoch + 1;
  auto lp = livePeers_.find(id);
  if (lp != livePeers_.end()) {
    auto ci = conns_.find(lp->second);
    if (ci != conns_.end() && ci->second->peerEpoch + 1 > next) next = ci->second->peerEpoch + 1;
  }
  if (next > minEpoch_[id]) minEpoch_[id] = next;
  if (core_) core_->setPeerListed(id, false);
  log(LogLevel::Warn, "peer " + std::to_string(id) + " failed: " + why,
      "{\"peer\":" + std::to_string(id) + ",\"epoch\":" + std::to_string(epoch) + ",\"err\":" + jsonStr(why) + "}");
  if (lp != livePeers_.end()) close(lp->second, "controller " + std::to_string(id) + " failed: " + why);
}

void HostImpl::awaitPeer(uint32_t id, uint64_t since, uint32_t delayMs) {
  const uint64_t start = since ? since : nowMs();
  setTimer(delayMs, [this, id, start, delayMs] {
    if (stopping_ || livePeers_.count(id)) return;
    const uint64_t waited = nowMs() - start;
    const HostAddr* a = peerAddr(id);
    const std::string addr = a ? a->text : "?";
    log(LogLevel::Warn,
        "peer " + std::to_string(id) + " has not connected after " + seconds(waited) + " s (expected from " + addr +
            "); it dials this controller (lower id)",
        "{\"peer\":" + std::to_string(id) + ",\"addr\":" + jsonStr(addr) + ",\"waitedMs\":" + std::to_string(waited) + "}");
    uint64_t next = std::min<uint64_t>(uint64_t(delayMs) * 2, uint64_t(opts_.peerWaitWarnMs) * 32);
    awaitPeer(id, start, uint32_t(std::min<uint64_t>(next, 0x7fffffff)));
  });
}

}  // namespace fractos

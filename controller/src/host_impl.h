// The host of the native Controller (implements fractos::Host, host.h): one epoll loop
// thread that owns every socket, the framing, outbound queues and their bound, the hello
// timeout, SO_PEERCRED, peer dialling and the peer handshake, timers and log lines.
//
// Where each concern lives:
//   host_loop.cc   the loop thread, epoll, the eventfd of commands from the JS thread, timers
//   host_conns.cc  listeners, accept, framing (header bounds), output queues, backpressure,
//                  hello timeout, closing (linger), link counters
//   host_queue.cc  queue pairs of unix Processes (docs/queues.md): rings in, rings out, doorbells
//   host_peers.cc  static peers: dialling with backoff, wait warnings, the handshake (HMAC)
//   host_addon.cc  the N-API class used by controller/controller.ts, the log bridge
//
// Threads: the JS thread only constructs the host, binds listeners (before start), and then
// talks to the loop through `call` (a closure run on the loop, waited for). Everything else
// runs on the loop thread.
#pragma once
#include <sys/uio.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../../native/queue/src/memfd.h"
#include "../../native/queue/src/spin_budget.h"
#include "fd_stream.h"
#include "host.h"

namespace fractos {

/** Bytes of a frame header (libfractos/protocol.ts HEADER_BYTES). */
constexpr uint32_t kHeaderBytes = 16;
/** Ops the host reads (libfractos/protocol.ts Op). */
constexpr uint16_t kOpHello = 0x01;
constexpr uint16_t kOpPeerHello = 0xa0;
constexpr uint16_t kOpPeerAuth = 0xb0;
/** Peer handshake sizes and bound (controller/peer-auth.ts). */
constexpr size_t kNonceBytes = 32;
constexpr size_t kProofBytes = 32;
constexpr uint32_t kPeerAuthTimeoutMs = 5000;
/** Bound on a dial's connect (ms), like libfractos/link.ts dial(addr, 5000). */
constexpr uint32_t kDialTimeoutMs = 5000;
/** How long a closed socket lingers (reading and dropping) after its FIN (ms). */
constexpr uint32_t kLingerMs = 1000;
/** epoll data of a queued conn's doorbell: kQueueTag | ConnId (listeners: 1 << 62, commands: 1 << 63). */
constexpr uint64_t kQueueTag = 1ull << 61;
/** Closed links whose counters `stats` keeps (the oldest go first). */
constexpr size_t kMaxClosedStats = 4096;

/** A socket address as given in options: unix path or tcp host/port. */
struct HostAddr {
  bool unix = false;
  std::string path;  // unix
  std::string host;  // tcp
  uint16_t port = 0;
  std::string text;  // as formatted by libfractos/link.ts formatAddress
};

/** Options the JS host passes at construction. */
struct HostOptions {
  CoreConfig core;  // epoch is set at start()
  uint32_t helloTimeoutMs = 5000;
  /**
   * After reading a Process's request ring, spin up to this long (ns) for its next entries
   * before sleeping in epoll (docs/queues.md "The Controller's side"); 0: never. Bounded by
   * the spinner budget (wake.h: CPUs - 1 per process).
   */
  uint64_t queueSpinNs = 0;
  /**
   * After activity of a poll-mode Process (its pair's poll word, docs/queues.md "Spinner
   * budget"), spin on every request ring up to min(its poll spin, this) (ns) before sleeping;
   * 0 (default: not proven better on the loaded 2-vCPU VM, docs/measurements.md): never
   * (poll-mode Processes are then served like the others).
   */
  uint64_t pollSpinMaxNs = 0;
  /** Slots of the host's spinner budget page (spin_budget.h); 0: no page (process-local budgets). */
  uint32_t spinSlots = queue::default_budget_slots();
  uint32_t peerWaitWarnMs = 10000;
  std::vector<uint8_t> secret;  // empty: none (then no peers)
  std::vector<std::pair<uint32_t, HostAddr>> peers;
};

/** State of one connection. */
enum class ConnState : uint8_t {
  Hello,        // accepted, waiting for its first frame
  Process,      // a Process channel (after HELLO)
  AcceptAuth,   // acceptor: our PEER_HELLO sent, waiting for PEER_AUTH
  Connecting,   // dialer: connect() in progress
  DialHello,    // dialer: PEER_HELLO sent, waiting for the acceptor's
  Peer,         // an authenticated peer link
  Lingering,    // closed: FIN sent, input dropped until EOF or kLingerMs
};

/**
 * The queue pair of a Process conn (host_queue.cc, docs/queues.md): ring 0 (requests) is a
 * second input stream beside the socket, ring 1 (completions, deliveries) carries every frame
 * sent without fds. Bytes that do not fit ring 1 wait in `out` (counted in the conn's
 * backlog, bounded like the socket's).
 */
struct ConnQueue {
  queue::PairMap map;
  queue::Endpoint ep;
  int memfd = -1, procEfd = -1, ctlEfd = -1;
  uint32_t maxEntry = 0;
  // ring 0 input: at most one partial frame plus one entry
  std::vector<uint8_t> in;
  size_t inLen = 0;
  fdstream::ByteQueue out;  // ring 1 output waiting for space
  bool touched = false;     // entries pushed since the last publish
  bool spaceArmed = false;  // waiting for the Process to free ring 1
  bool ready = false;       // in readyQueues_: ring 0 may hold entries not read yet
  bool recent = false;      // in recentQueues_: read entries this iteration (spinRings)
  bool loud = false;        // a frame that wakes the Process was pushed since the last publish
  bool wantAll = false;     // the core waits for this Process's credits: wake for quiet entries too
  /** The Process's poll spin (µs) as it wrote it in its pair (untrusted; clamped by pollSpinMaxNs). */
  uint32_t pollUs() const {
    return reinterpret_cast<const std::atomic<uint32_t>*>(map.base + queue::consumer_line(queue::RING_COMPLETION) + 12)->load(std::memory_order_relaxed);
  }
  ConnQueue() = default;
  ConnQueue(const ConnQueue&) = delete;
  ConnQueue& operator=(const ConnQueue&) = delete;
  ~ConnQueue() {
    for (int fd : {memfd, procEfd, ctlEfd})
      if (fd >= 0) ::close(fd);
  }
  uint64_t backlog() const { return out.size(); }
};

struct Conn {
  ConnId id = 0;
  int fd = -1;
  ConnState state = ConnState::Hello;
  bool unixSock = false;
  std::string remote;  // "unix" or "ip:port" for logs
  uint32_t kernelPid = 0;
  int64_t kernelUid = -1;  // SO_PEERCRED uid on a unix socket; -1 unknown (tcp)
  uint32_t epollMask = 0;
  // input: bytes [0, inLen) of `in`, at most one frame (bounded by maxFrameBytes)
  std::vector<uint8_t> in;
  size_t inLen = 0;
  // output not yet taken by the kernel, with the fds of frames among it (fd_stream.h)
  fdstream::OutQueue out;
  // fds received on a unix socket (fd_stream.h), tagged with stream positions (sockIn =
  // bytes read from the socket so far)
  fdstream::RxFds rxFds;
  uint64_t sockIn = 0;
  bool limitBacklog = false;  // a Process: stop reading while backlog > maxOutboundBytes
  bool paused = false;
  bool above = false;         // backlog went above maxOutboundBytes (drained() when back)
  uint64_t timer = 0;         // hello / handshake / connect / linger timer
  LinkStats st;
  bool counted = false;       // a Process or Peer link (its counters go to closedStats)
  bool peerLink = false;      // an authenticated peer link (peerClosed, not processClosed)
  bool hsOver = false;        // the handshake's outcome is handled (no second failure)
  // peer handshake
  uint32_t peerId = 0, peerEpoch = 0;
  bool claimed = false;
  bool dialer = false;
  size_t dialIndex = 0;       // index in opts.peers (dialer)
  uint32_t attempt = 0;       // dial attempts failed in a row before this one
  uint8_t myNonce[kNonceBytes] = {};
  uint8_t theirNonce[kNonceBytes] = {};
  std::vector<uint8_t> sockaddr;  // dialer: where to connect
  // zero-copy receive of a peer frame's payload (Core::peerSinkOpen; host_peers.cc)
  bool sinking = false;     // the payload of the current frame goes to sinkDst
  bool sinkFault = false;   // the mapping faulted: the rest is read and dropped
  bool plainFrame = false;  // the core declined the current frame: reassembled whole
  uint8_t* sinkDst = nullptr;
  size_t sinkLeft = 0;

  std::unique_ptr<ConnQueue> q;  // a queued Process conn (HELLO feature QUEUE)

  uint64_t backlog() const { return out.size() + (q ? q->backlog() : 0); }
};

class HostImpl final : public Host {
 public:
  explicit HostImpl(HostOptions opts, std::function<void(LogLevel, std::string, std::string)> logSink);
  ~HostImpl() override;

  // ---- JS thread, before start() ----
  /** Bind and listen; returns the address as listened on (tcp port 0 resolved). errno-style: 0 or -errno, `err` says why. */
  int listen(const HostAddr& a, std::string* bound, std::string* err);
  /** Create the core (epoch set) and start the loop thread. */
  bool start(uint32_t epoch, std::string* err);
  /** Run `fn` on the loop thread and wait for it (runs inline when the loop is not running). */
  void call(const std::function<void()>& fn);
  /** Stop the loop (closing every conn and listener), join it, free the core. Idempotent. */
  void stop();

  // ---- loop thread (through call()): cluster membership (host_peers.cc) ----
  /**
   * Peer `id` is a member at `addr` with `epoch` (0: unknown): listed, dialled now when
   * its id is lower; links of an older epoch are refused, a live one is closed.
   */
  void addPeer(uint32_t id, HostAddr addr, uint32_t epoch);
  /**
   * Peer `id` at `epoch` failed (its lease expired): its live link is closed (the core
   * revokes its objects for their holders, monitors fire owner-failed) even if the TCP
   * connection still works; it is not dialled and its links are refused until addPeer
   * with a newer epoch.
   */
  void failPeer(uint32_t id, uint32_t epoch, const std::string& why);
  Core* core() const { return core_; }
  /** Links in the peer handshake (loop thread). */
  uint32_t handshaking() const;
  const HostOptions& options() const { return opts_; }
  uint32_t epoch() const { return epoch_; }

  // ---- Host (loop thread) ----
  void send(ConnId c, const struct iovec* iov, int iovcnt) override;
  bool sendFromMapping(ConnId c, const struct iovec* iov, int iovcnt) override;
  void sendQuiet(ConnId c, const struct iovec* iov, int iovcnt) override;
  void sendWithFds(ConnId c, const struct iovec* iov, int iovcnt, const int* fds, int nfds) override;
  int takeFd(ConnId c) override;
  int attachQueue(ConnId c, int fds[4], uint32_t* ringBytes) override;
  void waitingForCredits(ConnId c, bool waiting) override;
  uint64_t backlog(ConnId c) const override;
  void close(ConnId c, const std::string& why) override;
  void setLinkInfo(ConnId c, bool peer, uint32_t id, const std::string& name) override;
  std::vector<LinkStats> linkStats() const override;
  uint64_t setTimer(uint32_t ms, std::function<void()> fn) override;
  void cancelTimer(uint64_t id) override;
  void log(LogLevel level, const std::string& msg, const std::string& fieldsJson) override;
  uint64_t nowMs() const override;
  bool mayIntrospect(ConnId c) const override;
  uint64_t loopMs() const override { return loopNow_; }

 private:
  // host_loop.cc
  void run();
  void runTimers();
  int nextTimeoutMs() const;
  void drainCommands();
  // host_conns.cc
  void onListener(size_t idx);
  Conn* addConn(int fd, ConnState st, bool unixSock, std::string remote);
  void onConnEvent(ConnId id, uint32_t events);
  void readConn(Conn* c);
  void handleFrame(Conn* c, const uint8_t* f, size_t len);
  void flushConn(Conn* c);
  void updateMask(Conn* c);
  void afterBacklogChange(Conn* c);
  void closeConn(Conn* c, const std::string& why, LogLevel level);
  void finishConn(ConnId id);
  void runDeferred();
  bool sendRaw(Conn* c, const uint8_t* p, size_t n);
  bool sendImpl(ConnId id, const struct iovec* iov, int iovcnt, bool guarded);
  /** Queue iov after `skip` bytes; `guarded`: parts after the first are read under the SIGBUS guard (true: one faulted). */
  bool queueOut(Conn* c, const struct iovec* iov, int iovcnt, size_t skip, bool guarded = false);
  bool takeFrames(Conn* c, std::vector<uint8_t>& in, size_t& inLen, uint64_t base, bool sock);
  // host_queue.cc
  void queueSend(Conn* c, const struct iovec* iov, int iovcnt, size_t total, bool quiet);
  void onQueueEvent(ConnId id);
  void drainRing(Conn* c);
  void flushRing(Conn* c);
  void publishRings();
  void runReadyQueues();
  void spinRings();
  // host_peers.cc
  void startPeers();
  void dialPeer(size_t idx, uint32_t attempt);
  void retryDial(size_t idx, uint32_t attempt, const std::string& err, bool authErr);
  void awaitPeer(uint32_t id, uint64_t since, uint32_t delayMs);
  void onConnected(Conn* c);
  void acceptPeerHello(Conn* c, const uint8_t* f, size_t len);
  void acceptPeerAuth(Conn* c, const uint8_t* f, size_t len);
  void dialPeerHello(Conn* c, const uint8_t* f, size_t len);
  void handshakeFailed(Conn* c, const std::string& code, const std::string& msg);
  void peerAuthenticated(Conn* c);
  void peerLinkClosed(Conn* c);
  void handshakeClosed(Conn* c, ConnState was);
  bool peerListed(uint32_t id) const;
  bool startSink(Conn* c, size_t off, uint32_t len);
  int readSink(Conn* c);
  const HostAddr* peerAddr(uint32_t id) const;

  HostOptions opts_;
  std::function<void(LogLevel, std::string, std::string)> logSink_;
  uint32_t epoch_ = 0;
  Core* core_ = nullptr;
  int ep_ = -1;
  int evfd_ = -1;
  std::thread thread_;
  bool running_ = false;
  bool stopping_ = false;  // loop thread: closing
  bool stopped_ = false;   // JS thread: stop() done

  struct Listener {
    int fd;
    bool unix;
    std::string path;  // unix: unlinked at stop (by the JS host)
  };
  std::vector<Listener> listeners_;

  std::unordered_map<ConnId, std::unique_ptr<Conn>> conns_;
  uint64_t loopNow_ = 0;  // monoMs() when epoll_wait last returned (loopMs)
  ConnId nextConn_ = 1;
  /** Conns whose ring 1 got entries this iteration (published once at its end). */
  std::vector<ConnId> touched_;
  /** Conns whose ring 0 may hold entries not read yet (read before the next epoll_wait sleeps). */
  std::vector<ConnId> readyQueues_;
  /** Conns whose ring 0 had entries in this iteration (spinRings watches them before sleeping). */
  std::vector<ConnId> recentQueues_;
  /** spinRings: the loop spins on the request rings until this time (ns, now_ns), set by poll-mode activity. */
  uint64_t spinUntilNs_ = 0;
  /** The host's spinner budget page (spin_budget.h): fd sent to every queued Process, our mapping. */
  int budgetFd_ = -1;
  uint8_t* budgetMap_ = nullptr;
  queue::SpinBudget budget_;
  /** Spin counters (stats): spins, spins that found entries, slots reclaimed from dead or hostile holders. */
  uint64_t spins_ = 0, spinHits_ = 0, spinReclaims_ = 0;
  /** processHello is running for this conn (attachQueue is allowed). */
  ConnId helloConn_ = 0;
  /** The frame being handed to the core (takeFd): its conn and socket stream range. */
  ConnId fdConn_ = 0;
  uint64_t fdStart_ = 0, fdStop_ = 0;
  std::vector<ConnId> deferred_;  // closed conns whose core callback is pending
  std::vector<ConnId> dead_;      // conns whose fd is closed, erased by runDeferred
  std::vector<LinkStats> closedStats_;
  size_t closedHead_ = 0;         // ring index once closedStats_ is full
  /** Live authenticated peer link by peer id. */
  std::unordered_map<uint32_t, ConnId> livePeers_;
  /** Membership: failed peer ids (not dialled, links refused), the lowest epoch accepted per id, dial generations (stale retry timers stop). */
  std::unordered_set<uint32_t> failed_;
  std::unordered_map<uint32_t, uint32_t> minEpoch_;
  std::unordered_map<uint32_t, uint32_t> dialGen_;

  // timers
  struct TimerEntry {
    uint64_t at;
    uint64_t id;
    bool operator>(const TimerEntry& o) const { return at != o.at ? at > o.at : id > o.id; }
  };
  std::priority_queue<TimerEntry, std::vector<TimerEntry>, std::greater<TimerEntry>> timerHeap_;
  std::unordered_map<uint64_t, std::function<void()>> timers_;
  uint64_t nextTimer_ = 1;

  // commands from the JS thread
  std::mutex cmdMu_;
  std::condition_variable cmdCv_;
  std::vector<std::function<void()>> cmds_;
};

/** HMAC-SHA256 proof of `role` ('D' or 'A') for one link (controller/peer-auth.ts peerProof). */
void peerProof(const std::vector<uint8_t>& secret, char role, const uint8_t dialerNonce[kNonceBytes],
               const uint8_t acceptorNonce[kNonceBytes], uint32_t dialerId, uint32_t dialerEpoch,
               uint32_t acceptorId, uint32_t acceptorEpoch, uint8_t out[kProofBytes]);

/** JSON string literal of `s` (quotes and escapes included). */
std::string jsonStr(const std::string& s);

}  // namespace fractos

// The boundary between the Controller core and its host.
//
//   core (controller/src/core*.cc, caps, objects, requests, memory, monitors, names, peers):
//     every system call and peer frame after the handshake; owns all Controller state.
//   host (controller/src/host*.cc, loop, conns, handshake, addon): one epoll loop thread,
//     listeners, accepted and dialled sockets, framing, outbound queues and their bound,
//     hello timeout, SO_PEERCRED, peer dialling/redial/wait warnings, the peer handshake
//     (HMAC, docs/protocol.md "Peer handshake"), timers, logging and link counters, and
//     the N-API surface used by controller/controller.ts.
//
// Single-threaded: every method of Host and Core below is called on the loop thread only.
// Frames passed to the core are valid only during the call (copy what you keep).
#pragma once
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace fractos {

/** Names one connection for the life of the Controller (never reused; 0 = none). */
using ConnId = uint64_t;

/** Peer frames of at least this many bytes may be received zero-copy (Core::peerSinkOpen). */
constexpr size_t kPeerSinkMinBytes = 16 * 1024;
/** Bytes of a frame the host has buffered before it asks Core::peerSinkOpen. */
constexpr size_t kPeerSinkPeekBytes = 64;

/** Receive-side and queueing limits (libfractos/protocol.ts DEFAULT_LIMITS, same names). */
struct Limits {
  uint32_t maxFrameBytes = 16 * 1024 * 1024 + 4096;
  uint32_t maxImmBytes = 64 * 1024;
  uint32_t maxCapSlots = 64;
  uint32_t maxCaps = 1u << 20;
  uint32_t maxOutstandingDeliveries = 256;
  uint64_t maxOutstandingDeliveryBytes = 8ull * 1024 * 1024;
  uint32_t maxQueuedDeliveries = 1u << 16;
  uint64_t maxQueuedDeliveryBytes = 32ull * 1024 * 1024;
  uint64_t maxQueuedBytesPerInvoker = 8ull * 1024 * 1024;
  uint64_t maxOutboundBytes = 4ull * 1024 * 1024;
  /** Bytes per ring of a Process's queue pair (docs/queues.md; a power of two in [4 KiB, 64 MiB]). */
  uint32_t queueRingBytes = 1u << 20;
};

/**
 * A bootstrap name as an external name store keeps it: who published it and the published
 * object's ref (a cap cannot be stored outside a Controller; a getter elsewhere gets a proxy
 * through the origin Controller, as for any remote ref).
 */
struct NameRecord {
  uint32_t origin = 0;       // the publishing Controller's id
  uint32_t originEpoch = 0;  // and its epoch
  uint32_t ownerProc = 0;    // the publishing Process (its id at the origin)
  uint32_t refController = 0, refEpoch = 0;
  uint64_t refId = 0;        // the published object's ref (wire.h Ref)
  int64_t revision = 0;        // the store's revision of the value (etcd mod_revision); answers only
  int64_t createRevision = 0;  // when the name was first put (etcd create_revision); answers only
};

/**
 * An external store of bootstrap names (cluster mode: etcd, through the JS host; docs/cluster.md
 * "Names in etcd"), given to the core in CoreConfig.names. Without one the core keeps its
 * own replicated map (names.cc). Called on the loop thread only; never blocks: each put/get
 * answers exactly once, on the loop thread, never from inside the call, within the store's
 * time bound (code kTimedOut past it), with a wire error code (0 = ok) and a message.
 */
class NameStore {
 public:
  virtual ~NameStore() = default;
  /** Answers: code, message, the record stored (revision set) when code is 0. */
  using Answer = std::function<void(uint16_t code, const std::string& msg, const NameRecord& r)>;
  /**
   * Publish `name` = `r` (one value per name cluster-wide; bound to this Controller's
   * lease): kExist when another publisher holds it (the same origin, epoch and ownerProc
   * replaces its own value), kAgain/kTimedOut when the store is unreachable.
   */
  virtual void put(const std::string& name, const NameRecord& r, Answer cb) = 0;
  /** A linearizable read of `name`: kNoEnt when absent. */
  virtual void get(const std::string& name, Answer cb) = 0;
  /** Remove `name` if it still holds `r` (its publisher went); no answer (best effort). */
  virtual void remove(const std::string& name, const NameRecord& r) = 0;
};

/** What the core needs to know about its own Controller. */
struct CoreConfig {
  uint32_t id = 0;
  uint32_t epoch = 0;
  Limits limits;
  uint32_t servedTimeoutMs = 5000;
  /** Ids of the static peer list (a ref to a listed peer that is not connected yet is not dead). */
  std::vector<uint32_t> peerIds;
  /** The external name store (cluster mode), or null: names live in the core's replicated map. Outlives the core. */
  NameStore* names = nullptr;
};

enum class LogLevel : uint8_t { Debug = 0, Info = 1, Warn = 2 };

/** Counters of one link as `fractos stats` prints them (controller.ts LinkStats). */
struct LinkStats {
  bool peer = false;  // false: a Process channel
  uint32_t id = 0;    // process id or peer Controller id
  std::string name;
  uint64_t framesIn = 0, framesOut = 0, bytesIn = 0, bytesOut = 0;
  uint64_t backlogBytes = 0;
  uint64_t readPauses = 0;
  bool closed = false;
};

/** Implemented by the host; called by the core. */
class Host {
 public:
  virtual ~Host() = default;

  /**
   * Send one frame on a connection: the iov parts are concatenated; the first part starts
   * with the 16-byte header whose length field equals the total. The host writes at once
   * when nothing is queued and copies only what the kernel did not take, so the caller may
   * reuse every buffer (mappings included) as soon as this returns. A closed or unknown
   * connection: the frame is dropped silently.
   */
  virtual void send(ConnId c, const struct iovec* iov, int iovcnt) = 0;

  /**
   * send() of a frame whose parts after the first may lie in a mapping its owner can
   * truncate (a copy chunk sent straight from the source mapping): the kernel reads them
   * (a truncated page is EFAULT there, never SIGBUS) and what it does not take is copied to
   * the queue under the SIGBUS guard (native/include/sigbus_guard.h). Returns true when a
   * part faulted: the frame still goes out whole, with zeros in place of what could not be
   * read, so the link stays framed; the caller fails what the frame was for.
   * Default (hosts of tests): send() without a guard.
   */
  virtual bool sendFromMapping(ConnId c, const struct iovec* iov, int iovcnt) {
    send(c, iov, iovcnt);
    return false;
  }

  /**
   * `send` of a frame that does not wake the Process by itself (the success REPLY of a
   * REQUEST_INVOKE_QUIET): on a queue pair, a loop iteration that pushed only such frames to
   * `c` publishes them without waking a Process that sleeps for loud frames only
   * (docs/queues.md "No wake-up for nothing"). Elsewhere the same as send.
   */
  virtual void sendQuiet(ConnId c, const struct iovec* iov, int iovcnt) = 0;

  /**
   * Send one frame on the socket of `c` with `nfds` (1..8) file descriptors attached
   * (SCM_RIGHTS; docs/protocol.md "Frames with file descriptors"). Only on a unix socket
   * (tcp, unknown or closed conn: the frame is dropped silently, like `send`). The fds go
   * with the frame's first byte, never inside another frame: when output is queued, the
   * frame and duplicates of the fds wait in the queue and leave with that byte. The caller
   * keeps its fds (close them when you like after this returns). A conn with more than 64
   * fds waiting in its queue (a Process that does not read) is closed.
   */
  virtual void sendWithFds(ConnId c, const struct iovec* iov, int iovcnt, const int* fds, int nfds) = 0;

  /**
   * During `Core::processFrame(c, ...)` (or processHello) only: the oldest fd that came with
   * the frame being handled, removed from the conn (the caller owns it and must close it);
   * -1 when none is left (or outside that call, or another conn). Fds of a frame that the
   * core did not take are closed by the host once the call returns. A unix conn holds at most
   * 8 received fds; more, a control message that is not SCM_RIGHTS or a truncated one close
   * it (EPROTO). docs/protocol.md "Frames with file descriptors".
   */
  virtual int takeFd(ConnId c) = 0;

  /**
   * During `Core::processHello(c, ...)` of a unix Process conn that asked for HELLO feature
   * QUEUE: give it a queue pair (docs/queues.md "The Controller's side"). Fills fds[0..2]
   * with the pair memfd, the Process's doorbell and the Controller's doorbell and, when the
   * host has one, fds[3] with the host's spinner budget page (docs/queues.md "Spinner
   * budget"); all owned by the host: send them with the HELLO reply through sendWithFds, do
   * not close them. Sets *ringBytes. From then on every frame `send` passes for `c` goes on
   * the completion ring (frames with fds still go on the socket), and the Process's frames
   * are read from both.
   * @return how many fds (3 or 4), or 0 (nothing changed: answer without the bit) on tcp,
   * outside processHello, or when the pair cannot be made (logged).
   */
  virtual int attachQueue(ConnId c, int fds[4], uint32_t* ringBytes) = 0;

  /**
   * The core has deliveries for the Process on `c` waiting for its credits (true) or none
   * any more (false). A queued Process acknowledges deliveries without waking the Controller
   * (docs/queues.md "No wake-up for nothing"); while waiting, the host reads its request ring
   * now and asks to be woken by every entry it publishes, acknowledgements included.
   */
  virtual void waitingForCredits(ConnId c, bool waiting) = 0;

  /** Bytes queued for `c` that the kernel has not taken yet (0 for unknown/closed). */
  virtual uint64_t backlog(ConnId c) const = 0;

  /**
   * Close a connection now (queued output is discarded, except what the kernel takes at
   * once: an error reply sent just before still goes out; then FIN). `why` is logged at
   * info with the connection. The core gets processClosed/peerClosed for it later on the loop (never
   * from inside this call).
   */
  virtual void close(ConnId c, const std::string& why) = 0;

  /** Name a link for stats and logs (Process name from HELLO, or "controller-N"). */
  virtual void setLinkInfo(ConnId c, bool peer, uint32_t id, const std::string& name) = 0;

  /** Counters of every link, live and closed (the STATS op answers with them). */
  virtual std::vector<LinkStats> linkStats() const = 0;

  /** One-shot timer (ms, monotonic); returns an id > 0. Runs `fn` on the loop. */
  virtual uint64_t setTimer(uint32_t ms, std::function<void()> fn) = 0;
  /** Cancel a timer that has not fired (unknown ids are ignored). */
  virtual void cancelTimer(uint64_t id) = 0;

  /**
   * A log line: `fieldsJson` is a JSON object text ("{}" when none) whose fields go to the
   * pino line beside `msg` (the JS side parses it), e.g. {"peer":2,"addr":"tcp://..."}.
   */
  virtual void log(LogLevel level, const std::string& msg, const std::string& fieldsJson) = 0;

  /** Monotonic milliseconds (for clocks such as the names' ts). */
  virtual uint64_t nowMs() const = 0;

  /**
   * Monotonic milliseconds read once per loop iteration (when epoll_wait returned): no clock
   * read per call, for stamps on the hot path (the invocation records of INTROSPECT).
   */
  virtual uint64_t loopMs() const = 0;

  /**
   * Whether the Process on `c` may call INTROSPECT: a unix socket whose peer's kernel uid
   * (SO_PEERCRED) is this process's effective uid, or root (docs/protocol.md "Introspection").
   */
  virtual bool mayIntrospect(ConnId c) const = 0;
};

/** Implemented by the core; called by the host. */
class Core {
 public:
  virtual ~Core() = default;

  /**
   * A Process connection's first frame, HELLO (op 0x01), in full. `kernelPid` comes from
   * SO_PEERCRED on a unix socket, 0 on tcp. The core answers it (or closes the conn).
   * From now on the host stops reading `c` while its backlog exceeds maxOutboundBytes.
   */
  virtual void processHello(ConnId c, uint32_t kernelPid, bool unixSocket, const uint8_t* frame, size_t len) = 0;
  /** A later frame of a Process connection (header length already checked by the host). */
  virtual void processFrame(ConnId c, const uint8_t* frame, size_t len) = 0;
  /** The Process connection closed (its failure: revoke what it owned, fire monitors). */
  virtual void processClosed(ConnId c) = 0;

  /**
   * A peer link finished its authenticated handshake: peer `id` at `epoch`. Returns false
   * to refuse it (an older epoch than the live link of that id); the host then closes it
   * and logs. When it returns true and a live link of that id exists, the core has called
   * host.close() on the old one (docs/protocol.md: newer or same epoch replaces).
   * Log lines: the host logs 'peer connected' (info, {peer, epoch}) after a true return,
   * 'peer disconnected' (warn, {peer}) when the live link of an id closes, and the refusal;
   * the core logs the replacement ('peer N reconnected (epoch A -> B); the old link is
   * closed', warn, {peer, epoch, oldEpoch}) as controller.ts did.
   */
  virtual bool peerUp(ConnId c, uint32_t id, uint32_t epoch) = 0;
  /** A frame of an authenticated peer link. */
  virtual void peerFrame(ConnId c, const uint8_t* frame, size_t len) = 0;
  /** An authenticated peer link closed. */
  virtual void peerClosed(ConnId c) = 0;

  /**
   * `c`'s backlog fell to at most maxOutboundBytes after having been above it: work that
   * waited for it resumes (copy chunks to a peer are not queued beyond that bound).
   */
  virtual void drained(ConnId c) = 0;

  /**
   * Zero-copy receive (docs/core.md "Copies across Controllers"). The host calls this for a
   * peer frame of `len` >= kPeerSinkMinBytes bytes that is not complete yet, once its first
   * `have` >= kPeerSinkPeekBytes bytes are buffered, at most once per frame. Returning true
   * with `sink` filled, the core takes the payload [sink->headBytes, len) as bytes written
   * straight from the socket to sink->dst (a mapping it keeps valid until peerSinkDone), and
   * the frame is not passed to peerFrame; false: the frame comes whole through peerFrame.
   * Default: false (every frame whole).
   */
  struct PeerSink {
    uint8_t* dst = nullptr;
    size_t headBytes = 0;
  };
  virtual bool peerSinkOpen(ConnId c, const uint8_t* head, size_t have, size_t len, PeerSink* sink) {
    (void)c, (void)head, (void)have, (void)len, (void)sink;
    return false;
  }
  /**
   * The payload of the frame accepted by peerSinkOpen arrived. `faulted`: writing into the
   * mapping failed (EFAULT, a truncated region); the rest of the payload was read and
   * dropped. Not called when the link closes first (peerClosed is).
   */
  virtual void peerSinkDone(ConnId c, bool faulted) { (void)c, (void)faulted; }

  /** Tables for leak checks (controller.ts tableSizes), as a JSON object text. */
  virtual std::string tableSizesJson() const = 0;
  /** Number of live objects. */
  virtual uint64_t objectCount() const = 0;
  /** controller.ts queuedDeliveryBytes(proc): {provider, invoker} bytes queued for credits. */
  virtual void queuedDeliveryBytes(uint32_t procId, uint64_t* provider, uint64_t* invoker) const = 0;
  /** Ids of connected (authenticated, live) peers. */
  virtual std::vector<uint32_t> connectedPeers() const = 0;
  /**
   * Peer `id` joins (true) or leaves (false) the peer list at run time (cluster membership,
   * controller/membership.ts): a ref to an unlisted, unconnected Controller is dead.
   */
  virtual void setPeerListed(uint32_t id, bool listed) = 0;
  /** Closing: every conn is about to go; the core releases everything without sending. */
  virtual void shutdown() = 0;
};

/** Made by the core (core.cc). */
Core* newCore(Host* host, const CoreConfig& cfg);

}  // namespace fractos

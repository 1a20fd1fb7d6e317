// The Controller core (host.h's fractos::Core): all Controller state and every system call
// and peer frame after framing and the handshake. Where each part lives:
//   core.cc      the handler table of each channel kind (Process, peer), each case with its
//                wire grammar; HELLO; channel failure; STATS; tables for tests
//   caps.cc      cid table and resolve (EBADCAP, EREVOKED, ETYPE, EPERM, ERANGE)
//   objects.cc   object table: pins, holders, collection, revocation, delegation monitors
//   proxies.cc   remote proxies, holds (P_HOLD), calls to peers, installs and drops
//   requests.cc  Request create/derive/invoke, argument merge, delivery queue and credits
//   memory.cc    Memory create/diminish/stat, copies (guarded memcpy, chunked, served)
//   monitors.cc  monitor_delegate / monitor_receive, firing, remote monitors
//   names.cc     KV_PUT / KV_GET and the replicated map (P_KV_PUT)
//   peers.cc     peer frames (P_*), peer links up and down
// Port of the former TS Controller (controller/controller.ts); same wire protocol (docs/protocol.md).
#pragma once
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "caps.h"
#include "host.h"
#include "invocations.h"
#include "objects.h"
#include "wire.h"

namespace fractos {

using Done = std::function<void(const Err&)>;
/** A REPLY: an error, or the frame (valid only during the callback). */
using ReplyCb = std::function<void(const Err&, const uint8_t* frame, size_t len)>;

/** Calls in flight on one connection (libfractos/calls.ts PendingCalls). */
class Calls {
 public:
  /** How many expired calls are remembered so that their late REPLYs are ignored. */
  static constexpr size_t kMaxExpired = 1024;
  uint32_t add(ReplyCb cb);
  /** A call that fails with ETIMEDOUT unless answered within `ms` (a late REPLY is dropped). */
  uint32_t addWithDeadline(Host* host, ReplyCb cb, uint32_t ms, std::string what);
  /** Deliver a REPLY. Errors: EPROTO for a seq with no call waiting. */
  Err complete(Host* host, const uint8_t* f, size_t len);
  /** Fail every call in flight (the link went away). */
  void failAll(Host* host, uint16_t code, const std::string& msg);
  size_t size() const { return pending_.size() - expired_.size(); }
  /** Forget every call without answering it (shutdown): their timers are cancelled. */
  void cancelAll(Host* host);

 private:
  struct Pending {
    ReplyCb cb;
    uint64_t timer = 0;
    bool expired = false;
  };
  uint32_t seq_ = 1;
  std::unordered_map<uint32_t, Pending> pending_;
  std::deque<uint32_t> expired_;
};

/** A delivery waiting for credits: `run` delivers it, `fail` answers its invoker. */
struct Delivery {
  std::function<void()> run;
  std::function<void(const Err&)> fail;
};

/** A Process channel: its capability space, owned objects, credits, calls made to it. */
struct Proc : ProcBase {
  ConnId conn = 0;
  std::string name;
  uint32_t pid = 0;  // from the kernel (SO_PEERCRED); 0 over tcp
  uint32_t features = 0;
  CapTable caps{this};
  uint32_t outstanding = 0;        // DELIVERs not yet acknowledged
  uint64_t outstandingBytes = 0;   // their bytes
  std::deque<uint32_t> sizes;      // sizes of the outstanding DELIVERs, oldest first
  std::deque<Delivery> queue;      // deliveries waiting for credits
  uint64_t queuedBytes = 0;
  Calls calls;
  std::unordered_set<std::string> names;  // bootstrap names it publishes
  uint32_t nameOps = 0;                   // its kv_put/kv_get waiting for the external name store
  /** Its shared regions by its own region id (memory.cc); an entry lives while a Memory object uses it. */
  std::unordered_map<uint32_t, std::weak_ptr<Region>> regions;
};

/** Shared regions one Process may have registered at once (each holds an fd and a mapping here). */
constexpr size_t kMaxRegionsPerProcess = 1024;

/** An authenticated link to a peer Controller. */
struct Peer {
  uint32_t id = 0;
  uint32_t epoch = 0;
  ConnId conn = 0;
  bool alive = true;
  Calls calls;
  /** The P_MEM_WRITE whose payload the host is receiving straight into `map` (peerSinkOpen). */
  struct Sink {
    bool open = false;
    uint32_t seq = 0;
    std::shared_ptr<Obj> obj;
    std::shared_ptr<Region> map;  // kept mapped until the payload is in
  } sink;
};

/** A bootstrap name (names.cc). */
struct KvEntry {
  Ref ref;
  uint64_t ts = 0;     // last-writer-wins clock; with an external store its revision (etcd mod_revision)
  uint64_t since = 0;  // first claim; with an external store its create revision
  uint32_t origin = 0;
  uint32_t originEpoch = 0;
  uint32_t ownerProc = 0;
  std::shared_ptr<Target> pinned;  // the published object, pinned, when the publisher is local
};

/** A Request's cap arguments resolved to targets. */
struct TArg {
  uint16_t slot;
  std::shared_ptr<Target> t;
};

/** Invocation records kept for INTROSPECT (controller/invocation-ring.ts DEFAULT_INVOCATION_RING). */
constexpr size_t kInvocationRing = 1024;
/** At most this many Processes in one INTROSPECT reply (libfractos/introspect.ts MAX_INTROSPECT_PROCS). */
constexpr size_t kMaxIntrospectProcs = 4096;

class CoreImpl final : public Core, public ObjectEvents {
 public:
  CoreImpl(Host* host, const CoreConfig& cfg);
  ~CoreImpl() override;

  // Core (host.h)
  void processHello(ConnId c, uint32_t kernelPid, bool unixSocket, const uint8_t* frame, size_t len) override;
  void processFrame(ConnId c, const uint8_t* frame, size_t len) override;
  void processClosed(ConnId c) override;
  bool peerUp(ConnId c, uint32_t id, uint32_t epoch) override;
  void peerFrame(ConnId c, const uint8_t* frame, size_t len) override;
  void peerClosed(ConnId c) override;
  void drained(ConnId c) override;
  bool peerSinkOpen(ConnId c, const uint8_t* head, size_t have, size_t len, PeerSink* sink) override;
  void peerSinkDone(ConnId c, bool faulted) override;
  std::string tableSizesJson() const override;
  uint64_t objectCount() const override { return objects_.size(); }
  void queuedDeliveryBytes(uint32_t procId, uint64_t* provider, uint64_t* invoker) const override;
  std::vector<uint32_t> connectedPeers() const override;
  void setPeerListed(uint32_t id, bool listed) override;
  void shutdown() override;

  // ObjectEvents
  void fireMonitor(const Monitor& m, uint16_t reason) override;
  void sendRevoked(uint32_t peer, const Ref& ref, uint16_t reason) override;
  void proxyUnused(Proxy* p) override;
  void proxyFirstRef(Proxy* p) override;

  /** Test hook: the next cid of process `procId`'s space. */
  bool setNextCidForTest(uint32_t procId, uint32_t cid);

 private:
  // ---- core.cc: channels
  Err onProcFrame(const std::shared_ptr<Proc>& proc, const uint8_t* f, size_t len);
  void procError(const std::shared_ptr<Proc>& proc, uint32_t seq, const Err& e);
  void procGone(const std::shared_ptr<Proc>& proc);
  void replyOk(Proc& proc, uint32_t seq);
  void replyErr(ConnId c, uint32_t seq, const Err& e);
  void replyCid(Proc& proc, uint32_t seq, uint32_t cid);
  Done replyDone(const std::shared_ptr<Proc>& proc, uint32_t seq);
  /** replyDone of REQUEST_INVOKE_QUIET: a success goes with Host::sendQuiet. */
  Done replyDoneQuiet(const std::shared_ptr<Proc>& proc, uint32_t seq);
  void replyStats(Proc& proc, uint32_t seq);
  void replyIntrospect(Proc& proc, uint32_t seq, uint64_t since);
  void send(ConnId c, const Frame& f);
  void sendv(ConnId c, const Frame& head, const uint8_t* data, size_t len);
  void log(LogLevel l, const std::string& msg, const std::string& fields = "{}");

  // ---- proxies.cc: targets, installs, proxies, peer calls
  Err target(Proc& proc, uint32_t cid, std::shared_ptr<Target>* out);
  Err capTargets(Proc& proc, const Args& args, std::vector<TArg>* out);
  Err install(Proc& proc, const std::shared_ptr<Target>& t, uint32_t* cid);
  void dropEntry(Proc& proc, uint32_t cid);
  void hold(Proxy* p);
  void sendHold(const Ref& ref, int32_t delta);
  std::shared_ptr<Proxy> proxyFor(const Ref& ref, bool preheld);
  void forgetUnused(const std::shared_ptr<Proxy>& p);
  std::shared_ptr<Target> targetFromRef(const Ref& ref);
  Err localObj(const Ref& ref, std::shared_ptr<Obj>* out);
  void proxyRevoked(Proxy* p, uint16_t reason);
  /** Unpins-on-release guard for the cap arguments of an invocation not delivered at once. */
  std::function<void()> pinArgs(const std::vector<TArg>& args);
  void peerCall(const std::shared_ptr<Proxy>& t, Frame& f, ReplyCb cb);
  void peerArgsCall(const std::shared_ptr<Proxy>& t, uint16_t op, const Args& raw, const std::vector<TArg>& args, ReplyCb cb);
  ReplyCb replyNewProxy(const std::shared_ptr<Proc>& proc, uint32_t seq, std::optional<RemoteMem> mem);
  std::optional<RemoteMem> memOf(const Target* t) const;

  // ---- requests.cc
  Err mergeArgs(const RequestInfo* base, uint32_t tag, const Args& raw, const std::vector<TArg>& caps,
                std::shared_ptr<RequestInfo>* out) const;
  Err derive(const std::shared_ptr<Obj>& obj, const Args& raw, const std::vector<TArg>& caps, std::shared_ptr<Obj>* out);
  std::shared_ptr<Obj> revtree(const std::shared_ptr<Obj>& obj);
  void invokeLocal(const std::shared_ptr<Obj>& obj, const Args& raw, const std::vector<TArg>& caps, uint64_t invoker, Done done);
  bool hasCredit(const Proc& p) const;
  void drainQueue(Proc& p);
  Err acked(Proc& p, uint32_t n);
  Err deliver(const std::shared_ptr<Proc>& provider, const RequestInfo& info);

  // ---- memory.cc
  Err memoryCreate(const std::shared_ptr<Proc>& proc, uint32_t seq, const uint8_t* f, size_t len);
  Err diminish(const std::shared_ptr<Obj>& obj, uint8_t drop, uint64_t off, uint64_t size, std::shared_ptr<Obj>* out);
  void memoryStat(const std::shared_ptr<Proc>& proc, uint32_t seq, const std::shared_ptr<Target>& t);
  Err memoryMap(const std::shared_ptr<Proc>& proc, uint32_t seq, const std::shared_ptr<Target>& t);
  /** MemFlag bits of a local Memory object as `to` sees it (MEMORY_STAT, DELIVER descriptors). */
  uint8_t memFlags(const Obj& o, const Proc& to) const;
  void learnMem(const std::shared_ptr<Proxy>& t, std::function<void(const Err&, const RemoteMem*)> cb);
  void execCopy(const std::shared_ptr<Obj>& src, const std::shared_ptr<Target>& dst, Done done);
  void readChunk(const std::shared_ptr<Obj>& obj, uint64_t off, uint32_t len, uint8_t* into, Done cb);
  void writeChunk(const std::shared_ptr<Target>& t, uint64_t off, uint64_t total, const uint8_t* data, size_t len, Done cb);
  void writeLocal(const std::shared_ptr<Obj>& obj, uint64_t off, const uint8_t* data, size_t len, Done cb);
  Err regionFault(const MemInfo& m, bool other);
  struct CopyJob;
  void copyPump(const std::shared_ptr<CopyJob>& job);
  void copyFinish(const std::shared_ptr<CopyJob>& job, const Err& e);
  void sendChunkFromMapping(const std::shared_ptr<CopyJob>& job, uint64_t off, uint32_t len);
  std::shared_ptr<std::vector<uint8_t>> takeChunkBuf();
  void giveChunkBuf(std::shared_ptr<std::vector<uint8_t>> b);
  /** The link a copy chunk to `t` goes out on (0: not a proxy, or its peer is not connected). */
  ConnId peerConnOf(const Target* t) const;

  // ---- monitors.cc
  void monitorReceive(const std::shared_ptr<Proc>& proc, const std::shared_ptr<Target>& t, uint32_t token);
  void monitorDelegate(const std::shared_ptr<Proc>& proc, const std::shared_ptr<Target>& t, uint32_t token, uint32_t seq);
  void peerMonitorDelegate(Peer& peer, Obj* obj, uint32_t token);
  void peerMonitorFire(uint32_t token, uint16_t reason);

  // ---- names.cc
  /** KV_PUT: answered now (the core's map) or when the external name store answers. */
  Err kvPut(const std::shared_ptr<Proc>& proc, uint32_t seq, std::string_view name, const std::shared_ptr<Target>& t);
  Err kvCheck(const std::shared_ptr<Proc>& proc, std::string_view name) const;
  void kvPutStore(const std::shared_ptr<Proc>& proc, uint32_t seq, std::string name, const std::shared_ptr<Target>& t);
  void kvGetStore(const std::shared_ptr<Proc>& proc, uint32_t seq, std::string name);
  /** Answer a KV_GET from the store whose cap lives on `ref`'s Controller (waits for its link, see kPeerJoinWaitMs). */
  void kvGetAnswerRef(const std::shared_ptr<Proc>& proc, uint32_t seq, const std::string& name, const Ref& ref);
  /** Answer (or wait again) the KV_GETs that wait for a link to `peerId`. */
  void kvJoinWaitersRun(uint32_t peerId);
  /** Answer a KV_GET with a new cap on `t` (a revocation-tree child of a local object, a proxy's child via its origin). */
  void kvAnswer(const std::shared_ptr<Proc>& proc, uint32_t seq, const std::shared_ptr<Target>& t);
  NameRecord kvRecord(const std::string& name, const KvEntry& e) const;
  /** KV_LIST: the names this Controller holds, sorted, from index `start` (as many as fit in 64 KiB). */
  void kvList(Proc& proc, uint32_t seq, uint32_t start);
  Err kvPutLocal(const std::shared_ptr<Proc>& proc, std::string_view name, const std::shared_ptr<Target>& t);
  void kvGet(const std::shared_ptr<Proc>& proc, uint32_t seq, std::string_view name);
  void kvSet(const std::string& name, const KvEntry* e);
  void kvProcGone(Proc& proc);
  Err kvFromPeer(Peer& peer, std::string_view name, const KvEntry& n, bool del);
  void kvPeerGone(uint32_t peerId);
  void kvPeerUp(Peer& peer);
  void sendKv(Peer& peer, const std::string& name, const KvEntry& e, bool del);

  // ---- peers.cc
  Err onPeerFrame(const std::shared_ptr<Peer>& peer, const uint8_t* f, size_t len);
  void peerGone(const std::shared_ptr<Peer>& peer);
  Peer* peerOf(uint32_t id) const;

  Host* host_;
  const uint32_t id_;
  const uint32_t epoch_;
  const Limits limits_;
  const uint32_t servedTimeoutMs_;
  ObjectTable objects_;
  uint32_t nextProcId_ = 1;
  std::map<uint32_t, std::shared_ptr<Proc>> procs_;
  std::unordered_map<ConnId, std::shared_ptr<Proc>> procByConn_;
  std::map<uint32_t, std::shared_ptr<Peer>> peers_;
  std::unordered_map<ConnId, std::shared_ptr<Peer>> peerByConn_;
  std::unordered_map<Ref, std::shared_ptr<Proxy>, RefHash> proxies_;
  std::unordered_set<Proxy*> preheld_;
  std::shared_ptr<Proxy> dead_;
  std::unordered_set<uint32_t> peerIds_;  // the static peer list
  /** Bootstrap names: every name (no external store), or only this Controller's own (an external store). */
  std::map<std::string, KvEntry> kv_;
  NameStore* const store_;                   // the external name store, or null
  std::unordered_set<std::string> putting_;  // names with a put in flight to the store
  /** A KV_GET answered by the store with a cap of a Controller this one has not linked to yet (names.cc). */
  struct JoinWaiter {
    std::shared_ptr<Proc> proc;
    uint32_t seq;
    std::string name;
    Ref ref;
    uint64_t timer;
  };
  std::unordered_multimap<uint32_t, JoinWaiter> joinWaiters_;  // by the awaited Controller's id
  /** Recent invocations for INTROSPECT (fixed size; recording allocates nothing). */
  InvocationRing invocations_{kInvocationRing};
  uint64_t kvClock_ = 0;
  struct RemoteMonitor {
    std::shared_ptr<Proc> proc;
    uint32_t token;
  };
  std::unordered_map<uint32_t, RemoteMonitor> remoteMonitors_;
  uint32_t nextRemoteToken_ = 1;
  /** Copies waiting for a peer link's backlog to drain (drained()), by the link. */
  std::unordered_map<ConnId, std::vector<std::shared_ptr<CopyJob>>> copyWaiters_;
  /** Chunk buffers (kCopyChunkBytes each) of copies, reused; at most kChunkPoolMax kept. */
  static constexpr size_t kChunkPoolMax = 2 * kCopyWindow;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> chunkPool_;
  uint64_t nextRegionKey_ = 1;
  /** Bytes of invocations queued for credits per invoker (its ConnId). */
  std::unordered_map<uint64_t, uint64_t> queuedByInvoker_;
  bool closing_ = false;
  Frame out_;         // scratch for frames built and sent at once (nothing called in between)
  Frame deliverOut_;  // scratch for DELIVER (installs send P_HOLDs while it is built)
  Frame chunkHead_;   // scratch for the head of a copy chunk (P_MEM_WRITE, MEM_WRITE)
  Args args_;   // scratch for parsed args
};

}  // namespace fractos

// The object table (paper §3.5): Memory and Request objects owned by this Controller's
// Processes, proxies of objects owned by peers, and what keeps each alive: cap entries,
// pins (bootstrap names, cap slots of Requests, arguments in flight), holds of peers,
// revocation-tree children. Revocation, collection and monitor arming live here; every
// effect on a wire goes through ObjectEvents (no I/O in this file).
#pragma once
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "wire.h"

namespace fractos {

struct Obj;
struct Proc;

/** What objects need of a Process: its id, liveness and the base objects it registered. */
struct ProcBase {
  uint32_t id = 0;
  bool alive = true;
  std::unordered_set<Obj*> owned;
};

/**
 * A shared region: a sealed memfd its owner passed with its first MEMORY_CREATE, mapped whole
 * by the Controller (memory.cc). Kept alive by the Memory objects on it; the fds are closed and
 * the mapping dropped when the last one goes.
 */
struct Region {
  uint64_t key = 0;        // Controller-unique, never reused (MEMORY_STAT, descriptors, MEMORY_MAP)
  int fd = -1;             // the owner's memfd, read-write (handed by MEMORY_MAP)
  int roFd = -1;           // a read-only reopen of it, made on the first read-only MEMORY_MAP
  uint8_t* base = nullptr;
  size_t len = 0;
  bool shareWhole = false; // the owner lets holders of any view map the whole region
  bool faulted = false;    // a copy faulted on it (logged once)
  /** fds held by all Regions of this OS process (fd and roFd): bounded by memory.cc against RLIMIT_NOFILE. */
  static std::atomic<int64_t> openFds;
  Region() = default;
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region();
};

/** Memory payload: where the bytes are and what a holder may do. */
struct MemInfo {
  uint8_t backing = kShared;
  std::shared_ptr<Region> map;   // the region (shared), or null
  uint64_t servedKey = 0;        // the owner's key (served)
  uint64_t offset = 0;           // of this view in the region / served object (bytes)
  uint64_t size = 0;
  uint8_t perms = 0;
};

/** Size, perms and backing of a remote Memory object, as carried on peer links. */
struct RemoteMem {
  uint64_t size = 0;
  uint8_t perms = 0;
  uint8_t backing = 0;
};

struct Target;
/** Request payload: tag and arguments set so far (immutable once built). */
struct RequestInfo {
  uint32_t tag = 0;
  struct Imm {
    uint32_t offset;
    std::string bytes;
  };
  std::vector<Imm> imms;                        // sorted by offset, non-overlapping
  std::vector<std::shared_ptr<Target>> caps;    // sparse slots
};

/** A monitor of a local Process (`proc`) or on behalf of peer `peer` (proc null). */
struct Monitor {
  std::shared_ptr<Proc> proc;
  uint32_t peer = 0;
  uint32_t token = 0;
};
struct DelegMonitor {
  Monitor m;
  bool armed = false;
};

/** An object or a proxy: what a cap entry names. */
struct Target {
  const bool isProxy;
  bool revoked = false;
  /** Cap entries naming this target, per capability space (Proc). */
  std::vector<std::pair<const ProcBase*, uint32_t>> entries;
  uint64_t nEntries = 0;
  /** Pins: bootstrap names, cap slots of Requests, arguments in flight. */
  uint64_t pins = 0;
  std::vector<Monitor> recvMonitors;
  explicit Target(bool proxy) : isProxy(proxy) {}
  virtual ~Target() = default;
  void addEntry(const ProcBase* p);
  void removeEntry(const ProcBase* p);
  uint32_t entriesOf(const ProcBase* p) const;
};

/** An object owned by this Controller. */
struct Obj : Target {
  uint64_t id;
  Kind kind;
  std::shared_ptr<Proc> owner;
  std::shared_ptr<Obj> parent;  // null for a base object
  std::unordered_set<Obj*> children;
  /** Peers holding caps: peer id -> holds. */
  std::map<uint32_t, int64_t> remoteHolds;
  std::vector<DelegMonitor> delegMonitors;
  std::shared_ptr<const MemInfo> mem;
  std::shared_ptr<const RequestInfo> req;
  Obj(uint64_t i, Kind k) : Target(false), id(i), kind(k) {}
  ProcBase* ownerBase() const;
};

/** A target owned by another Controller. */
struct Proxy : Target {
  Ref ref;
  std::optional<RemoteMem> mem;
  explicit Proxy(const Ref& r) : Target(true), ref(r) {}
};

/** Effects of object changes on the wires (implemented by the core). */
class ObjectEvents {
 public:
  virtual ~ObjectEvents() = default;
  virtual void fireMonitor(const Monitor& m, uint16_t reason) = 0;
  virtual void sendRevoked(uint32_t peer, const Ref& ref, uint16_t reason) = 0;
  /** A reference to proxy `p` went away and nothing holds it any more. */
  virtual void proxyUnused(Proxy* p) = 0;
  /** First reference to proxy `p` on this Controller: hold it at its owner. */
  virtual void proxyFirstRef(Proxy* p) = 0;
};

/** The local objects by id, with the rules that keep them alive. No I/O. */
class ObjectTable {
 public:
  ObjectTable(ObjectEvents* ev, uint32_t controller, uint32_t epoch) : ev_(ev), controller_(controller), epoch_(epoch) {}

  /** A new object (base when `parent` is null); pins the targets in `req`'s cap slots. */
  std::shared_ptr<Obj> create(Kind kind, const std::shared_ptr<Proc>& owner, const std::shared_ptr<Obj>& parent,
                              std::shared_ptr<const MemInfo> mem, std::shared_ptr<const RequestInfo> req);
  /** A live object by id, or null. */
  Obj* get(uint64_t id) const;
  std::shared_ptr<Obj> getShared(uint64_t id) const;
  size_t size() const { return objs_.size(); }
  Ref refOf(const Target* t) const;

  /** Whether a new reference to `t` is this Controller's first (its owner must be told). */
  static bool firstRef(const Target* t);
  void pin(Target* t);
  void unpin(Target* t);
  /** Holders of `obj`: children, entries (not of `exclude`), peer holds (one fewer of `excludePeer`), pins. */
  uint64_t holders(const Obj* obj, const ProcBase* exclude, uint32_t excludePeer = 0) const;
  /** A reference to `t` went away: collect derived objects, fire delegation monitors. */
  void released(Target* t);
  /** Collect a derived object nothing references any more. */
  void maybeCollect(Obj* obj);
  /** Revoke `root` and its whole revocation tree at once (paper §3.5). */
  void revoke(Obj* root, uint16_t reason);
  void armDelegMonitors(Obj* obj);
  void checkDelegMonitors(Obj* obj);
  /** Every live object (for a peer's disconnection). */
  template <class F>
  void forEach(F f) {
    for (auto& [id, o] : objs_) f(o.get());
  }
  /** Drop everything without effects (shutdown). */
  void clear();

 private:
  void unpinArgs(Obj* obj);
  ObjectEvents* ev_;
  uint32_t controller_;
  uint32_t epoch_;
  uint64_t nextId_ = 1;
  std::unordered_map<uint64_t, std::shared_ptr<Obj>> objs_;
};

}  // namespace fractos

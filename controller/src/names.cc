// Bootstrap names: KV_PUT / KV_GET and the map replicated to every peer (P_KV_PUT). Each
// name belongs to its publisher (origin Controller, its epoch, owner process). Port of
// controller.ts #kvPutLocal, #kvSet, #kvProcGone, #kvFromPeer, with one fix: a peer's
// P_KV_PUT only ever names entries whose origin is that peer (EPROTO otherwise), its delete
// removes only an entry still of that same owner, and a local owner's entry is replaced by a
// peer's put only by the conflict rule of docs/protocol.md (an earlier claim).
//
// With an external name store (CoreConfig.names: etcd in cluster mode, docs/cluster.md
// "Names in etcd") the store holds every name, one value per name cluster-wide; kv_ keeps
// only this Controller's own published names (their pins, for republish and removal when
// the publisher goes), KV_PUT and KV_GET are answered when the store answers, and nothing
// is replicated with P_KV_PUT.
#include <chrono>

#include "core.h"

namespace fractos {

namespace {
/** Characters of a UTF-8 name (code points; malformed bytes count one each). */
size_t chars(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xc0) != 0x80) n++;
  return n;
}
uint64_t wallMs() {
  return uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}
}  // namespace

/** Bytes of a name's UTF-8 (256 characters of at most 4 bytes). */
constexpr size_t kMaxNameBytes = 1024;
/** kv_put/kv_get of one Process waiting for the external name store at once (EAGAIN beyond). */
constexpr uint32_t kMaxNameOpsPerProcess = 64;
/** How long a KV_GET whose cap lives on a joining Controller waits for its link (then EREVOKED). */
constexpr uint32_t kPeerJoinWaitMs = 5000;
/** Names all Processes of one Controller publish in the external store (ENOSPC beyond): at most ~64 MiB of etcd. */
constexpr size_t kMaxStoredNamesPerController = 65536;

Err CoreImpl::kvCheck(const std::shared_ptr<Proc>& proc, std::string_view nameView) const {
  size_t n = chars(nameView);
  if (n == 0 || n > 256 || nameView.size() > kMaxNameBytes) return Err(kInval, "name must be 1..256 characters (at most 1024 bytes)");
  std::string name(nameView);
  auto it = kv_.find(name);
  const KvEntry* old = it == kv_.end() ? nullptr : &it->second;
  if (old && !(old->origin == id_ && old->originEpoch == epoch_ && old->ownerProc == proc->id)) {
    std::string who;
    if (old->origin == id_) {
      auto p = procs_.find(old->ownerProc);
      std::string pname = p != procs_.end() && !p->second->name.empty() ? p->second->name : "unnamed";
      who = "process " + std::to_string(old->ownerProc) + " (" + pname + ")";
    } else {
      who = "process " + std::to_string(old->ownerProc) + " of controller " + std::to_string(old->origin);
    }
    return Err(kExist, "'" + name + "' is published by " + who + "; only its publisher can replace it");
  }
  if (!old && proc->names.size() >= kMaxNamesPerProcess)
    return Err(kNoSpc, "process " + std::to_string(proc->id) + " already publishes " + std::to_string(kMaxNamesPerProcess) + " names");
  return Err();
}

Err CoreImpl::kvPut(const std::shared_ptr<Proc>& proc, uint32_t seq, std::string_view name, const std::shared_ptr<Target>& t) {
  if (!store_) {
    if (Err e = kvPutLocal(proc, name, t)) return e;
    replyOk(*proc, seq);
    return Err();
  }
  if (Err e = kvCheck(proc, name)) return e;
  if (proc->nameOps >= kMaxNameOpsPerProcess)
    return Err(kAgain, "process " + std::to_string(proc->id) + " has " + std::to_string(kMaxNameOpsPerProcess) + " name operations in flight");
  std::string n(name);
  if (putting_.count(n)) return Err(kBusy, "a kv_put of '" + n + "' is in flight");
  if (!kv_.count(n) && kv_.size() + putting_.size() >= kMaxStoredNamesPerController)
    return Err(kNoSpc, "this controller's processes publish " + std::to_string(kMaxStoredNamesPerController) + " names already");
  kvPutStore(proc, seq, std::move(n), t);
  return Err();
}

NameRecord CoreImpl::kvRecord(const std::string&, const KvEntry& e) const {
  NameRecord r;
  r.origin = e.origin;
  r.originEpoch = e.originEpoch;
  r.ownerProc = e.ownerProc;
  r.refController = e.ref.controller;
  r.refEpoch = e.ref.epoch;
  r.refId = e.ref.id;
  return r;
}

void CoreImpl::kvPutStore(const std::shared_ptr<Proc>& proc, uint32_t seq, std::string name, const std::shared_ptr<Target>& t) {
  KvEntry e;
  e.ref = objects_.refOf(t.get());
  e.origin = id_;
  e.originEpoch = epoch_;
  e.ownerProc = proc->id;
  e.pinned = t;
  objects_.pin(t.get());  // while the put is in flight
  putting_.insert(name);
  proc->nameOps++;
  store_->put(name, kvRecord(name, e), [this, proc, seq, name, e](uint16_t code, const std::string& msg, const NameRecord& r) {
    if (closing_) return;
    putting_.erase(name);
    proc->nameOps--;
    if (code == kOk && !proc->alive) {
      store_->remove(name, r);  // its publisher went while the put was in flight
    } else if (code == kOk) {
      KvEntry stored = e;
      stored.ts = uint64_t(r.revision);
      stored.since = uint64_t(r.createRevision);
      kvSet(name, &stored);
      proc->names.insert(name);
      log(LogLevel::Debug, "name '" + name + "' published at revision " + std::to_string(r.revision),
          "{\"proc\":" + std::to_string(proc->id) + ",\"revision\":" + std::to_string(r.revision) + "}");
    }
    objects_.unpin(e.pinned.get());
    if (!proc->alive) return;
    if (code == kOk) replyOk(*proc, seq);
    else replyErr(proc->conn, seq, Err(code, msg));
  });
}

void CoreImpl::kvGetStore(const std::shared_ptr<Proc>& proc, uint32_t seq, std::string name) {
  if (chars(name) == 0 || chars(name) > 256 || name.size() > kMaxNameBytes)
    return replyErr(proc->conn, seq, Err(kInval, "name must be 1..256 characters (at most 1024 bytes)"));
  if (proc->nameOps >= kMaxNameOpsPerProcess)
    return replyErr(proc->conn, seq, Err(kAgain, "process " + std::to_string(proc->id) + " has " + std::to_string(kMaxNameOpsPerProcess) + " name operations in flight"));
  proc->nameOps++;
  store_->get(name, [this, proc, seq, name](uint16_t code, const std::string& msg, const NameRecord& r) {
    if (closing_) return;
    proc->nameOps--;
    if (!proc->alive) return;
    if (code != kOk) return replyErr(proc->conn, seq, Err(code, msg));
    // A name of this Controller's earlier epoch, or of an earlier epoch of a peer linked at
    // a newer one, names objects that are gone (its lease has not expired yet): as if absent.
    Peer* origin = r.origin == id_ ? nullptr : peerOf(r.origin);
    if ((r.origin == id_ && r.originEpoch != epoch_) || (origin && origin->epoch > r.originEpoch))
      return replyErr(proc->conn, seq, Err(kNoEnt, "no cap published as '" + name + "' (its publisher's controller " +
                                                       std::to_string(r.origin) + " restarted)"));
    proc->nameOps++;  // until answered: a waiter counts against the Process's bound
    kvGetAnswerRef(proc, seq, name, Ref{r.refController, r.refEpoch, r.refId});
  });
}

// The store holds a name only while its Controller's lease lives, so a name of a Controller
// this one has no link to (or only a link to an older epoch of) is of one that is joining:
// membership (etcd's watch) and the name travel on different paths, and the name may win.
// Its KV_GET waits for the link, up to kPeerJoinWaitMs, instead of answering a cap that
// fails with "not connected".
void CoreImpl::kvGetAnswerRef(const std::shared_ptr<Proc>& proc, uint32_t seq, const std::string& name, const Ref& ref) {
  Peer* peer = ref.controller == id_ ? nullptr : peerOf(ref.controller);
  if (ref.controller != id_ && (!peer || peer->epoch < ref.epoch)) {
    uint32_t id = ref.controller;
    uint64_t timer = host_->setTimer(kPeerJoinWaitMs, [this, id, seq, p = proc.get()]() {
      auto range = joinWaiters_.equal_range(id);
      for (auto it = range.first; it != range.second; ++it) {
        if (it->second.proc.get() != p || it->second.seq != seq) continue;
        JoinWaiter w = std::move(it->second);
        joinWaiters_.erase(it);
        w.proc->nameOps--;
        if (w.proc->alive)
          replyErr(w.proc->conn, w.seq,
                   Err(kRevoked, "'" + w.name + "' names a cap of controller " + std::to_string(id) + " (epoch " +
                                     std::to_string(w.ref.epoch) + "), which has not linked to this one in " +
                                     std::to_string(kPeerJoinWaitMs) + " ms"));
        return;
      }
    });
    joinWaiters_.emplace(id, JoinWaiter{proc, seq, name, ref, timer});
    return;
  }
  proc->nameOps--;
  if (!proc->alive) return;
  if (peer && peer->epoch > ref.epoch)
    return replyErr(proc->conn, seq, Err(kNoEnt, "no cap published as '" + name + "' (its controller " +
                                                     std::to_string(ref.controller) + " restarted)"));
  kvAnswer(proc, seq, targetFromRef(ref));
}

void CoreImpl::kvJoinWaitersRun(uint32_t peerId) {
  if (joinWaiters_.empty()) return;
  auto range = joinWaiters_.equal_range(peerId);
  std::vector<JoinWaiter> ws;
  for (auto it = range.first; it != range.second; ++it) ws.push_back(std::move(it->second));
  joinWaiters_.erase(range.first, range.second);
  for (auto& w : ws) {
    host_->cancelTimer(w.timer);
    kvGetAnswerRef(w.proc, w.seq, w.name, w.ref);  // waits again if the link is still to an older epoch
  }
}

Err CoreImpl::kvPutLocal(const std::shared_ptr<Proc>& proc, std::string_view nameView, const std::shared_ptr<Target>& t) {
  if (Err e = kvCheck(proc, nameView)) return e;
  std::string name(nameView);
  auto it = kv_.find(name);
  const KvEntry* old = it == kv_.end() ? nullptr : &it->second;
  uint64_t ts = wallMs() * 1024 + (kvClock_++ % 1024);
  KvEntry e;
  e.ref = objects_.refOf(t.get());
  e.ts = ts;
  e.since = old ? old->since : ts;
  e.origin = id_;
  e.originEpoch = epoch_;
  e.ownerProc = proc->id;
  e.pinned = t;
  kvSet(name, &e);
  proc->names.insert(name);
  for (auto& [id, p] : peers_) sendKv(*p, name, e, false);
  return Err();
}

void CoreImpl::kvSet(const std::string& name, const KvEntry* e) {
  std::shared_ptr<Target> oldPinned;
  auto it = kv_.find(name);
  if (it != kv_.end()) oldPinned = it->second.pinned;
  if (e && e->pinned) objects_.pin(e->pinned.get());
  if (e) kv_[name] = *e;
  else if (it != kv_.end()) kv_.erase(it);
  if (oldPinned) objects_.unpin(oldPinned.get());
}

void CoreImpl::kvGet(const std::shared_ptr<Proc>& proc, uint32_t seq, std::string_view nameView) {
  if (store_) return kvGetStore(proc, seq, std::string(nameView));
  auto it = kv_.find(std::string(nameView));
  if (it == kv_.end()) return replyErr(proc->conn, seq, Err(kNoEnt, "no cap published as '" + std::string(nameView) + "'"));
  kvAnswer(proc, seq, targetFromRef(it->second.ref));
}

void CoreImpl::kvAnswer(const std::shared_ptr<Proc>& proc, uint32_t seq, const std::shared_ptr<Target>& t) {
  uint32_t cid;
  if (t->revoked) {
    if (Err e = install(*proc, t, &cid)) {
      if (t->isProxy) forgetUnused(std::static_pointer_cast<Proxy>(t));
      return procError(proc, seq, e);
    }
    return replyCid(*proc, seq, cid);
  }
  if (!t->isProxy) {
    // Each getter gets its own revocation-tree child, so a getter's cap_revoke cuts off
    // only itself; the publisher keeps the root.
    auto obj = std::static_pointer_cast<Obj>(t);
    auto child = revtree(obj);
    if (Err e = install(*proc, child, &cid)) {
      objects_.maybeCollect(child.get());  // ENOSPC: the child has no holder
      return procError(proc, seq, e);
    }
    replyCid(*proc, seq, cid);
    objects_.armDelegMonitors(obj.get());  // the getter's child is a delegated copy of the published object
    return;
  }
  auto p = std::static_pointer_cast<Proxy>(t);
  Frame f;
  f.start(op::P_REVTREE, 0).ref(p->ref);
  ReplyCb done = replyNewProxy(proc, seq, p->mem);
  peerCall(p, f, [this, p, done](const Err& e, const uint8_t* rf, size_t len) {
    forgetUnused(p);
    done(e, rf, len);
  });
}

void CoreImpl::kvProcGone(Proc& proc) {
  auto names = std::move(proc.names);
  proc.names.clear();
  for (auto& name : names) {
    auto it = kv_.find(name);
    if (it == kv_.end()) continue;
    KvEntry e = it->second;
    if (e.origin != id_ || e.originEpoch != epoch_ || e.ownerProc != proc.id) continue;  // lost to an earlier remote claim
    kvSet(name, nullptr);
    if (store_) {
      store_->remove(name, kvRecord(name, e));
      continue;
    }
    for (auto& [id, p] : peers_) sendKv(*p, name, e, true);
  }
}

Err CoreImpl::kvFromPeer(Peer& peer, std::string_view nameView, const KvEntry& n, bool del) {
  if (store_) return Err();  // names live in the external store; a peer without one replicates nothing here
  size_t nc = chars(nameView);
  if (nc == 0 || nc > 256 || nameView.size() > kMaxNameBytes) return Err(kProto, "P_KV_PUT name must be 1..256 characters (at most 1024 bytes)");
  if (n.origin != peer.id)
    return Err(kProto, "P_KV_PUT from controller " + std::to_string(peer.id) + " names origin " + std::to_string(n.origin));
  std::string name(nameView);
  auto it = kv_.find(name);
  const KvEntry* old = it == kv_.end() ? nullptr : &it->second;
  bool same = old && old->origin == n.origin && old->originEpoch == n.originEpoch && old->ownerProc == n.ownerProc;
  if (del) {
    if (same) kvSet(name, nullptr);  // only the owner's own entry, never another origin's
    return Err();
  }
  if (old && !same) {
    bool staleEpoch = old->origin == n.origin && old->originEpoch < n.originEpoch;
    bool earlier = old->since < n.since ||
                   (old->since == n.since && (old->origin < n.origin || (old->origin == n.origin && old->ownerProc < n.ownerProc)));
    if (!staleEpoch && earlier) return Err();
    if (old->origin == id_) {
      auto p = procs_.find(old->ownerProc);
      if (p != procs_.end()) p->second->names.erase(name);
      log(LogLevel::Warn,
          "name '" + name + "' of process " + std::to_string(old->ownerProc) + " lost to an earlier claim by process " +
              std::to_string(n.ownerProc) + " of controller " + std::to_string(peer.id),
          "{\"proc\":" + std::to_string(old->ownerProc) + ",\"peer\":" + std::to_string(peer.id) + "}");
    }
  } else if (same && old->ts >= n.ts) {
    return Err();
  }
  KvEntry e = n;
  e.pinned = nullptr;
  kvSet(name, &e);
  return Err();
}

void CoreImpl::kvPeerGone(uint32_t peerId) {
  if (store_) return;  // the store drops them with the peer's lease
  std::vector<std::string> gone;
  for (auto& [name, e] : kv_)
    if (e.origin == peerId) gone.push_back(name);
  for (auto& name : gone) kvSet(name, nullptr);
}

void CoreImpl::kvPeerUp(Peer& peer) {
  if (store_) return;
  // Names of an older epoch of this peer are stale; it sends its current ones.
  std::vector<std::string> stale;
  for (auto& [name, e] : kv_)
    if (e.origin == peer.id && e.originEpoch != peer.epoch) stale.push_back(name);
  for (auto& name : stale) kvSet(name, nullptr);
  for (auto& [name, e] : kv_)
    if (e.origin == id_) sendKv(peer, name, e, false);
}

void CoreImpl::sendKv(Peer& peer, const std::string& name, const KvEntry& e, bool del) {
  encodePKvPut(out_, e.ts, e.since, e.origin, e.ownerProc, del, e.ref, name);
  send(peer.conn, out_);
}

/** Bytes of KV_LIST entries in one reply (the client asks again from where it stopped). */
constexpr size_t kMaxListBytes = 64 * 1024;

void CoreImpl::kvList(Proc& proc, uint32_t seq, uint32_t start) {
  // u8 flags (1: an external store holds the names; these are this Controller's own), u32 total,
  // u16 n, n x (u32 origin, u32 epoch, u32 proc, u64 revision, u64 since, u16 nameLen, name)
  Frame& f = out_;
  f.start(op::REPLY, seq).u8(store_ ? 1 : 0).u32(uint32_t(kv_.size()));
  size_t nAt = f.size();
  f.u16(0);
  uint16_t n = 0;
  size_t bytes = 0;
  uint32_t i = 0;
  for (auto& [name, e] : kv_) {
    if (i++ < start) continue;
    size_t one = 4 + 4 + 4 + 8 + 8 + 2 + name.size();
    if (n == 0xffff || (n > 0 && bytes + one > kMaxListBytes)) break;
    f.u32(e.origin).u32(e.originEpoch).u32(e.ownerProc).u64(e.ts).u64(e.since).u16(uint16_t(name.size())).str(name);
    bytes += one;
    n++;
  }
  f.b[nAt] = uint8_t(n);
  f.b[nAt + 1] = uint8_t(n >> 8);
  f.finish();
  send(proc.conn, f);
}

}  // namespace fractos

// The handler table of each channel kind (core.h): every Process op with its wire grammar,
// HELLO, a channel's failure, STATS, the tables for tests. Peer frames: peers.cc.
#include "core.h"

#include <sys/mman.h>

#include <algorithm>

namespace fractos {

Core* newCore(Host* host, const CoreConfig& cfg) { return new CoreImpl(host, cfg); }

CoreImpl::CoreImpl(Host* host, const CoreConfig& cfg)
    : host_(host), id_(cfg.id), epoch_(cfg.epoch), limits_(cfg.limits), servedTimeoutMs_(cfg.servedTimeoutMs),
      objects_(this, cfg.id, cfg.epoch), store_(cfg.names) {
  dead_ = std::make_shared<Proxy>(Ref{});
  dead_->revoked = true;
  peerIds_.insert(cfg.peerIds.begin(), cfg.peerIds.end());
}

CoreImpl::~CoreImpl() { shutdown(); }

// ---- Calls ------------------------------------------------------------------------------

uint32_t Calls::add(ReplyCb cb) {
  uint32_t seq = seq_;
  seq_ = seq_ + 1 == 0 ? 1 : seq_ + 1;
  pending_[seq] = Pending{std::move(cb), 0, false};
  return seq;
}

uint32_t Calls::addWithDeadline(Host* host, ReplyCb cb, uint32_t ms, std::string what) {
  uint32_t seq = add(std::move(cb));
  pending_[seq].timer = host->setTimer(ms, [this, seq, ms, what = std::move(what)]() {
    auto it = pending_.find(seq);
    if (it == pending_.end() || it->second.expired) return;
    ReplyCb cb = std::move(it->second.cb);
    it->second.expired = true;
    it->second.timer = 0;
    expired_.push_back(seq);
    if (expired_.size() > kMaxExpired) {
      uint32_t old = expired_.front();
      expired_.pop_front();
      auto o = pending_.find(old);
      if (o != pending_.end() && o->second.expired) pending_.erase(o);
    }
    cb(Err(kTimedOut, what + " did not complete within " + std::to_string(ms) + " ms"), nullptr, 0);
  });
  return seq;
}

Err Calls::complete(Host* host, const uint8_t* f, size_t len) {
  Header h = readHeader(f);
  auto it = pending_.find(h.seq);
  if (it == pending_.end()) return Err(kProto, "reply to unknown seq " + std::to_string(h.seq));
  Pending p = std::move(it->second);
  pending_.erase(it);
  if (p.expired) {
    auto e = std::find(expired_.begin(), expired_.end(), h.seq);
    if (e != expired_.end()) expired_.erase(e);
    return Err();
  }
  if (p.timer) host->cancelTimer(p.timer);
  if (h.code != 0)
    p.cb(Err(h.code, std::string(reinterpret_cast<const char*>(f) + kHeaderBytes, len - kHeaderBytes)), nullptr, 0);
  else
    p.cb(Err(), f, len);
  return Err();
}

void Calls::failAll(Host* host, uint16_t code, const std::string& msg) {
  std::vector<ReplyCb> cbs;
  for (auto& [seq, p] : pending_) {
    if (p.expired) continue;
    if (p.timer) host->cancelTimer(p.timer);
    cbs.push_back(std::move(p.cb));
  }
  pending_.clear();
  expired_.clear();
  for (auto& cb : cbs) cb(Err(code, msg), nullptr, 0);
}

void Calls::cancelAll(Host* host) {
  for (auto& [seq, p] : pending_)
    if (p.timer) host->cancelTimer(p.timer);
  pending_.clear();
  expired_.clear();
}

// ---- sending ----------------------------------------------------------------------------

void CoreImpl::send(ConnId c, const Frame& f) {
  struct iovec iov{const_cast<uint8_t*>(f.data()), f.size()};
  host_->send(c, &iov, 1);
}

void CoreImpl::sendv(ConnId c, const Frame& head, const uint8_t* data, size_t len) {
  struct iovec iov[2] = {{const_cast<uint8_t*>(head.data()), head.size()}, {const_cast<uint8_t*>(data), len}};
  host_->send(c, iov, len ? 2 : 1);
}

void CoreImpl::log(LogLevel l, const std::string& msg, const std::string& fields) { host_->log(l, msg, fields); }

void CoreImpl::replyOk(Proc& proc, uint32_t seq) {
  out_.start(op::REPLY, seq).finish();
  send(proc.conn, out_);
}

void CoreImpl::replyErr(ConnId c, uint32_t seq, const Err& e) {
  Frame f;  // not out_: an error may be answered while out_ holds a frame being built
  encodeError(f, seq, e);
  send(c, f);
}

void CoreImpl::replyCid(Proc& proc, uint32_t seq, uint32_t cid) {
  encodeCidReply(out_, seq, cid);
  send(proc.conn, out_);
}

Done CoreImpl::replyDone(const std::shared_ptr<Proc>& proc, uint32_t seq) {
  return [this, proc, seq](const Err& e) {
    if (!proc->alive) return;
    if (e) replyErr(proc->conn, seq, e);
    else replyOk(*proc, seq);
  };
}

Done CoreImpl::replyDoneQuiet(const std::shared_ptr<Proc>& proc, uint32_t seq) {
  return [this, proc, seq](const Err& e) {
    if (!proc->alive) return;
    if (e) return replyErr(proc->conn, seq, e);  // a failure always wakes its invoker
    out_.start(op::REPLY, seq).finish();
    struct iovec iov{const_cast<uint8_t*>(out_.data()), out_.size()};
    host_->sendQuiet(proc->conn, &iov, 1);
  };
}

// ---- HELLO ------------------------------------------------------------------------------

void CoreImpl::processHello(ConnId c, uint32_t kernelPid, bool unixSocket, const uint8_t* f, size_t len) {
  // HELLO: u32 pid, u32 features, utf8 name (<= 64 characters kept)
  Header h = readHeader(f);
  if (len < kHeaderBytes + 8 || h.op != op::HELLO) {
    Frame e;
    encodeError(e, h.seq, Err(kProto, "short HELLO"));
    send(c, e);
    host_->close(c, "EPROTO: short HELLO");
    return;
  }
  auto proc = std::make_shared<Proc>();
  proc->id = nextProcId_++;
  proc->conn = c;
  uint32_t claimed = ld32(f + 16);
  proc->pid = unixSocket ? kernelPid : 0;
  proc->features = ld32(f + 20);
  std::string_view name(reinterpret_cast<const char*>(f) + 24, len - 24);
  // At most 64 characters (UTF-16 units in the TS Controller; code points here).
  size_t n = 0, chars = 0;
  while (n < name.size() && chars < 64) {
    uint8_t b = uint8_t(name[n]);
    n += b < 0x80 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
    chars++;
  }
  proc->name = std::string(name.substr(0, std::min(n, name.size())));
  if (proc->pid != 0 && claimed != proc->pid) {
    log(LogLevel::Info,
        "process " + std::to_string(proc->id) + " says pid " + std::to_string(claimed) + " in its HELLO; the kernel says " +
            std::to_string(proc->pid) + " (used)",
        "{\"proc\":" + std::to_string(proc->id) + ",\"pid\":" + std::to_string(proc->pid) + ",\"claimedPid\":" +
            std::to_string(claimed) + "}");
  }
  procs_[proc->id] = proc;
  procByConn_[c] = proc;
  host_->setLinkInfo(c, false, proc->id, proc->name);
  // Features granted: Memory descriptors as asked; a queue pair only on a unix socket, its
  // three fds (four with the spinner budget page) sent with this reply (docs/queues.md), frames after it on the rings.
  uint32_t granted = proc->features & kFeatureMemoryDescriptors;
  int qfds[4];
  int nq = 0;
  uint32_t ringBytes = 0;
  if ((proc->features & kFeatureQueue) && unixSocket && (nq = host_->attachQueue(c, qfds, &ringBytes)) > 0) granted |= kFeatureQueue;
  proc->features = granted;
  encodeHelloReply(out_, h.seq, id_, epoch_, proc->id, limits_.maxFrameBytes, limits_.maxImmBytes, limits_.maxCapSlots,
                   limits_.maxOutstandingDeliveries, granted, ringBytes);
  if (granted & kFeatureQueue) {
    struct iovec iov{const_cast<uint8_t*>(out_.data()), out_.size()};
    host_->sendWithFds(c, &iov, 1, qfds, nq);
  } else {
    send(c, out_);
  }
}

// ---- Process frames -----------------------------------------------------------------------

void CoreImpl::processFrame(ConnId c, const uint8_t* f, size_t len) {
  auto it = procByConn_.find(c);
  if (it == procByConn_.end()) return;
  std::shared_ptr<Proc> proc = it->second;
  if (!proc->alive) return;
  Err e = onProcFrame(proc, f, len);
  if (e) procError(proc, readHeader(f).seq, e);
}

/** A semantic error is answered; a malformed frame (EPROTO) is answered and closes only this channel. */
void CoreImpl::procError(const std::shared_ptr<Proc>& proc, uint32_t seq, const Err& e) {
  replyErr(proc->conn, seq, e);
  if (e.code == kProto) host_->close(proc->conn, "EPROTO: " + e.msg);
}

static Err need(size_t len, size_t n) {
  if (len < kHeaderBytes + n) return Err(kProto, "frame body shorter than " + std::to_string(n) + " bytes");
  return Err();
}

Err CoreImpl::onProcFrame(const std::shared_ptr<Proc>& proc, const uint8_t* f, size_t len) {
  Header h = readHeader(f);
  const uint32_t seq = h.seq;
  Reader r(f, len);
  Err e;
  switch (h.op) {
    case op::REPLY:
      // REPLY to a MEM_READ/MEM_WRITE call of ours
      return proc->calls.complete(host_, f, len);

    case op::DELIVER_ACK: {
      // u32 n: deliveries the Process has taken in (more than outstanding is EPROTO)
      if ((e = need(len, 4))) return e;
      if ((e = acked(*proc, ld32(f + 16)))) {
        replyErr(proc->conn, 0, e);
        host_->close(proc->conn, "EPROTO: " + e.msg);
        return Err();
      }
      drainQueue(*proc);
      return Err();
    }

    case op::CAP_DROP_MANY: {
      // n x u32 cid (one-way; unknown cids are ignored: they may have been dropped already)
      if ((len - kHeaderBytes) % 4 != 0) return Err(kProto, "CAP_DROP_MANY body is not n x u32");
      for (size_t o = kHeaderBytes; o < len; o += 4) dropEntry(*proc, ld32(f + o));
      return Err();
    }

    case op::NUL:
      // (empty) -> REPLY
      replyOk(*proc, seq);
      return Err();

    case op::MEMORY_CREATE:
      // u8 backing, u8 perms, u8 flags (1 fd attached, 2 share whole), u8 0, u32 region id,
      // u64 offset, u64 size, u64 servedKey (served) | regionSize (shared)
      //   -> u32 cid, u32 0, u64 regionKey
      return memoryCreate(proc, seq, f, len);

    case op::MEMORY_DIMINISH: {
      // u32 cid, u8 dropPerms, 3 x u8 0, u64 offset, u64 size -> u32 cid
      if ((e = need(len, 24))) return e;
      uint32_t cid = r.u32();
      uint8_t drop = r.u8();
      r.skip(3);
      uint64_t off = r.u64(), size = r.u64();
      if ((e = r.err())) return e;
      std::shared_ptr<Target> t;
      if ((e = target(*proc, cid, &t))) return e;
      if (t->isProxy) {
        auto p = std::static_pointer_cast<Proxy>(t);
        std::optional<RemoteMem> mem;
        if (p->mem) mem = RemoteMem{size, uint8_t(p->mem->perms & ~drop & kRW), p->mem->backing};
        Frame pf;
        pf.start(op::P_DIMINISH, 0).ref(p->ref).u8(drop).u64(off).u64(size);
        peerCall(p, pf, replyNewProxy(proc, seq, mem));
        return Err();
      }
      std::shared_ptr<Obj> view;
      if ((e = diminish(std::static_pointer_cast<Obj>(t), drop, off, size, &view))) return e;
      uint32_t out;
      if ((e = install(*proc, view, &out))) {
        objects_.maybeCollect(view.get());
        return e;
      }
      replyCid(*proc, seq, out);
      return Err();
    }

    case op::MEMORY_COPY: {
      // u32 src cid, u32 dst cid -> REPLY once copied
      if ((e = need(len, 8))) return e;
      std::shared_ptr<Target> src, dst;
      if ((e = target(*proc, ld32(f + 16), &src))) return e;
      if ((e = target(*proc, ld32(f + 20), &dst))) return e;
      Done done = replyDone(proc, seq);
      if (src->isProxy) {
        Ref dref = objects_.refOf(dst.get());
        auto p = std::static_pointer_cast<Proxy>(src);
        Frame pf;
        pf.start(op::P_COPY, 0).ref(p->ref).ref(dref);
        peerCall(p, pf, [done](const Err& err, const uint8_t*, size_t) { done(err); });
      } else {
        execCopy(std::static_pointer_cast<Obj>(src), dst, done);
      }
      return Err();
    }

    case op::MEMORY_STAT: {
      // u32 cid -> u64 size, u8 perms, u8 backing, u8 flags, u8 0, u32 0, u64 regionOffset, u64 servedKey, u64 regionKey
      if ((e = need(len, 4))) return e;
      std::shared_ptr<Target> t;
      if ((e = target(*proc, ld32(f + 16), &t))) return e;
      memoryStat(proc, seq, t);
      return Err();
    }

    case op::MEMORY_MAP: {
      // u32 cid -> u64 regionKey, u64 regionSize, u64 regionOffset, u64 size, u8 perms, u8 0, u16 0, u32 0
      //   with the region's fd attached (read-only unless the cap may write)
      if ((e = need(len, 4))) return e;
      std::shared_ptr<Target> t;
      if ((e = target(*proc, ld32(f + 16), &t))) return e;
      return memoryMap(proc, seq, t);
    }

    case op::REQUEST_CREATE: {
      // u32 tag, args -> u32 cid
      if ((e = need(len, 4))) return e;
      uint32_t tag = r.u32();
      readArgs(r, false, args_);
      if ((e = r.err())) return e;
      std::vector<TArg> caps;
      if ((e = capTargets(*proc, args_, &caps))) return e;
      std::shared_ptr<RequestInfo> info;
      if ((e = mergeArgs(nullptr, tag, args_, caps, &info))) return e;
      auto obj = objects_.create(Kind::Request, proc, nullptr, nullptr, info);
      proc->owned.insert(obj.get());
      uint32_t cid;
      if ((e = install(*proc, obj, &cid))) {
        objects_.revoke(obj.get(), kReasonRevoked);
        return e;
      }
      replyCid(*proc, seq, cid);
      return Err();
    }

    case op::REQUEST_DERIVE:
    case op::REQUEST_INVOKE:
    case op::REQUEST_INVOKE_QUIET: {  // quiet: its success REPLY wakes nobody by itself (docs/queues.md)
      // u32 cid, args -> u32 cid (derive) | REPLY once delivered (invoke)
      // The whole body is parsed (EPROTO) before any cid is looked up (EBADCAP, EREVOKED);
      // the limits are checked when the args are merged, after the target's type.
      if ((e = need(len, 4))) return e;
      uint32_t cid = r.u32();
      readArgs(r, false, args_);
      if ((e = r.err())) return e;
      std::shared_ptr<Target> t;
      if ((e = target(*proc, cid, &t))) return e;
      std::vector<TArg> caps;
      if ((e = capTargets(*proc, args_, &caps))) return e;
      if (h.op == op::REQUEST_DERIVE) {
        if (t->isProxy) {
          peerArgsCall(std::static_pointer_cast<Proxy>(t), op::P_DERIVE, args_, caps, replyNewProxy(proc, seq, std::nullopt));
          return Err();
        }
        std::shared_ptr<Obj> d;
        if ((e = derive(std::static_pointer_cast<Obj>(t), args_, caps, &d))) return e;
        uint32_t out;
        if ((e = install(*proc, d, &out))) {
          objects_.maybeCollect(d.get());
          return e;
        }
        replyCid(*proc, seq, out);
        return Err();
      }
      Done done = h.op == op::REQUEST_INVOKE_QUIET ? replyDoneQuiet(proc, seq) : replyDone(proc, seq);
      if (!t->revoked) {
        if (t->isProxy) {
          const Ref& ref = static_cast<Proxy*>(t.get())->ref;
          invocations_.record(kInvokerProcess, proc->id, ref.controller, ref.id, 0, host_->loopMs());
        } else if (auto* o = static_cast<Obj*>(t.get()); o->req) {
          invocations_.record(kInvokerProcess, proc->id, id_, o->id, o->owner ? o->owner->id : 0, host_->loopMs());
        }
      }
      if (t->isProxy) {
        peerArgsCall(std::static_pointer_cast<Proxy>(t), op::P_INVOKE, args_, caps,
                     [done](const Err& err, const uint8_t*, size_t) { done(err); });
      } else {
        invokeLocal(std::static_pointer_cast<Obj>(t), args_, caps, proc->conn, done);
      }
      return Err();
    }

    case op::CAP_REVTREE: {
      // u32 cid -> u32 cid
      if ((e = need(len, 4))) return e;
      std::shared_ptr<Target> t;
      if ((e = target(*proc, ld32(f + 16), &t))) return e;
      if (t->isProxy) {
        auto p = std::static_pointer_cast<Proxy>(t);
        Frame pf;
        pf.start(op::P_REVTREE, 0).ref(p->ref);
        peerCall(p, pf, replyNewProxy(proc, seq, p->mem));
        return Err();
      }
      auto child = revtree(std::static_pointer_cast<Obj>(t));
      uint32_t out;
      if ((e = install(*proc, child, &out))) {
        objects_.maybeCollect(child.get());
        return e;
      }
      replyCid(*proc, seq, out);
      return Err();
    }

    case op::CAP_REVOKE: {
      // u32 cid -> REPLY
      if ((e = need(len, 4))) return e;
      std::shared_ptr<Target> t;
      if ((e = target(*proc, ld32(f + 16), &t))) return e;
      Done done = replyDone(proc, seq);
      if (t->isProxy) {
        auto p = std::static_pointer_cast<Proxy>(t);
        Frame pf;
        pf.start(op::P_REVOKE, 0).ref(p->ref);
        peerCall(p, pf, [this, p, done](const Err& err, const uint8_t*, size_t) {
          if (!err) proxyRevoked(p.get(), kReasonRevoked);
          done(err);
        });
      } else {
        objects_.revoke(static_cast<Obj*>(t.get()), kReasonRevoked);
        done(Err());
      }
      return Err();
    }

    case op::CAP_DROP: {
      // u32 cid -> REPLY (EBADCAP when not in the space)
      if ((e = need(len, 4))) return e;
      uint32_t cid = ld32(f + 16);
      if (!proc->caps.lookup(cid))
        return Err(kBadCap, "cid " + std::to_string(cid) + " is not in the capability space of process " + std::to_string(proc->id));
      dropEntry(*proc, cid);
      replyOk(*proc, seq);
      return Err();
    }

    case op::MONITOR_DELEGATE:
    case op::MONITOR_RECEIVE: {
      // u32 cid, u32 monitor id -> REPLY
      if ((e = need(len, 8))) return e;
      uint32_t cid = ld32(f + 16);
      const std::shared_ptr<Target>* t = proc->caps.lookupShared(cid);
      if (!t)
        return Err(kBadCap, "cid " + std::to_string(cid) + " is not in the capability space of process " + std::to_string(proc->id));
      std::shared_ptr<Target> tt = *t;
      uint32_t token = ld32(f + 20);
      if (h.op == op::MONITOR_RECEIVE) {
        monitorReceive(proc, tt, token);
        replyOk(*proc, seq);
      } else {
        monitorDelegate(proc, tt, token, seq);
      }
      return Err();
    }

    case op::KV_PUT: {
      // u32 cid, utf8 name (1..256) -> REPLY
      if ((e = need(len, 5))) return e;
      std::shared_ptr<Target> t;
      if ((e = target(*proc, ld32(f + 16), &t))) return e;
      return kvPut(proc, seq, std::string_view(reinterpret_cast<const char*>(f) + 20, len - 20), t);
    }

    case op::KV_GET:
      // utf8 name -> u32 cid (a new revocation-tree child per getter)
      if ((e = need(len, 1))) return e;
      kvGet(proc, seq, std::string_view(reinterpret_cast<const char*>(f) + 16, len - 16));
      return Err();

    case op::STATS:
      // (empty) -> u32 controller, u32 epoch, u16 n, n x link
      replyStats(*proc, seq);
      return Err();

    case op::INTROSPECT:
      // u64 since -> docs/protocol.md "Introspection"; EPERM unless the host allows it
      if ((e = need(len, 8))) return e;
      if (!host_->mayIntrospect(proc->conn))
        return Err(kPerm, "INTROSPECT is for Processes of the Controller's uid on a unix socket");
      replyIntrospect(*proc, seq, ld64(f + 16));
      return Err();

    case op::KV_LIST:
      // u32 start -> docs/protocol.md KV_LIST; EPERM unless the host allows INTROSPECT
      if ((e = need(len, 4))) return e;
      if (!host_->mayIntrospect(proc->conn)) return Err(kPerm, "KV_LIST is for Processes of the Controller's uid on a unix socket");
      kvList(*proc, seq, ld32(f + 16));
      return Err();

    case op::HELLO:
      return Err(kProto, "HELLO sent twice");

    default:
      return Err(kProto, "unknown op " + opName(h.op));
  }
}

void CoreImpl::replyStats(Proc& proc, uint32_t seq) {
  std::vector<LinkStats> ls = host_->linkStats();
  std::vector<StatsLink> links;
  links.reserve(std::min<size_t>(ls.size(), 0xffff));
  for (auto& l : ls) {
    if (links.size() == 0xffff) break;
    links.push_back(StatsLink{l.peer, l.closed, l.id, l.framesIn, l.framesOut, l.bytesIn, l.bytesOut, l.name});
  }
  encodeStatsReply(out_, seq, id_, epoch_, links);
  send(proc.conn, out_);
}

void CoreImpl::replyIntrospect(Proc& proc, uint32_t seq, uint64_t since) {
  // One pass over the objects (owned counts) and the Processes, only when asked.
  std::unordered_map<uint32_t, uint32_t> owned;
  objects_.forEach([&owned](Obj* o) {
    if (o->owner) owned[o->owner->id]++;
  });
  std::vector<IntrospectProc> procs;
  uint64_t caps = 0;
  for (auto& [id, p] : procs_) {
    caps += p->caps.size();
    if (procs.size() >= kMaxIntrospectProcs) continue;
    auto it = owned.find(id);
    procs.push_back(IntrospectProc{id, p->pid, it == owned.end() ? 0 : it->second, uint32_t(p->caps.size()), p->name});
  }
  uint64_t first = 0, count = 0;
  invocations_.window(since, &first, &count);
  std::vector<InvocationRecord> recs;
  recs.reserve(count);
  for (uint64_t s = first; s < first + count; s++) recs.push_back(invocations_.at(s));
  IntrospectTotals t{id_, epoch_, procs_.size() > procs.size() ? 1u : 0u, uint32_t(objects_.size()), uint32_t(caps),
                     uint32_t(proxies_.size()), uint32_t(kv_.size())};
  encodeIntrospectReply(out_, seq, t, procs, first, invocations_.nextSeq(), recs, host_->loopMs());
  send(proc.conn, out_);
}

// ---- a Process goes away ----------------------------------------------------------------------

void CoreImpl::processClosed(ConnId c) {
  auto it = procByConn_.find(c);
  if (it == procByConn_.end()) return;
  std::shared_ptr<Proc> proc = it->second;
  procGone(proc);
}

void CoreImpl::procGone(const std::shared_ptr<Proc>& proc) {
  if (!proc->alive) return;
  proc->alive = false;
  procs_.erase(proc->id);
  procByConn_.erase(proc->conn);
  proc->calls.failAll(host_, kFault, "process " + std::to_string(proc->id) + " went away");
  kvProcGone(*proc);
  std::vector<Obj*> owned(proc->owned.begin(), proc->owned.end());
  for (Obj* o : owned) {
    auto keep = objects_.getShared(o->id);
    if (keep) objects_.revoke(keep.get(), kReasonOwnerFailed);
  }
  proc->owned.clear();
  for (uint32_t cid : proc->caps.cids()) dropEntry(*proc, cid);
  std::deque<Delivery> q = std::move(proc->queue);
  proc->queue.clear();
  for (auto& d : q) d.fail(Err(kRevoked, "provider went away"));
  // Its shared regions: the Memory objects revoked above still hold them until collected.
  proc->regions.clear();
}

// ---- tables -------------------------------------------------------------------------------

std::string CoreImpl::tableSizesJson() const {
  uint64_t caps = 0, queued = 0;
  for (auto& [id, p] : procs_) {
    caps += p->caps.size();
    queued += p->queue.size();
  }
  std::string s = "{";
  auto add = [&s](const char* k, uint64_t v) {
    if (s.size() > 1) s += ',';
    s += '"';
    s += k;
    s += "\":";
    s += std::to_string(v);
  };
  add("objects", objects_.size());
  add("procs", procs_.size());
  add("caps", caps);
  add("peers", peers_.size());
  add("proxies", proxies_.size());
  add("preheld", preheld_.size());
  add("names", kv_.size());
  add("remoteMonitors", remoteMonitors_.size());
  add("queuedInvokers", queuedByInvoker_.size());
  add("queuedDeliveries", queued);
  s += '}';
  return s;
}

void CoreImpl::queuedDeliveryBytes(uint32_t procId, uint64_t* provider, uint64_t* invoker) const {
  *provider = 0;
  *invoker = 0;
  auto it = procs_.find(procId);
  if (it == procs_.end()) return;
  *provider = it->second->queuedBytes;
  auto q = queuedByInvoker_.find(it->second->conn);
  if (q != queuedByInvoker_.end()) *invoker = q->second;
}

void CoreImpl::setPeerListed(uint32_t id, bool listed) {
  if (listed) peerIds_.insert(id);
  else peerIds_.erase(id);
}

std::vector<uint32_t> CoreImpl::connectedPeers() const {
  std::vector<uint32_t> v;
  for (auto& [id, p] : peers_) v.push_back(id);
  return v;
}

bool CoreImpl::setNextCidForTest(uint32_t procId, uint32_t cid) {
  auto it = procs_.find(procId);
  if (it == procs_.end() || cid == 0) return false;
  it->second->caps.setNextCid(cid);
  return true;
}

void CoreImpl::shutdown() {
  if (closing_) return;
  closing_ = true;
  // Release everything without sending: break the cycles of shared pointers.
  for (auto& [id, p] : procs_) {
    p->alive = false;
    p->calls.cancelAll(host_);
    p->queue.clear();
    p->owned.clear();
    for (uint32_t cid : p->caps.cids()) p->caps.remove(cid);
  }
  for (auto& [id, p] : peers_) {
    p->alive = false;
    p->calls.cancelAll(host_);
    p->sink = Peer::Sink{};
  }
  for (auto& [id, w] : joinWaiters_) host_->cancelTimer(w.timer);
  joinWaiters_.clear();
  copyWaiters_.clear();
  chunkPool_.clear();
  kv_.clear();
  remoteMonitors_.clear();
  objects_.clear();
  proxies_.clear();
  preheld_.clear();
  procs_.clear();
  procByConn_.clear();
  peers_.clear();
  peerByConn_.clear();
}

}  // namespace fractos

// Targets of cids, installs and drops, remote proxies and their holds (P_HOLD), calls to
// peer Controllers. Port of controller.ts #target, #install, #proxyFor, #peerCallRef, ...
#include "core.h"

namespace fractos {

Err CoreImpl::target(Proc& proc, uint32_t cid, std::shared_ptr<Target>* out) {
  return proc.caps.resolve(cid, Kind::Any, 0, 0, out);
}

Err CoreImpl::capTargets(Proc& proc, const Args& args, std::vector<TArg>* out) {
  out->clear();
  out->reserve(args.caps.size());
  for (auto& c : args.caps) {
    std::shared_ptr<Target> t;
    if (Err e = target(proc, c.cid, &t)) return e;
    out->push_back(TArg{c.slot, std::move(t)});
  }
  return Err();
}

Err CoreImpl::install(Proc& proc, const std::shared_ptr<Target>& t, uint32_t* cid) {
  bool first = ObjectTable::firstRef(t.get());
  if (Err e = proc.caps.install(t, limits_.maxCaps, cid)) return e;  // ENOSPC: nothing held, nothing installed
  if (first) hold(static_cast<Proxy*>(t.get()));
  else if (!t->isProxy) objects_.armDelegMonitors(static_cast<Obj*>(t.get()));
  return Err();
}

void CoreImpl::dropEntry(Proc& proc, uint32_t cid) {
  std::shared_ptr<Target> t = proc.caps.remove(cid);
  if (t) objects_.released(t.get());
}

void CoreImpl::hold(Proxy* p) {
  if (preheld_.erase(p)) return;  // the owner counted this hold already
  sendHold(p->ref, +1);
}

void CoreImpl::proxyFirstRef(Proxy* p) { hold(p); }

void CoreImpl::sendHold(const Ref& ref, int32_t delta) {
  Peer* peer = peerOf(ref.controller);
  if (!peer) return;
  // P_HOLD: ref, i32 delta
  encodePHold(out_, ref, delta);
  send(peer->conn, out_);
}

Peer* CoreImpl::peerOf(uint32_t id) const {
  auto it = peers_.find(id);
  return it == peers_.end() ? nullptr : it->second.get();
}

std::shared_ptr<Proxy> CoreImpl::proxyFor(const Ref& ref, bool preheld) {
  auto it = proxies_.find(ref);
  std::shared_ptr<Proxy> p;
  if (it == proxies_.end()) {
    p = std::make_shared<Proxy>(ref);
    proxies_.emplace(ref, p);
    if (preheld) preheld_.insert(p.get());
  } else {
    p = it->second;
    if (preheld) sendHold(ref, -1);  // we already hold it: give back the extra count
  }
  if (!peers_.count(ref.controller) && !peerIds_.count(ref.controller)) p->revoked = true;
  return p;
}

void CoreImpl::forgetUnused(const std::shared_ptr<Proxy>& p) {
  if (p->nEntries == 0 && p->pins == 0 && !preheld_.count(p.get())) {
    auto it = proxies_.find(p->ref);
    if (it != proxies_.end() && it->second == p) proxies_.erase(it);
  }
}

void CoreImpl::proxyUnused(Proxy* p) {
  if (p == dead_.get()) return;
  std::shared_ptr<Proxy> keep;
  auto it = proxies_.find(p->ref);
  if (it != proxies_.end() && it->second.get() == p) {
    keep = it->second;
    proxies_.erase(it);
  }
  preheld_.erase(p);
  if (!p->revoked) sendHold(p->ref, -1);
}

std::shared_ptr<Target> CoreImpl::targetFromRef(const Ref& ref) {
  if (ref.controller == id_) {
    if (ref.epoch != epoch_) return dead_;
    auto o = objects_.getShared(ref.id);
    if (!o) return dead_;
    return o;
  }
  return proxyFor(ref, false);
}

Err CoreImpl::localObj(const Ref& ref, std::shared_ptr<Obj>* out) {
  if (ref.controller != id_)
    return Err(kProto, "ref for controller " + std::to_string(ref.controller) + " sent to " + std::to_string(id_));
  std::shared_ptr<Obj> o = ref.epoch == epoch_ ? objects_.getShared(ref.id) : nullptr;
  if (!o || o->revoked) return Err(kRevoked, "object " + refString(ref) + " is revoked");
  *out = std::move(o);
  return Err();
}

void CoreImpl::proxyRevoked(Proxy* p, uint16_t reason) {
  if (p->revoked) return;
  p->revoked = true;
  preheld_.erase(p);
  if (!p->recvMonitors.empty()) {
    auto ms = std::move(p->recvMonitors);
    p->recvMonitors.clear();
    for (auto& m : ms) fireMonitor(m, reason);
  }
  if (p->nEntries == 0 && p->pins == 0) {
    auto it = proxies_.find(p->ref);
    if (it != proxies_.end() && it->second.get() == p) proxies_.erase(it);
  }
}

std::function<void()> CoreImpl::pinArgs(const std::vector<TArg>& args) {
  if (args.empty()) return [] {};
  auto ts = std::make_shared<std::vector<std::shared_ptr<Target>>>();
  ts->reserve(args.size());
  for (auto& a : args) {
    objects_.pin(a.t.get());
    ts->push_back(a.t);
  }
  return [this, ts]() {
    auto v = std::move(*ts);
    ts->clear();  // once
    for (auto& t : v) objects_.unpin(t.get());
  };
}

void CoreImpl::peerCall(const std::shared_ptr<Proxy>& t, Frame& f, ReplyCb cb) {
  Peer* peer = peerOf(t->ref.controller);
  if (!peer) {
    cb(Err(kRevoked, "controller " + std::to_string(t->ref.controller) + " is not connected"), nullptr, 0);
    return;
  }
  uint32_t seq = peer->calls.add([this, t, cb = std::move(cb)](const Err& e, const uint8_t* rf, size_t len) {
    if (e.code == kRevoked) proxyRevoked(t.get(), kReasonRevoked);
    cb(e, rf, len);
  });
  std::memcpy(f.b.data() + 8, &seq, 4);
  f.finish();
  send(peer->conn, f);
}

std::optional<RemoteMem> CoreImpl::memOf(const Target* t) const {
  if (t->isProxy) return static_cast<const Proxy*>(t)->mem;
  auto* o = static_cast<const Obj*>(t);
  if (!o->mem) return std::nullopt;
  return RemoteMem{o->mem->size, o->mem->perms, o->mem->backing};
}

void CoreImpl::peerArgsCall(const std::shared_ptr<Proxy>& t, uint16_t o, const Args& raw, const std::vector<TArg>& args,
                            ReplyCb cb) {
  // P_INVOKE / P_DERIVE: ref, args (caps as refs), u16 n, n x (u16 slot, u8 perms, u8 backing, u32 0, u64 size)
  Frame f;
  f.start(o, 0).ref(t->ref);
  f.u16(uint16_t(args.size())).u16(uint16_t(raw.imms.size()));
  for (auto& a : args) f.u16(a.slot).u16(0).ref(objects_.refOf(a.t.get()));
  for (auto& i : raw.imms) f.u32(i.offset).u32(i.len).bytes(i.data, i.len);
  size_t nAt = f.size();
  uint16_t n = 0;
  f.u16(0);
  for (auto& a : args) {
    auto m = memOf(a.t.get());
    if (!m) continue;
    f.u16(a.slot).u8(m->perms).u8(m->backing).u32(0).u64(m->size);
    n++;
  }
  f.b[nAt] = uint8_t(n);
  f.b[nAt + 1] = uint8_t(n >> 8);
  // Pinned until the peer answers: it holds the arguments (P_HOLD, sent before its REPLY) by then.
  auto unpin = pinArgs(args);
  peerCall(t, f, [unpin, cb = std::move(cb)](const Err& e, const uint8_t* rf, size_t len) {
    unpin();
    cb(e, rf, len);
  });
}

ReplyCb CoreImpl::replyNewProxy(const std::shared_ptr<Proc>& proc, uint32_t seq, std::optional<RemoteMem> mem) {
  return [this, proc, seq, mem](const Err& e, const uint8_t* f, size_t len) {
    Ref ref;
    if (!e) {
      Reader r(f, len);
      ref = r.ref();
      if (r.bad) {
        // A peer that answers without a ref: its link is broken.
        if (proc->alive) replyErr(proc->conn, seq, Err(kProto, "peer reply without a ref"));
        return;
      }
    }
    if (!proc->alive) {
      if (!e) sendHold(ref, -1);
      return;
    }
    if (e) {
      replyErr(proc->conn, seq, e);
      return;
    }
    std::shared_ptr<Proxy> t = proxyFor(ref, true);
    if (!t->mem && mem) t->mem = mem;
    uint32_t cid;
    if (Err ie = install(*proc, t, &cid)) {
      objects_.released(t.get());  // ENOSPC: give the pre-held count back
      procError(proc, seq, ie);
      return;
    }
    replyCid(*proc, seq, cid);
  };
}

}  // namespace fractos

// Requests (paper §3.3): create/derive (argument merge), invoke, and the delivery queue of
// each provider that owns its credits. Port of controller.ts mergeArgs, #derive,
// #invokeLocal, #drain, #deliver and the former process-conn.ts delivered/acked.
#include <algorithm>

#include "core.h"

namespace fractos {

Err CoreImpl::mergeArgs(const RequestInfo* base, uint32_t tag, const Args& raw, const std::vector<TArg>& caps,
                        std::shared_ptr<RequestInfo>* out) const {
  auto info = std::make_shared<RequestInfo>();
  info->tag = tag;
  if (base) {
    info->imms = base->imms;
    info->caps = base->caps;
  }
  // New ranges: each within maxImmBytes (ERANGE), then none overlapping another or a set
  // one (EARGSET). Sorted and merged: O(n log n) however a hostile caller orders them.
  std::vector<const ImmArg*> add;
  add.reserve(raw.imms.size());
  for (auto& r : raw.imms) {
    if (r.len == 0) continue;
    uint64_t end = uint64_t(r.offset) + r.len;
    if (end > limits_.maxImmBytes)
      return Err(kRange, "immediate range ends at " + std::to_string(end) + " > " + std::to_string(limits_.maxImmBytes));
    add.push_back(&r);
  }
  if (!add.empty()) {
    std::stable_sort(add.begin(), add.end(), [](const ImmArg* a, const ImmArg* b) { return a->offset < b->offset; });
    auto setErr = [](const ImmArg* r) {
      return Err(kArgSet, "immediate range " + std::to_string(r->offset) + "+" + std::to_string(r->len) + " is already set");
    };
    for (size_t i = 1; i < add.size(); i++)
      if (uint64_t(add[i - 1]->offset) + add[i - 1]->len > add[i]->offset) return setErr(add[i]);
    std::vector<RequestInfo::Imm> merged;
    merged.reserve(info->imms.size() + add.size());
    size_t a = 0;
    for (auto& old : info->imms) {
      while (a < add.size() && add[a]->offset < old.offset) {
        if (uint64_t(add[a]->offset) + add[a]->len > old.offset) return setErr(add[a]);
        merged.push_back(RequestInfo::Imm{add[a]->offset, std::string(reinterpret_cast<const char*>(add[a]->data), add[a]->len)});
        a++;
      }
      if (a < add.size() && add[a]->offset < uint64_t(old.offset) + old.bytes.size()) return setErr(add[a]);
      merged.push_back(std::move(old));
    }
    for (; a < add.size(); a++)
      merged.push_back(RequestInfo::Imm{add[a]->offset, std::string(reinterpret_cast<const char*>(add[a]->data), add[a]->len)});
    info->imms = std::move(merged);
  }
  for (auto& c : caps) {
    if (c.slot >= limits_.maxCapSlots)
      return Err(kRange, "cap slot " + std::to_string(c.slot) + " >= " + std::to_string(limits_.maxCapSlots));
    if (info->caps.size() <= c.slot) info->caps.resize(c.slot + 1u);
    if (info->caps[c.slot]) return Err(kArgSet, "cap slot " + std::to_string(c.slot) + " is already set");
    info->caps[c.slot] = c.t;
  }
  *out = std::move(info);
  return Err();
}

Err CoreImpl::derive(const std::shared_ptr<Obj>& obj, const Args& raw, const std::vector<TArg>& caps, std::shared_ptr<Obj>* out) {
  if (!obj->req) return Err(kType, "request_derive needs a Request cap");
  std::shared_ptr<RequestInfo> info;
  if (Err e = mergeArgs(obj->req.get(), obj->req->tag, raw, caps, &info)) return e;
  *out = objects_.create(Kind::Request, obj->owner, obj, nullptr, info);
  return Err();
}

std::shared_ptr<Obj> CoreImpl::revtree(const std::shared_ptr<Obj>& obj) {
  return objects_.create(obj->kind, obj->owner, obj, obj->mem, obj->req);
}

bool CoreImpl::hasCredit(const Proc& p) const {
  return p.outstanding < limits_.maxOutstandingDeliveries && p.outstandingBytes < limits_.maxOutstandingDeliveryBytes;
}

void CoreImpl::invokeLocal(const std::shared_ptr<Obj>& obj, const Args& raw, const std::vector<TArg>& caps, uint64_t invoker,
                           Done done) {
  if (!obj->req) return done(Err(kType, "request_invoke needs a Request cap"));
  std::shared_ptr<const RequestInfo> info = obj->req;
  if (!raw.empty()) {
    std::shared_ptr<RequestInfo> merged;
    if (Err e = mergeArgs(obj->req.get(), obj->req->tag, raw, caps, &merged)) return done(e);
    info = std::move(merged);
  }
  std::shared_ptr<Proc> provider = obj->owner;
  if (!provider->alive) return done(Err(kRevoked, "provider went away"));
  auto run = [this, obj, info, provider, done]() {
    if (obj->revoked) return done(Err(kRevoked, "request revoked while queued"));
    done(deliver(provider, *info));
  };
  if (hasCredit(*provider) && provider->queue.empty()) return run();
  if (provider->queue.size() >= limits_.maxQueuedDeliveries)
    return done(Err(kAgain, "process " + std::to_string(provider->id) + " has " + std::to_string(limits_.maxQueuedDeliveries) +
                                " deliveries queued"));
  uint64_t bytes = fractos::queuedDeliveryBytes(raw);
  if (provider->queuedBytes + bytes > limits_.maxQueuedDeliveryBytes)
    return done(Err(kAgain, "process " + std::to_string(provider->id) + " has " + std::to_string(provider->queuedBytes) +
                                " bytes of deliveries queued (limit " + std::to_string(limits_.maxQueuedDeliveryBytes) + ")"));
  uint64_t mine = 0;
  auto q = queuedByInvoker_.find(invoker);
  if (q != queuedByInvoker_.end()) mine = q->second;
  if (mine + bytes > limits_.maxQueuedBytesPerInvoker)
    return done(Err(kAgain, "the invoker has " + std::to_string(mine) + " bytes of invocations queued (limit " +
                                std::to_string(limits_.maxQueuedBytesPerInvoker) + ")"));
  provider->queuedBytes += bytes;
  queuedByInvoker_[invoker] = mine + bytes;
  auto unpin = pinArgs(caps);
  auto dequeued = [this, provider, invoker, bytes, unpin]() {
    unpin();
    provider->queuedBytes -= bytes;
    auto it = queuedByInvoker_.find(invoker);
    if (it != queuedByInvoker_.end()) {
      it->second -= bytes;
      if (it->second == 0) queuedByInvoker_.erase(it);
    }
  };
  provider->queue.push_back(Delivery{
      [run, dequeued]() {
        run();  // installs the arguments in the provider's space first
        dequeued();
      },
      [dequeued, done](const Err& e) {
        dequeued();
        done(e);
      }});
  host_->waitingForCredits(provider->conn, true);
}

void CoreImpl::drainQueue(Proc& p) {
  while (!p.queue.empty() && hasCredit(p)) {
    Delivery d = std::move(p.queue.front());
    p.queue.pop_front();
    d.run();
  }
  if (p.queue.empty()) host_->waitingForCredits(p.conn, false);
}

Err CoreImpl::acked(Proc& p, uint32_t n) {
  if (n > p.outstanding)
    return Err(kProto, "DELIVER_ACK of " + std::to_string(n) + " with " + std::to_string(p.outstanding) + " deliveries outstanding");
  p.outstanding -= n;
  for (uint32_t i = 0; i < n; i++) {
    p.outstandingBytes -= p.sizes.front();
    p.sizes.pop_front();
  }
  return Err();
}

Err CoreImpl::deliver(const std::shared_ptr<Proc>& provider, const RequestInfo& info) {
  // DELIVER: u32 tag, args (caps as new cids in the provider's space), then with
  // feature 1: u16 n, n x DeliverDesc (wire.h: u16 slot, u8 perms, u8 backing, u8 flags,
  // u8 0, u16 0, u64 size, u64 regionOffset, u64 servedKey, u64 regionKey)
  Frame& f = deliverOut_;
  f.start(op::DELIVER, 0).u32(info.tag);
  uint16_t nCaps = 0;
  for (auto& t : info.caps)
    if (t) nCaps++;
  f.u16(nCaps).u16(uint16_t(info.imms.size()));
  std::vector<uint32_t> installed;
  installed.reserve(nCaps);
  for (size_t slot = 0; slot < info.caps.size(); slot++) {
    auto& t = info.caps[slot];
    if (!t) continue;
    uint32_t cid;
    if (Err e = install(*provider, t, &cid)) {
      for (uint32_t c : installed) dropEntry(*provider, c);
      return e;
    }
    installed.push_back(cid);
    f.u16(uint16_t(slot)).u16(0).u32(cid);
  }
  for (auto& i : info.imms) f.u32(i.offset).u32(uint32_t(i.bytes.size())).str(i.bytes);
  if (provider->features & kFeatureMemoryDescriptors) {
    size_t nAt = f.size();
    uint16_t n = 0;
    f.u16(0);
    for (size_t slot = 0; slot < info.caps.size(); slot++) {
      const Target* t = info.caps[slot].get();
      if (!t || t->revoked) continue;
      if (t->isProxy) {
        auto* p = static_cast<const Proxy*>(t);
        if (!p->mem) continue;
        encodeDeliverDesc(f, DeliverDesc{uint16_t(slot), p->mem->perms, p->mem->backing, 0, p->mem->size, 0, 0, 0});
      } else {
        auto* o = static_cast<const Obj*>(t);
        if (!o->mem) continue;
        const MemInfo& m = *o->mem;
        uint8_t fl = memFlags(*o, *provider);
        encodeDeliverDesc(f, DeliverDesc{uint16_t(slot), m.perms, m.backing, fl, m.size, m.offset, (fl & kMemSelf) ? m.servedKey : 0,
                                         m.map ? m.map->key : 0});
      }
      n++;
    }
    f.b[nAt] = uint8_t(n);
    f.b[nAt + 1] = uint8_t(n >> 8);
  }
  f.finish();
  provider->outstanding++;
  provider->outstandingBytes += f.size();
  provider->sizes.push_back(uint32_t(f.size()));
  send(provider->conn, f);
  return Err();
}

}  // namespace fractos

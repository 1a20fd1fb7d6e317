// The object table: pins, holders, collection, revocation, delegation monitors (objects.h).
// Port of the former TS Controller (#newObj, #pin, #holders, #maybeCollect, #revoke, ...).
#include "objects.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "core.h"

namespace fractos {

std::atomic<int64_t> Region::openFds{0};

Region::~Region() {
  if (base != nullptr && len > 0) munmap(base, len);
  if (fd >= 0) {
    close(fd);
    openFds--;
  }
  if (roFd >= 0) {
    close(roFd);
    openFds--;
  }
}

void Target::addEntry(const ProcBase* p) {
  nEntries++;
  for (auto& e : entries) {
    if (e.first == p) {
      e.second++;
      return;
    }
  }
  entries.emplace_back(p, 1);
}

void Target::removeEntry(const ProcBase* p) {
  for (size_t i = 0; i < entries.size(); i++) {
    if (entries[i].first != p) continue;
    nEntries--;
    if (--entries[i].second == 0) {
      entries[i] = entries.back();
      entries.pop_back();
    }
    return;
  }
}

uint32_t Target::entriesOf(const ProcBase* p) const {
  for (auto& e : entries)
    if (e.first == p) return e.second;
  return 0;
}

ProcBase* Obj::ownerBase() const { return owner.get(); }

std::shared_ptr<Obj> ObjectTable::create(Kind kind, const std::shared_ptr<Proc>& owner, const std::shared_ptr<Obj>& parent,
                                         std::shared_ptr<const MemInfo> mem, std::shared_ptr<const RequestInfo> req) {
  auto obj = std::make_shared<Obj>(nextId_++, kind);
  obj->owner = owner;
  obj->parent = parent;
  obj->mem = std::move(mem);
  obj->req = std::move(req);
  objs_.emplace(obj->id, obj);
  if (parent) parent->children.insert(obj.get());
  // A cap in a Request's slots keeps its object alive like a cap entry does.
  if (obj->req)
    for (auto& t : obj->req->caps)
      if (t) pin(t.get());
  return obj;
}

Obj* ObjectTable::get(uint64_t id) const {
  auto it = objs_.find(id);
  return it == objs_.end() ? nullptr : it->second.get();
}

std::shared_ptr<Obj> ObjectTable::getShared(uint64_t id) const {
  auto it = objs_.find(id);
  return it == objs_.end() ? nullptr : it->second;
}

Ref ObjectTable::refOf(const Target* t) const {
  if (t->isProxy) return static_cast<const Proxy*>(t)->ref;
  return Ref{controller_, epoch_, static_cast<const Obj*>(t)->id};
}

bool ObjectTable::firstRef(const Target* t) { return t->isProxy && t->nEntries == 0 && t->pins == 0 && !t->revoked; }

void ObjectTable::pin(Target* t) {
  if (firstRef(t)) ev_->proxyFirstRef(static_cast<Proxy*>(t));
  t->pins++;
  if (!t->isProxy) armDelegMonitors(static_cast<Obj*>(t));
}

void ObjectTable::unpin(Target* t) {
  t->pins--;
  released(t);
}

void ObjectTable::unpinArgs(Obj* obj) {
  if (!obj->req) return;
  for (auto& t : obj->req->caps)
    if (t) unpin(t.get());
}

uint64_t ObjectTable::holders(const Obj* obj, const ProcBase* exclude, uint32_t excludePeer) const {
  uint64_t n = obj->children.size() + obj->nEntries - (exclude ? obj->entriesOf(exclude) : 0);
  for (auto& [peer, c] : obj->remoteHolds) n += peer == excludePeer ? uint64_t(std::max<int64_t>(0, c - 1)) : uint64_t(c);
  return n + obj->pins;
}

void ObjectTable::released(Target* t) {
  if (t->isProxy) {
    if (t->nEntries > 0 || t->pins > 0) return;
    ev_->proxyUnused(static_cast<Proxy*>(t));
    return;
  }
  auto* obj = static_cast<Obj*>(t);
  checkDelegMonitors(obj);
  maybeCollect(obj);
}

void ObjectTable::maybeCollect(Obj* obj) {
  // Derived objects (views, revtree children, derived Requests) live while referenced;
  // base objects live until their owner revokes them or goes away.
  while (obj != nullptr && !obj->revoked && obj->parent && holders(obj, nullptr) == 0) {
    std::shared_ptr<Obj> keep = objs_[obj->id];  // alive until the end of this step
    objs_.erase(obj->id);
    obj->revoked = true;
    unpinArgs(obj);
    Obj* parent = obj->parent.get();
    parent->children.erase(obj);
    checkDelegMonitors(parent);
    obj = parent;
  }
}

void ObjectTable::revoke(Obj* root, uint16_t reason) {
  if (root->revoked) return;
  std::vector<std::shared_ptr<Obj>> gone;
  std::vector<Obj*> stack{root};
  if (root->parent) root->parent->children.erase(root);
  while (!stack.empty()) {
    Obj* obj = stack.back();
    stack.pop_back();
    if (obj->revoked && obj != root) continue;
    obj->revoked = true;
    auto it = objs_.find(obj->id);
    if (it != objs_.end()) {
      gone.push_back(it->second);
      objs_.erase(it);
    }
    if (!obj->parent && obj->owner) obj->ownerBase()->owned.erase(obj);
    if (!obj->recvMonitors.empty()) {
      auto ms = std::move(obj->recvMonitors);
      obj->recvMonitors.clear();
      for (auto& m : ms) ev_->fireMonitor(m, reason);
    }
    obj->delegMonitors.clear();
    if (!obj->remoteHolds.empty()) {
      Ref ref = refOf(obj);
      auto holds = std::move(obj->remoteHolds);
      obj->remoteHolds.clear();
      for (auto& [peer, c] : holds) ev_->sendRevoked(peer, ref, reason);
    }
    for (Obj* c : obj->children) stack.push_back(c);
    obj->children.clear();
  }
  for (auto& obj : gone) unpinArgs(obj.get());
  if (root->parent) {
    checkDelegMonitors(root->parent.get());
    maybeCollect(root->parent.get());
  }
}

void ObjectTable::armDelegMonitors(Obj* obj) {
  for (auto& d : obj->delegMonitors) {
    if (!d.armed && holders(obj, d.m.proc.get() ? static_cast<const ProcBase*>(d.m.proc.get()) : nullptr, d.m.peer) > 0)
      d.armed = true;
  }
}

void ObjectTable::checkDelegMonitors(Obj* obj) {
  if (obj->delegMonitors.empty()) return;
  std::vector<DelegMonitor> keep;
  std::vector<Monitor> fire;
  for (auto& d : obj->delegMonitors) {
    const ProcBase* ex = d.m.proc ? static_cast<const ProcBase*>(d.m.proc.get()) : nullptr;
    if (d.armed && holders(obj, ex, d.m.peer) == 0) fire.push_back(d.m);
    else keep.push_back(d);
  }
  obj->delegMonitors = std::move(keep);
  for (auto& m : fire) ev_->fireMonitor(m, kReasonDelegatesGone);
}

void ObjectTable::clear() {
  for (auto& [id, o] : objs_) {
    o->children.clear();
    o->delegMonitors.clear();
    o->recvMonitors.clear();
  }
  objs_.clear();
}

}  // namespace fractos

// The cid table and resolve (caps.h). Port of the former TS controller/process-conn.ts (install, lookup,
// remove) and controller.ts #target.
#include "caps.h"

#include <string>

namespace fractos {

Err CapTable::install(const std::shared_ptr<Target>& t, uint32_t maxCaps, uint32_t* cid) {
  if (m_.size() >= maxCaps) return Err(kNoSpc, "capability space full (" + std::to_string(maxCaps) + " caps)");
  uint32_t c = next_;
  while (m_.count(c)) c = c == 0xffffffffu ? 1 : c + 1;  // only after a wrap
  next_ = c == 0xffffffffu ? 1 : c + 1;
  m_.emplace(c, t);
  t->addEntry(owner_);
  *cid = c;
  return Err();
}

Target* CapTable::lookup(uint32_t cid) const {
  auto it = m_.find(cid);
  return it == m_.end() ? nullptr : it->second.get();
}

const std::shared_ptr<Target>* CapTable::lookupShared(uint32_t cid) const {
  auto it = m_.find(cid);
  return it == m_.end() ? nullptr : &it->second;
}

Err CapTable::resolve(uint32_t cid, Kind kind, uint8_t rights, uint64_t end, std::shared_ptr<Target>* out) const {
  auto it = m_.find(cid);
  if (it == m_.end())
    return Err(kBadCap, "cid " + std::to_string(cid) + " is not in the capability space of process " + std::to_string(owner_->id));
  const auto& t = it->second;
  if (t->revoked) return Err(kRevoked, "cid " + std::to_string(cid) + " names a revoked object");
  if (!t->isProxy) {
    auto* o = static_cast<const Obj*>(t.get());
    if (kind != Kind::Any && o->kind != kind)
      return Err(kType, "cid " + std::to_string(cid) + (kind == Kind::Memory ? " is not Memory" : " is not a Request"));
    if (o->mem && (o->mem->perms & rights) != rights) return Err(kPerm, "cid " + std::to_string(cid) + " lacks the rights");
    if (o->mem && end > o->mem->size)
      return Err(kRange, std::to_string(end) + " bytes beyond Memory of " + std::to_string(o->mem->size));
  }
  if (out) *out = t;
  return Err();
}

std::shared_ptr<Target> CapTable::remove(uint32_t cid) {
  auto it = m_.find(cid);
  if (it == m_.end()) return nullptr;
  auto t = std::move(it->second);
  m_.erase(it);
  t->removeEntry(owner_);
  return t;
}

std::vector<uint32_t> CapTable::cids() const {
  std::vector<uint32_t> v;
  v.reserve(m_.size());
  for (auto& [c, t] : m_) v.push_back(c);
  return v;
}

}  // namespace fractos

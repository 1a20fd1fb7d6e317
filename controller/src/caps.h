// A Process's capability space: cid -> target, and the one `resolve` every system call
// uses to check a cid, in the fixed order of docs/protocol.md:
//   EPROTO (the caller parsed the whole body first), EBADCAP, EREVOKED, ETYPE, EPERM, ERANGE.
// Cids come from a u32 counter (1, 2, ..., 2^32-1, then 1 again, skipping cids in use), so a
// cid value comes back only after 2^32-2 other cids were issued in that space.
#pragma once
#include <cstdint>
#include <memory>
#include <unordered_map>

#include "objects.h"
#include "wire.h"

namespace fractos {

class CapTable {
 public:
  explicit CapTable(const ProcBase* owner) : owner_(owner) {}

  /**
   * Install `t` under a new cid (counted in t's entries). Errors: ENOSPC when the space
   * holds `maxCaps` entries (nothing installed).
   */
  Err install(const std::shared_ptr<Target>& t, uint32_t maxCaps, uint32_t* cid);
  /** The target of `cid`, revoked or not, or null (EBADCAP). */
  Target* lookup(uint32_t cid) const;
  const std::shared_ptr<Target>* lookupShared(uint32_t cid) const;
  /**
   * Check `cid` for a call: EBADCAP (not in this space), EREVOKED, ETYPE (a local object of
   * another kind than `kind`; Kind::Any matches all; a proxy's kind is checked by its owner),
   * EPERM (a local Memory without all of `rights`), ERANGE (a local Memory smaller than
   * `end` bytes; 0 = no check).
   */
  Err resolve(uint32_t cid, Kind kind, uint8_t rights, uint64_t end, std::shared_ptr<Target>* out) const;
  /** Remove `cid` (no revocation); its target, or null when not in the space. */
  std::shared_ptr<Target> remove(uint32_t cid);
  size_t size() const { return m_.size(); }
  /** Every cid (a copy, to remove while iterating). */
  std::vector<uint32_t> cids() const;
  /** Test hook: the next cid issued (1..2^32-1). */
  void setNextCid(uint32_t c) { next_ = c == 0 ? 1 : c; }
  uint32_t nextCid() const { return next_; }

 private:
  const ProcBase* owner_;
  uint32_t next_ = 1;
  std::unordered_map<uint32_t, std::shared_ptr<Target>> m_;
};

}  // namespace fractos

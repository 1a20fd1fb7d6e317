// Recent invocations for INTROSPECT (docs/protocol.md "Introspection"): a fixed ring of
// records written on every REQUEST_INVOKE / P_INVOKE without allocation, read only when an
// allowed Process asks. Port of controller/invocation-ring.ts (same record layout).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace fractos {

/** Who made an invocation. */
enum InvokerKind : uint8_t { kInvokerProcess = 0, kInvokerPeer = 1 };

/** One record as INTROSPECT sends it (28 bytes on the wire). */
struct InvocationRecord {
  uint8_t kind = 0;
  uint32_t invoker = 0;           // Process id, or peer Controller id
  uint32_t targetController = 0;  // owner of the invoked Request
  uint32_t provider = 0;          // local owner Process; 0 when the Request is remote
  uint64_t object = 0;            // Request object id at targetController
  uint64_t atMs = 0;              // monotonic ms when recorded
};

class InvocationRing {
 public:
  explicit InvocationRing(size_t capacity) : recs_(capacity) {}
  size_t capacity() const { return recs_.size(); }
  /** Seq of the next record (= records written so far, this epoch). */
  uint64_t nextSeq() const { return next_; }
  /** Record one invocation (stores into the preallocated slot; no allocation). */
  void record(uint8_t kind, uint32_t invoker, uint32_t targetController, uint64_t object, uint32_t provider, uint64_t nowMs) {
    InvocationRecord& r = recs_[next_ % recs_.size()];
    r.kind = kind;
    r.invoker = invoker;
    r.targetController = targetController;
    r.object = object;
    r.provider = provider;
    r.atMs = nowMs;
    next_++;
  }
  /** First seq still held that is >= since (at most nextSeq), and how many follow it. */
  void window(uint64_t since, uint64_t* first, uint64_t* count) const {
    uint64_t oldest = next_ > recs_.size() ? next_ - recs_.size() : 0;
    *first = std::min(std::max(since, oldest), next_);
    *count = next_ - *first;
  }
  const InvocationRecord& at(uint64_t seq) const { return recs_[seq % recs_.size()]; }

 private:
  std::vector<InvocationRecord> recs_;
  uint64_t next_ = 0;
};

}  // namespace fractos

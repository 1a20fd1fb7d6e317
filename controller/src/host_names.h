// The external name store the JS host implements (host.h NameStore): each put/get becomes a
// request handed to JS (etcd, controller/names-etcd.ts) through a sink that never blocks
// (a thread-safe function), and its answer comes back on the loop thread (`answer`, run
// through HostImpl::call). Every request is answered exactly once: by JS, or with
// ETIMEDOUT when JS has not answered within the time bound (a late answer is dropped),
// or with EAGAIN when too many are in flight or the sink refused it. Loop thread only.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>

#include "host.h"

namespace fractos {

/** Requests in flight to the JS name store at once (EAGAIN beyond). */
constexpr size_t kMaxPendingNameOps = 4096;

class JsNameStore final : public NameStore {
 public:
  enum Kind : uint8_t { kPut = 0, kGet = 1, kRemove = 2 };
  /** Hands one request to JS without blocking; false when it could not (then EAGAIN). `req` is 0 for kRemove (no answer). */
  using Sink = std::function<bool(Kind kind, uint64_t req, const std::string& name, const NameRecord& r)>;

  JsNameStore(uint32_t timeoutMs, Sink sink) : timeoutMs_(timeoutMs), sink_(std::move(sink)) {}
  /** The host whose timers bound the requests (before the loop starts). */
  void attach(Host* host) { host_ = host; }

  void put(const std::string& name, const NameRecord& r, Answer cb) override { request(kPut, name, r, std::move(cb)); }
  void get(const std::string& name, Answer cb) override { request(kGet, name, NameRecord{}, std::move(cb)); }
  void remove(const std::string& name, const NameRecord& r) override { sink_(kRemove, 0, name, r); }

  /** JS answered request `req` (unknown or timed-out ids are ignored). */
  void answer(uint64_t req, uint16_t code, const std::string& msg, const NameRecord& r);
  /** Forget every request without answering (the loop has stopped and the core is gone). */
  void clear() { pending_.clear(); }
  size_t pending() const { return pending_.size(); }

 private:
  void request(Kind kind, const std::string& name, const NameRecord& r, Answer cb);
  void later(Answer cb, uint16_t code, std::string msg);

  struct Pending {
    Answer cb;
    uint64_t timer = 0;
  };
  const uint32_t timeoutMs_;
  Sink sink_;
  Host* host_ = nullptr;
  std::unordered_map<uint64_t, Pending> pending_;
  uint64_t next_ = 1;
};

}  // namespace fractos

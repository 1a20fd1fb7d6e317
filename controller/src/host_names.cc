// JsNameStore (host_names.h): the native side of the external name store.
#include "host_names.h"

#include "wire.h"

namespace fractos {

void JsNameStore::later(Answer cb, uint16_t code, std::string msg) {
  // never from inside the call (host.h NameStore): on the loop, at once
  host_->setTimer(0, [cb = std::move(cb), code, msg = std::move(msg)] { cb(code, msg, NameRecord{}); });
}

void JsNameStore::request(Kind kind, const std::string& name, const NameRecord& r, Answer cb) {
  if (pending_.size() >= kMaxPendingNameOps)
    return later(std::move(cb), kAgain, std::to_string(kMaxPendingNameOps) + " name operations in flight to etcd");
  uint64_t req = next_++;
  if (!sink_(kind, req, name, r)) return later(std::move(cb), kAgain, "the name store (etcd) is not reachable from the controller");
  Pending& p = pending_[req];
  p.cb = std::move(cb);
  p.timer = host_->setTimer(timeoutMs_, [this, req] {
    auto it = pending_.find(req);
    if (it == pending_.end()) return;
    Answer cb = std::move(it->second.cb);
    pending_.erase(it);
    cb(kTimedOut, "the name store (etcd) did not answer within " + std::to_string(timeoutMs_) + " ms", NameRecord{});
  });
}

void JsNameStore::answer(uint64_t req, uint16_t code, const std::string& msg, const NameRecord& r) {
  auto it = pending_.find(req);
  if (it == pending_.end()) return;
  Answer cb = std::move(it->second.cb);
  host_->cancelTimer(it->second.timer);
  pending_.erase(it);
  cb(code, msg, r);
}

}  // namespace fractos

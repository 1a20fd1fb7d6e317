// Monitors (paper §3.5): monitor_receive (fires when the object is revoked or its owner
// fails), monitor_delegate (fires when every holder other than the caller is gone), remote
// monitors (P_MONITOR_DELEGATE at the owner, P_MONITOR_FIRE back). Port of controller.ts
// #monitorReceive, #monitorDelegate, #fireMonitor.
#include "core.h"

namespace fractos {

void CoreImpl::monitorReceive(const std::shared_ptr<Proc>& proc, const std::shared_ptr<Target>& t, uint32_t token) {
  Monitor m{proc, 0, token};
  if (t->revoked) return fireMonitor(m, kReasonRevoked);
  t->recvMonitors.push_back(std::move(m));
}

void CoreImpl::monitorDelegate(const std::shared_ptr<Proc>& proc, const std::shared_ptr<Target>& t, uint32_t token, uint32_t seq) {
  if (t->isProxy) {
    auto p = std::static_pointer_cast<Proxy>(t);
    uint32_t rtoken = nextRemoteToken_++;
    if (nextRemoteToken_ == 0) nextRemoteToken_ = 1;
    remoteMonitors_[rtoken] = RemoteMonitor{proc, token};
    Done done = replyDone(proc, seq);
    // P_MONITOR_DELEGATE: ref, u32 token
    Frame f;
    f.start(op::P_MONITOR_DELEGATE, 0).ref(p->ref).u32(rtoken);
    peerCall(p, f, [this, rtoken, done](const Err& e, const uint8_t*, size_t) {
      if (e) remoteMonitors_.erase(rtoken);
      done(e);
    });
    return;
  }
  auto* obj = static_cast<Obj*>(t.get());
  obj->delegMonitors.push_back(DelegMonitor{Monitor{proc, 0, token}, objects_.holders(obj, proc.get()) > 0});
  replyOk(*proc, seq);
}

void CoreImpl::peerMonitorDelegate(Peer& peer, Obj* obj, uint32_t token) {
  obj->delegMonitors.push_back(DelegMonitor{Monitor{nullptr, peer.id, token}, objects_.holders(obj, nullptr, peer.id) > 0});
}

void CoreImpl::peerMonitorFire(uint32_t token, uint16_t reason) {
  auto it = remoteMonitors_.find(token);
  if (it == remoteMonitors_.end()) return;
  RemoteMonitor m = std::move(it->second);
  remoteMonitors_.erase(it);
  fireMonitor(Monitor{m.proc, 0, m.token}, reason);
}

void CoreImpl::fireMonitor(const Monitor& m, uint16_t reason) {
  if (closing_) return;
  if (m.proc) {
    if (!m.proc->alive) return;
    // MONITOR_FIRE: u32 monitor id, u16 reason, u16 0
    encodeMonitorFire(out_, op::MONITOR_FIRE, m.token, reason);
    send(m.proc->conn, out_);
    return;
  }
  Peer* peer = peerOf(m.peer);
  if (!peer) return;
  encodeMonitorFire(out_, op::P_MONITOR_FIRE, m.token, reason);
  send(peer->conn, out_);
}

}  // namespace fractos

// Peer links after the handshake: the handler table of peer frames (P_*), each case with
// its wire grammar, and links up/down (replacement by epoch, cleanup of proxies, holds,
// names). Port of controller.ts #onPeerFrame, #peerUp, #peerGone.
#include "core.h"

namespace fractos {

bool CoreImpl::peerUp(ConnId c, uint32_t id, uint32_t epoch) {
  auto it = peers_.find(id);
  if (it != peers_.end()) {
    std::shared_ptr<Peer> old = it->second;
    if (epoch < old->epoch) return false;  // a stale incarnation
    log(LogLevel::Warn,
        "peer " + std::to_string(id) + " reconnected (epoch " + std::to_string(old->epoch) + " -> " + std::to_string(epoch) +
            "); the old link is closed",
        "{\"peer\":" + std::to_string(id) + ",\"epoch\":" + std::to_string(epoch) + ",\"oldEpoch\":" + std::to_string(old->epoch) + "}");
    peerGone(old);
    host_->close(old->conn, "replaced by a newer link");
  }
  auto peer = std::make_shared<Peer>();
  peer->id = id;
  peer->epoch = epoch;
  peer->conn = c;
  peers_[id] = peer;
  peerByConn_[c] = peer;
  host_->setLinkInfo(c, true, id, "controller-" + std::to_string(id));
  // Proxies of an older epoch of this peer are stale now.
  std::vector<std::shared_ptr<Proxy>> stale;
  for (auto& [ref, p] : proxies_)
    if (ref.controller == id && ref.epoch != epoch) stale.push_back(p);
  for (auto& p : stale) proxyRevoked(p.get(), kReasonOwnerFailed);
  kvPeerUp(*peer);
  kvJoinWaitersRun(id);
  return true;
}

void CoreImpl::peerClosed(ConnId c) {
  auto it = peerByConn_.find(c);
  if (it == peerByConn_.end()) return;
  std::shared_ptr<Peer> peer = it->second;
  peerGone(peer);
}

void CoreImpl::peerGone(const std::shared_ptr<Peer>& peer) {
  if (!peer->alive) return;
  peer->alive = false;
  peerByConn_.erase(peer->conn);
  auto it = peers_.find(peer->id);
  if (it != peers_.end() && it->second == peer) {
    peers_.erase(it);
    kvPeerGone(peer->id);
  }
  peer->sink = Peer::Sink{};
  peer->calls.failAll(host_, kDisconnected, "controller " + std::to_string(peer->id) + " disconnected");
  std::vector<std::shared_ptr<Proxy>> gone;
  for (auto& [ref, p] : proxies_)
    if (ref.controller == peer->id) gone.push_back(p);
  for (auto& p : gone) proxyRevoked(p.get(), kReasonOwnerFailed);
  std::vector<std::shared_ptr<Obj>> held;
  objects_.forEach([&](Obj* o) {
    if (o->remoteHolds.count(peer->id)) held.push_back(objects_.getShared(o->id));
  });
  for (auto& o : held) {
    o->remoteHolds.erase(peer->id);
    auto& dm = o->delegMonitors;
    for (size_t i = 0; i < dm.size();) {
      if (!dm[i].m.proc && dm[i].m.peer == peer->id) dm.erase(dm.begin() + long(i));
      else i++;
    }
    objects_.released(o.get());
  }
  // Copies waiting for this link to drain go on: their destination is revoked now, they fail.
  drained(peer->conn);
}

void CoreImpl::peerFrame(ConnId c, const uint8_t* f, size_t len) {
  auto it = peerByConn_.find(c);
  if (it == peerByConn_.end()) return;
  std::shared_ptr<Peer> peer = it->second;
  if (!peer->alive) return;
  Err e = onPeerFrame(peer, f, len);
  if (!e) return;
  if (e.code != kProto) return replyErr(peer->conn, readHeader(f).seq, e);
  log(LogLevel::Warn, "malformed peer frame: " + e.msg, "{\"peer\":" + std::to_string(peer->id) + "}");
  host_->close(peer->conn, "EPROTO: " + e.msg);
}

Err CoreImpl::onPeerFrame(const std::shared_ptr<Peer>& peer, const uint8_t* f, size_t len) {
  const Header h = readHeader(f);
  const uint32_t seq = h.seq;
  Reader r(f, len);
  auto reply = [this, peer, seq](const Err& e) {
    if (!peer->alive) return;
    if (e) return replyErr(peer->conn, seq, e);
    out_.start(op::REPLY, seq).finish();
    send(peer->conn, out_);
  };
  // The new object is pre-held for the asking peer.
  auto replyRef = [this, peer, seq](const std::shared_ptr<Obj>& obj) {
    obj->remoteHolds[peer->id] = 1;
    encodeRefReply(out_, seq, objects_.refOf(obj.get()));
    send(peer->conn, out_);
  };
  Err e;
  std::shared_ptr<Obj> obj;
  switch (h.op) {
    case op::REPLY:
      return peer->calls.complete(host_, f, len);

    case op::P_NULL:
      // (empty) -> REPLY
      reply(Err());
      return Err();

    case op::P_INVOKE:
    case op::P_DERIVE: {
      // ref, args (caps as refs), [u16 n, n x (u16 slot, u8 perms, u8 backing, u32 0, u64 size)]
      //   -> REPLY once delivered (P_INVOKE) | ref, pre-held (P_DERIVE)
      Ref ref = r.ref();
      readArgs(r, true, args_);
      if ((e = r.err())) return e;
      if ((e = localObj(ref, &obj))) return e;
      std::vector<TArg> caps;
      caps.reserve(args_.caps.size());
      for (auto& c : args_.caps) caps.push_back(TArg{c.slot, targetFromRef(c.ref)});
      if (r.left() >= 2 && !caps.empty()) {
        uint16_t n = r.u16();
        if (r.left() < 16u * n) return Err(kProto, "truncated Memory descriptors");
        // The first cap argument of each slot (a map: n x caps could be 2^32 comparisons).
        std::unordered_map<uint16_t, Target*> bySlot;
        bySlot.reserve(caps.size());
        for (auto& c : caps) bySlot.emplace(c.slot, c.t.get());
        for (uint16_t i = 0; i < n; i++) {
          uint16_t slot = r.u16();
          uint8_t perms = r.u8(), backing = r.u8();
          r.u32();
          uint64_t size = r.u64();
          if ((e = r.err())) return e;
          auto it = bySlot.find(slot);
          if (it == bySlot.end() || !it->second->isProxy || it->second == dead_.get()) continue;
          auto* p = static_cast<Proxy*>(it->second);
          if (!p->mem) p->mem = RemoteMem{size, uint8_t(perms & kRW), uint8_t(backing == 1 ? 1 : 0)};
        }
      }
      if (h.op == op::P_INVOKE) {
        if (obj->req && !obj->revoked)
          invocations_.record(kInvokerPeer, peer->id, id_, obj->id, obj->owner ? obj->owner->id : 0, host_->loopMs());
        invokeLocal(obj, args_, caps, peer->conn, reply);
      } else {
        std::shared_ptr<Obj> d;
        if ((e = derive(obj, args_, caps, &d))) reply(e);
        else replyRef(d);
      }
      // Proxies made only to name an argument that nothing took (a failed call) are forgotten.
      for (auto& c : caps)
        if (c.t->isProxy && c.t != dead_) forgetUnused(std::static_pointer_cast<Proxy>(c.t));
      return Err();
    }

    case op::P_REVTREE: {
      // ref -> ref (pre-held)
      Ref ref = r.ref();
      if ((e = r.err()) || (e = localObj(ref, &obj))) return e;
      replyRef(revtree(obj));
      objects_.armDelegMonitors(obj.get());  // held by the peer now (a remote kv_get holds nothing else)
      return Err();
    }

    case op::P_DIMINISH: {
      // ref, u8 dropPerms, u64 offset, u64 size -> ref (pre-held)
      Ref ref = r.ref();
      uint8_t drop = r.u8();
      uint64_t off = r.u64(), size = r.u64();
      if ((e = r.err()) || (e = localObj(ref, &obj))) return e;
      std::shared_ptr<Obj> view;
      if ((e = diminish(obj, drop, off, size, &view))) return e;
      replyRef(view);
      return Err();
    }

    case op::P_REVOKE: {
      // ref -> REPLY
      Ref ref = r.ref();
      if ((e = r.err()) || (e = localObj(ref, &obj))) return e;
      objects_.revoke(obj.get(), kReasonRevoked);
      reply(Err());
      return Err();
    }

    case op::P_COPY: {
      // src ref, dst ref -> REPLY once copied (run here at src's owner, pushed to dst)
      Ref sref = r.ref(), dref = r.ref();
      if ((e = r.err()) || (e = localObj(sref, &obj))) return e;
      std::shared_ptr<Target> dst;
      if (dref.controller == id_) {
        std::shared_ptr<Obj> d;
        if ((e = localObj(dref, &d))) return e;
        dst = d;
      } else {
        auto pit = proxies_.find(dref);
        dst = pit != proxies_.end() ? std::shared_ptr<Target>(pit->second) : std::make_shared<Proxy>(dref);
      }
      execCopy(obj, dst, reply);
      return Err();
    }

    case op::P_MEM_WRITE: {
      // ref, u64 offset, u64 total, bytes -> REPLY (rights and total <= size checked on every chunk)
      Ref ref = r.ref();
      uint64_t off = r.u64(), total = r.u64();
      if ((e = r.err()) || (e = localObj(ref, &obj))) return e;
      if (!obj->mem) return Err(kType, "memory_copy destination is not Memory");
      if (!(obj->mem->perms & kWrite)) return Err(kPerm, "memory_copy destination is not writable");
      if (total > obj->mem->size)
        return Err(kRange, "memory_copy of " + std::to_string(total) + " bytes into " + std::to_string(obj->mem->size));
      writeLocal(obj, off, f + r.off, len - r.off, reply);
      return Err();
    }

    case op::P_STAT: {
      // ref -> u64 size, u8 perms, u8 backing
      Ref ref = r.ref();
      if ((e = r.err()) || (e = localObj(ref, &obj))) return e;
      if (!obj->mem) return Err(kType, "not Memory");
      encodePStatReply(out_, seq, obj->mem->size, obj->mem->perms, obj->mem->backing);
      send(peer->conn, out_);
      return Err();
    }

    case op::P_MONITOR_DELEGATE: {
      // ref, u32 token -> REPLY
      Ref ref = r.ref();
      uint32_t token = r.u32();
      if ((e = r.err()) || (e = localObj(ref, &obj))) return e;
      peerMonitorDelegate(*peer, obj.get(), token);
      reply(Err());
      return Err();
    }

    case op::P_MONITOR_FIRE: {
      // u32 token, u16 reason, u16 0 (one-way)
      uint32_t token = r.u32();
      uint16_t reason = r.u16();
      if ((e = r.err())) return e;
      peerMonitorFire(token, reason);
      return Err();
    }

    case op::P_HOLD: {
      // ref, i32 delta (one-way): the sender's Processes hold `delta` more/fewer caps to ref
      Ref ref = r.ref();
      int32_t delta = r.i32();
      if ((e = r.err())) return e;
      Obj* o = ref.controller == id_ && ref.epoch == epoch_ ? objects_.get(ref.id) : nullptr;
      if (!o || o->revoked) {
        if (delta > 0) sendRevoked(peer->id, ref, kReasonRevoked);
        return Err();
      }
      std::shared_ptr<Obj> keep = objects_.getShared(ref.id);
      int64_t n = o->remoteHolds[peer->id] + delta;
      if (n > 0) o->remoteHolds[peer->id] = n;
      else o->remoteHolds.erase(peer->id);
      if (delta > 0) objects_.armDelegMonitors(o);
      else objects_.released(o);
      return Err();
    }

    case op::P_REVOKED: {
      // ref, u16 reason, u16 0 (one-way): the owner revoked ref
      Ref ref = r.ref();
      uint16_t reason = r.u16();
      if ((e = r.err())) return e;
      auto pit = proxies_.find(ref);
      if (pit != proxies_.end()) {
        std::shared_ptr<Proxy> p = pit->second;
        proxyRevoked(p.get(), reason);
      }
      return Err();
    }

    case op::P_KV_PUT: {
      // u64 ts, u64 since, u32 origin, u32 owner process, u32 flags (1 delete), u32 0, ref, utf8 name (one-way)
      if (len < kHeaderBytes + 32 + kRefBytes + 1) return Err(kProto, "frame body shorter than 49 bytes");
      KvEntry n;
      n.ts = r.u64();
      n.since = r.u64();
      n.origin = r.u32();
      n.ownerProc = r.u32();
      uint32_t flags = r.u32();
      r.u32();
      n.ref = r.ref();
      n.originEpoch = peer->epoch;
      std::string_view name = r.rest();
      if ((e = r.err())) return e;
      return kvFromPeer(*peer, name, n, (flags & 1) != 0);
    }

    default:
      return Err(kProto, "unknown peer op " + opName(h.op));
  }
}

// ---- zero-copy receive of P_MEM_WRITE (host.h Core::peerSinkOpen) -----------------------------

bool CoreImpl::peerSinkOpen(ConnId c, const uint8_t* f, size_t have, size_t len, PeerSink* sink) {
  // Only the case that succeeds goes straight into the mapping; every error (and a served
  // destination) takes the frame whole through onPeerFrame, which answers it as before.
  auto it = peerByConn_.find(c);
  if (it == peerByConn_.end() || !it->second->alive || it->second->sink.open) return false;
  Peer& peer = *it->second;
  const Header h = readHeader(f);
  if (h.op != op::P_MEM_WRITE) return false;
  // P_MEM_WRITE: ref, u64 offset, u64 total, bytes
  Reader r(f, have);
  Ref ref = r.ref();
  uint64_t off = r.u64(), total = r.u64();
  if (r.bad) return false;
  const size_t head = r.off;
  std::shared_ptr<Obj> obj;
  if (localObj(ref, &obj)) return false;
  if (!obj->mem || !(obj->mem->perms & kWrite) || !obj->mem->map) return false;
  const MemInfo& m = *obj->mem;
  const uint64_t n = len - head;
  // The bounds of writeLocal, and the mapping's own length (a hostile peer writes nowhere else).
  if (total > m.size || off > m.size || n > m.size - off || n == 0) return false;
  if (m.offset + off + n > m.map->len) return false;
  peer.sink.open = true;
  peer.sink.seq = h.seq;
  peer.sink.obj = obj;
  peer.sink.map = m.map;
  sink->dst = m.map->base + m.offset + off;
  sink->headBytes = head;
  return true;
}

void CoreImpl::peerSinkDone(ConnId c, bool faulted) {
  auto it = peerByConn_.find(c);
  if (it == peerByConn_.end()) return;
  std::shared_ptr<Peer> peer = it->second;
  if (!peer->sink.open) return;
  Peer::Sink s = std::move(peer->sink);
  peer->sink = Peer::Sink{};
  if (!peer->alive) return;
  // Revoked while its bytes were arriving: they landed, but the copy is reported failed.
  if (s.obj->revoked) return replyErr(peer->conn, s.seq, Err(kRevoked, "memory_copy destination was revoked during the copy"));
  if (faulted) return replyErr(peer->conn, s.seq, regionFault(*s.obj->mem, false));
  out_.start(op::REPLY, s.seq).finish();
  send(peer->conn, out_);
}

void CoreImpl::sendRevoked(uint32_t peerId, const Ref& ref, uint16_t reason) {
  Peer* peer = peerOf(peerId);
  if (!peer) return;
  encodePRevoked(out_, ref, reason);
  send(peer->conn, out_);
}

}  // namespace fractos

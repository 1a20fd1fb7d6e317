// Encoders and decoders of docs/protocol.md (see wire.h).
#include "wire.h"

#include "invocations.h"

namespace fractos {

const char* codeName(uint16_t code) {
  static const char* const names[] = {
      "OK",        "EBADCAP", "EREVOKED", "EPERM",  "ERANGE", "EARGSET",  "EPROTO",    "EDISCONNECTED",
      "ETYPE",     "ENOSPC",  "EAGAIN",   "ENOENT", "EEXIST", "EINVAL",   "EIO",       "ENODEV",
      "ETIMEDOUT", "ENOTLOCAL", "EBUSY",  "ENOTSUP", "EFAULT", "EISDIR",  "ENOTDIR",   "ENOTEMPTY",
      "EADDRINUSE", "ENAMETOOLONG", "EACCES", "EXDEV",  "EMLINK",  "ENFILE",  "ELOOP",     "EBADF"};
  return code < sizeof names / sizeof names[0] ? names[code] : "E?";
}

std::string opName(uint16_t o) {
  switch (o) {
#define N(x) \
  case op::x: \
    return #x;
    N(REPLY) N(HELLO) N(STATS) N(MEMORY_CREATE) N(MEMORY_DIMINISH) N(MEMORY_COPY) N(MEMORY_STAT) N(MEMORY_MAP) N(REQUEST_CREATE)
    N(REQUEST_DERIVE) N(REQUEST_INVOKE) N(REQUEST_INVOKE_QUIET) N(CAP_REVTREE) N(CAP_REVOKE) N(CAP_DROP) N(MONITOR_DELEGATE) N(MONITOR_RECEIVE)
    N(KV_PUT) N(KV_GET) N(DELIVER_ACK) N(CAP_DROP_MANY) N(DELIVER) N(MONITOR_FIRE) N(MEM_READ) N(MEM_WRITE)
    N(PEER_HELLO) N(P_NULL) N(P_INVOKE) N(P_DERIVE) N(P_REVTREE) N(P_REVOKE) N(P_DIMINISH) N(P_COPY) N(P_MEM_WRITE)
    N(P_STAT) N(P_MONITOR_DELEGATE) N(P_MONITOR_FIRE) N(P_HOLD) N(P_REVOKED) N(P_KV_PUT) N(PEER_AUTH)
#undef N
    case op::NUL:
      return "NULL";
    default: {
      char b[8];
      snprintf(b, sizeof b, "0x%x", o);
      return b;
    }
  }
}

std::string refString(const Ref& r) {
  return std::to_string(r.controller) + ":" + std::to_string(r.epoch) + ":" + std::to_string(r.id);
}

Header readHeader(const uint8_t* f) {
  return Header{ld32(f), ld16(f + 4), ld16(f + 6), ld32(f + 8), ld16(f + 12), ld16(f + 14)};
}

// ---- Reader -----------------------------------------------------------------------------

uint8_t Reader::u8() {
  if (!has(1)) return fail("frame body too short"), 0;
  return p[off++];
}
uint16_t Reader::u16() {
  if (!has(2)) return fail("frame body too short"), 0;
  uint16_t v = ld16(p + off);
  off += 2;
  return v;
}
uint32_t Reader::u32() {
  if (!has(4)) return fail("frame body too short"), 0;
  uint32_t v = ld32(p + off);
  off += 4;
  return v;
}
int32_t Reader::i32() { return int32_t(u32()); }
uint64_t Reader::u64() {
  if (!has(8)) return fail("frame body too short"), 0;
  uint64_t v = ld64(p + off);
  off += 8;
  if (v >= (1ull << 53)) return fail("u64 field beyond 2^53"), 0;
  return v;
}
Ref Reader::ref() {
  Ref r;
  r.controller = u32();
  r.epoch = u32();
  r.id = u64();
  return r;
}
void Reader::skip(size_t n) {
  if (!has(n)) return fail("frame body too short");
  off += n;
}
std::string_view Reader::rest() {
  if (bad || off >= end) return {};
  std::string_view s(reinterpret_cast<const char*>(p + off), end - off);
  off = end;
  return s;
}
Err Reader::err() const { return bad ? Err(kProto, why) : Err(); }

// ---- Frame ------------------------------------------------------------------------------

Frame& Frame::start(uint16_t o, uint32_t seq, uint16_t code) {
  b.clear();
  b.resize(kHeaderBytes, 0);
  uint8_t* h = b.data();
  h[4] = uint8_t(o);
  h[5] = uint8_t(o >> 8);
  std::memcpy(h + 8, &seq, 4);
  h[12] = uint8_t(code);
  h[13] = uint8_t(code >> 8);
  return *this;
}
Frame& Frame::u16(uint16_t v) {
  b.push_back(uint8_t(v));
  b.push_back(uint8_t(v >> 8));
  return *this;
}
Frame& Frame::u32(uint32_t v) {
  uint8_t t[4];
  std::memcpy(t, &v, 4);
  b.insert(b.end(), t, t + 4);
  return *this;
}
Frame& Frame::u64(uint64_t v) {
  uint8_t t[8];
  std::memcpy(t, &v, 8);
  b.insert(b.end(), t, t + 8);
  return *this;
}
Frame& Frame::bytes(const void* p, size_t n) {
  auto c = static_cast<const uint8_t*>(p);
  b.insert(b.end(), c, c + n);
  return *this;
}
Frame& Frame::finish(size_t extra) {
  uint32_t len = uint32_t(b.size() + extra);
  std::memcpy(b.data(), &len, 4);
  return *this;
}

// ---- args -------------------------------------------------------------------------------

void readArgs(Reader& r, bool refs, Args& out) {
  out.clear();
  if (!r.has(4)) return r.fail("truncated args");
  uint16_t nCaps = r.u16();
  uint16_t nImms = r.u16();
  size_t capBytes = refs ? kRefBytes : 4;
  if (!r.has(size_t(nCaps) * (4 + capBytes))) return r.fail("truncated cap args");
  out.caps.resize(nCaps);
  for (auto& c : out.caps) {
    c.slot = r.u16();
    r.u16();
    if (refs) {
      c.cid = 0;
      c.ref = r.ref();
    } else {
      c.cid = r.u32();
      c.ref = Ref{};
    }
  }
  out.imms.resize(nImms);
  for (auto& i : out.imms) {
    if (!r.has(8)) return r.fail("truncated immediate header");
    i.offset = r.u32();
    i.len = r.u32();
    if (!r.has(i.len)) return r.fail("truncated immediate bytes");
    i.data = r.p + r.off;
    r.off += i.len;
  }
}

size_t argsBytes(const Args& a, bool refs) {
  size_t n = 4 + a.caps.size() * (4 + (refs ? kRefBytes : 4));
  for (auto& i : a.imms) n += 8 + i.len;
  return n;
}

uint64_t queuedDeliveryBytes(const Args& a) {
  uint64_t n = kQueuedDeliveryOverheadBytes + 16 * a.caps.size();
  for (auto& i : a.imms) n += 8 + i.len;
  return n;
}

void writeArgs(Frame& f, const Args& a, bool refs) {
  f.u16(uint16_t(a.caps.size())).u16(uint16_t(a.imms.size()));
  for (auto& c : a.caps) {
    f.u16(c.slot).u16(0);
    if (refs) f.ref(c.ref);
    else f.u32(c.cid);
  }
  for (auto& i : a.imms) f.u32(i.offset).u32(i.len).bytes(i.data, i.len);
}

// ---- encoders ---------------------------------------------------------------------------

void encodeError(Frame& f, uint32_t seq, const Err& e) {
  std::string_view m = e.msg;
  // Strip leading "CODE: " copies (libfractos withoutCode), then cut at 512 bytes on a
  // character boundary.
  std::string prefix = std::string(codeName(e.code)) + ": ";
  while (m.substr(0, prefix.size()) == prefix) m.remove_prefix(prefix.size());
  if (m == codeName(e.code)) m = {};
  if (m.size() > kMaxErrorMessageBytes) {
    size_t n = kMaxErrorMessageBytes;
    while (n > 0 && (uint8_t(m[n]) & 0xc0) == 0x80) n--;
    m = m.substr(0, n);
  }
  f.start(op::REPLY, seq, e.code).str(m).finish();
}

void encodeHelloReply(Frame& f, uint32_t seq, uint32_t controller, uint32_t epoch, uint32_t procId, uint32_t maxFrame,
                      uint32_t maxImm, uint32_t maxSlots, uint32_t credits, uint32_t features, uint32_t ringBytes) {
  f.start(op::REPLY, seq).u32(controller).u32(epoch).u32(procId).u32(maxFrame).u32(maxImm).u32(maxSlots).u32(credits);
  f.u32(features).u32(ringBytes).finish();
}

void encodeCidReply(Frame& f, uint32_t seq, uint32_t cid) { f.start(op::REPLY, seq).u32(cid).finish(); }

void encodeRefReply(Frame& f, uint32_t seq, const Ref& r) { f.start(op::REPLY, seq).ref(r).finish(); }

void encodeMemCreateReply(Frame& f, uint32_t seq, uint32_t cid, uint64_t regionKey) {
  f.start(op::REPLY, seq).u32(cid).u32(0).u64(regionKey).finish();
}

void encodeMemStatReply(Frame& f, uint32_t seq, uint64_t size, uint8_t perms, uint8_t backing, uint8_t flags, uint64_t off,
                        uint64_t servedKey, uint64_t regionKey) {
  f.start(op::REPLY, seq).u64(size).u8(perms).u8(backing).u8(flags).u8(0).u32(0).u64(off).u64(servedKey).u64(regionKey).finish();
}

void encodeMemMapReply(Frame& f, uint32_t seq, uint64_t regionKey, uint64_t regionSize, uint64_t off, uint64_t size,
                       uint8_t perms) {
  f.start(op::REPLY, seq).u64(regionKey).u64(regionSize).u64(off).u64(size).u8(perms).u8(0).u16(0).u32(0).finish();
}

void encodeDeliverDesc(Frame& f, const DeliverDesc& d) {
  f.u16(d.slot).u8(d.perms).u8(d.backing).u8(d.flags).u8(0).u16(0).u64(d.size).u64(d.offset).u64(d.servedKey).u64(d.regionKey);
}

void encodePStatReply(Frame& f, uint32_t seq, uint64_t size, uint8_t perms, uint8_t backing) {
  f.start(op::REPLY, seq).u64(size).u8(perms).u8(backing).finish();
}

void encodeMonitorFire(Frame& f, uint16_t o, uint32_t token, uint16_t reason) {
  f.start(o, 0).u32(token).u16(reason).u16(0).finish();
}

void encodeMemRead(Frame& f, uint32_t seq, uint64_t key, uint64_t off, uint32_t len) {
  f.start(op::MEM_READ, seq).u64(key).u64(off).u32(len).finish();
}

void encodeMemWriteHead(Frame& f, uint32_t seq, uint64_t key, uint64_t off, size_t len) {
  f.start(op::MEM_WRITE, seq).u64(key).u64(off).finish(len);
}

void encodePMemWriteHead(Frame& f, uint32_t seq, const Ref& r, uint64_t off, uint64_t total, size_t len) {
  f.start(op::P_MEM_WRITE, seq).ref(r).u64(off).u64(total).finish(len);
}

void encodePHold(Frame& f, const Ref& r, int32_t delta) { f.start(op::P_HOLD, 0).ref(r).i32(delta).finish(); }

void encodePRevoked(Frame& f, const Ref& r, uint16_t reason) {
  f.start(op::P_REVOKED, 0).ref(r).u16(reason).u16(0).finish();
}

void encodePKvPut(Frame& f, uint64_t ts, uint64_t since, uint32_t origin, uint32_t ownerProc, bool del, const Ref& r,
                  std::string_view name) {
  f.start(op::P_KV_PUT, 0).u64(ts).u64(since).u32(origin).u32(ownerProc).u32(del ? 1 : 0).u32(0).ref(r).str(name).finish();
}

void encodeStatsReply(Frame& f, uint32_t seq, uint32_t controller, uint32_t epoch, const std::vector<StatsLink>& links) {
  f.start(op::REPLY, seq).u32(controller).u32(epoch).u16(uint16_t(links.size()));
  for (auto& l : links) {
    f.u8(l.peer ? 1 : 0).u8(l.closed ? 1 : 0).u32(l.id).u64(l.framesIn).u64(l.framesOut).u64(l.bytesIn).u64(l.bytesOut);
    f.u16(uint16_t(l.name.size())).str(l.name);
  }
  f.finish();
}

void encodeIntrospectReply(Frame& f, uint32_t seq, const IntrospectTotals& t, const std::vector<IntrospectProc>& procs,
                           uint64_t firstSeq, uint64_t nextSeq, const std::vector<InvocationRecord>& recs, uint64_t nowMs) {
  f.start(op::REPLY, seq).u32(t.controller).u32(t.epoch).u32(t.flags).u32(t.objects).u32(t.caps).u32(t.proxies).u32(t.names);
  f.u16(uint16_t(procs.size())).u16(uint16_t(recs.size())).u64(firstSeq).u64(nextSeq);
  for (auto& p : procs) {
    std::string_view n = p.name.substr(0, 255);
    f.u32(p.id).u32(p.pid).u32(p.objects).u32(p.caps).u8(uint8_t(n.size())).str(n);
  }
  for (auto& r : recs) {
    uint64_t age = nowMs > r.atMs ? nowMs - r.atMs : 0;
    f.u8(r.kind).u8(0).u16(0).u32(r.invoker).u32(r.targetController).u32(r.provider).u64(r.object).u32(uint32_t(std::min<uint64_t>(age, 0xffffffffu)));
  }
  f.finish();
}

}  // namespace fractos

// Unit tests of the native Controller core (built and run by test/controller-core-unit.test.ts):
// wire goldens (the same bytes as test/protocol.test.ts), the cid table (wrap at 2^32,
// ENOSPC, stale cids), the fixed order of resolve (EBADCAP, EREVOKED, ETYPE, EPERM, ERANGE),
// and the core behind a recording host: HELLO, NULL, error order of calls, credits (an
// over-ACK is EPROTO and closes only that channel), a Request invoked and delivered.
// Exit status 0 when every check holds; each failed check prints file:line.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "../caps.h"
#include "../core.h"
#include "../wire.h"
#include "memfd_region.h"

using namespace fractos;

static int failures = 0;
static int checks = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    checks++;                                                              \
    if (!(cond)) {                                                         \
      failures++;                                                          \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)
#define CHECK_EQ(a, b)                                                                                   \
  do {                                                                                                   \
    checks++;                                                                                            \
    auto va = (a);                                                                                       \
    auto vb = (b);                                                                                       \
    if (!(va == vb)) {                                                                                   \
      failures++;                                                                                        \
      std::fprintf(stderr, "%s:%d: CHECK_EQ failed: %s != %s\n", __FILE__, __LINE__, #a, #b);          \
    }                                                                                                    \
  } while (0)

static std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; i++) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}
static std::string hex(const Frame& f) { return hex(f.data(), f.size()); }
static std::string hexs(const std::string& s) { return hex(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

// ---- wire goldens -----------------------------------------------------------------------------

static void testWire() {
  Frame f;
  // header: length, op, flags, seq, code, reserved (little-endian)
  f.start(op::NUL, 0x01020304).finish();
  CHECK_EQ(hex(f), std::string("10000000") + "0200" + "0000" + "04030201" + "0000" + "0000");
  Header h = readHeader(f.data());
  CHECK_EQ(h.op, uint16_t(op::NUL));
  CHECK_EQ(h.seq, 0x01020304u);

  // REQUEST_INVOKE with one cap and one immediate
  const uint8_t imm[] = {0xaa, 0xbb};
  Args a;
  a.caps.push_back(CapArg{2, 7, Ref{}});
  a.imms.push_back(ImmArg{4, 2, imm});
  f.start(op::REQUEST_INVOKE, 9).u32(5);
  writeArgs(f, a, false);
  f.finish();
  CHECK_EQ(hex(f), std::string("2a000000") + "2200" + "0000" + "09000000" + "0000" + "0000" + "05000000" + "0100" + "0100" + "0200" +
                       "0000" + "07000000" + "04000000" + "02000000" + "aabb");
  CHECK_EQ(argsBytes(a, false), size_t(42 - 20));
  Reader r(f.data(), f.size(), 20);
  Args back;
  readArgs(r, false, back);
  CHECK(!r.bad);
  CHECK_EQ(r.off, f.size());
  CHECK_EQ(back.caps.size(), size_t(1));
  CHECK_EQ(back.caps[0].slot, uint16_t(2));
  CHECK_EQ(back.caps[0].cid, 7u);
  CHECK_EQ(hex(back.imms[0].data, back.imms[0].len), std::string("aabb"));
  CHECK_EQ(queuedDeliveryBytes(back), uint64_t(256 + 16 + 8 + 2));

  // P_INVOKE carries caps as refs (controller, epoch, u64 id)
  Args pa;
  pa.caps.push_back(CapArg{0, 0, Ref{2, 3, (1ull << 40) + 5}});
  f.start(op::P_INVOKE, 1).ref(Ref{1, 1, 1});
  writeArgs(f, pa, true);
  f.finish();
  CHECK_EQ(hex(f.data() + 32, f.size() - 32),
           std::string("0100") + "0000" + "0000" + "0000" + "02000000" + "03000000" + "05000000" + "00010000");
  Reader pr(f.data(), f.size(), 32);
  readArgs(pr, true, back);
  CHECK(!pr.bad);
  CHECK(back.caps[0].ref == (Ref{2, 3, (1ull << 40) + 5}));

  // REPLY with an error code and message (a "CODE: " prefix is not repeated)
  encodeError(f, 3, Err(kRevoked, "gone"));
  CHECK_EQ(hex(f), std::string("14000000") + "7f00" + "0000" + "03000000" + "0200" + "0000" + hexs("gone"));
  encodeError(f, 3, Err(kRevoked, "EREVOKED: gone"));
  CHECK_EQ(f.size(), size_t(20));
  encodeError(f, 3, Err(kPerm, std::string(600, 'x')));
  CHECK_EQ(f.size(), size_t(16 + 512));

  // error codes keep their wire numbers
  CHECK_EQ(int(kBadCap), 1);
  CHECK_EQ(int(kDisconnected), 7);
  CHECK_EQ(int(kFault), 20);
  CHECK_EQ(std::string(codeName(kAgain)), std::string("EAGAIN"));

  // u64 fields: safe integers only (2^53 - 1 reads, 2^53 is EPROTO)
  uint8_t b[24] = {0};
  uint64_t v = (1ull << 53) - 1;
  std::memcpy(b + 16, &v, 8);
  Reader u(b, 24);
  CHECK_EQ(u.u64(), v);
  CHECK(!u.bad);
  v = 1ull << 53;
  std::memcpy(b + 16, &v, 8);
  Reader u2(b, 24);
  u2.u64();
  CHECK(u2.bad);
  CHECK_EQ(u2.err().code, uint16_t(kProto));

  // args decoding checks counts and lengths (limits come at merge)
  uint8_t g[16 + 8] = {0};
  g[16] = 5;  // 5 caps, no bytes for them
  Reader gr(g, sizeof g);
  readArgs(gr, false, back);
  CHECK(gr.bad);
  uint8_t k[16 + 12] = {0};
  k[18] = 1;  // 1 immediate
  k[24] = 1;  // length 1, no bytes
  Reader kr(k, sizeof k);
  readArgs(kr, false, back);
  CHECK(kr.bad);

  // the frames the core sends
  encodeHelloReply(f, 7, 1, 2, 3, 4, 5, 6, 256, 2, 1u << 20);
  CHECK_EQ(hex(f), std::string("34000000") + "7f00" + "0000" + "07000000" + "0000" + "0000" + "01000000" + "02000000" + "03000000" +
                       "04000000" + "05000000" + "06000000" + "00010000" + "02000000" + "00001000");
  encodeMonitorFire(f, op::MONITOR_FIRE, 9, kReasonDelegatesGone);
  CHECK_EQ(hex(f), std::string("18000000") + "8100" + "0000" + "00000000" + "0000" + "0000" + "09000000" + "0300" + "0000");
  encodeMemRead(f, 4, 0x11, 0x22, 0x33);
  CHECK_EQ(hex(f), std::string("24000000") + "8200" + "0000" + "04000000" + "0000" + "0000" + "1100000000000000" + "2200000000000000" +
                       "33000000");
  encodeMemWriteHead(f, 4, 1, 2, 100);
  CHECK_EQ(hex(f.data(), 4), std::string("84000000"));  // 16 + 16 + 100
  encodePMemWriteHead(f, 5, Ref{1, 2, 3}, 4, 8, 10);
  CHECK_EQ(f.size(), size_t(48));
  CHECK_EQ(hex(f.data(), 4), std::string("3a000000"));
  encodePHold(f, Ref{1, 2, 3}, -1);
  CHECK_EQ(hex(f.data() + 16, f.size() - 16), std::string("01000000") + "02000000" + "0300000000000000" + "ffffffff");
  encodePRevoked(f, Ref{1, 2, 3}, kReasonOwnerFailed);
  CHECK_EQ(hex(f.data() + 32, 4), std::string("02000000"));
  encodePKvPut(f, 10, 9, 2, 5, true, Ref{2, 1, 7}, "n");
  CHECK_EQ(hex(f.data() + 16, f.size() - 16), std::string("0a00000000000000") + "0900000000000000" + "02000000" + "05000000" +
                                                  "01000000" + "00000000" + "02000000" + "01000000" + "0700000000000000" + "6e");
  encodeMemStatReply(f, 1, 4096, 3, 0, 7, 64, 0, 5);
  CHECK_EQ(hex(f.data() + 16, f.size() - 16), std::string("0010000000000000") + "03" + "00" + "07" + "00" + "00000000" +
                                                  "4000000000000000" + "0000000000000000" + "0500000000000000");
  encodeMemCreateReply(f, 2, 9, 5);
  CHECK_EQ(hex(f.data() + 16, f.size() - 16), std::string("09000000") + "00000000" + "0500000000000000");
  encodeMemMapReply(f, 3, 5, 0x3000, 0x1000, 0x2000, 1);
  CHECK_EQ(hex(f.data() + 16, f.size() - 16), std::string("0500000000000000") + "0030000000000000" + "0010000000000000" +
                                                  "0020000000000000" + "01" + "00" + "0000" + "00000000");
  f.start(op::DELIVER, 0);
  encodeDeliverDesc(f, DeliverDesc{2, 3, 0, 5, 4096, 64, 0, 7});
  CHECK_EQ(hex(f.data() + 16, f.size() - 16), std::string("0200") + "03" + "00" + "05" + "00" + "0000" + "0010000000000000" +
                                                  "4000000000000000" + "0000000000000000" + "0700000000000000");
  encodePStatReply(f, 2, 8, 1, 1);
  CHECK_EQ(hex(f.data() + 16, f.size() - 16), std::string("0800000000000000") + "01" + "01");
  std::vector<StatsLink> links{{false, true, 3, 1, 2, 3, 4, "ab"}};
  encodeStatsReply(f, 1, 7, 8, links);
  CHECK_EQ(hex(f.data() + 16, f.size() - 16), std::string("07000000") + "08000000" + "0100" + "00" + "01" + "03000000" +
                                                  "0100000000000000" + "0200000000000000" + "0300000000000000" +
                                                  "0400000000000000" + "0200" + "6162");
  // INTROSPECT: the golden reply of test/dashboard-introspect.test.ts (ring of 4, 10 records).
  InvocationRing ring(4);
  for (int i = 0; i < 10; i++) ring.record(kInvokerPeer, 1, 2, (uint64_t(1) << 32) + 42, 4, 0);
  uint64_t first = 0, count = 0;
  ring.window(9, &first, &count);
  CHECK_EQ(first, uint64_t(9));
  CHECK_EQ(count, uint64_t(1));
  ring.window(0, &first, &count);
  CHECK_EQ(first, uint64_t(6));
  CHECK_EQ(count, uint64_t(4));
  std::vector<IntrospectProc> procs{{4, 12345, 2, 3, "mine"}};
  encodeIntrospectReply(f, 7, IntrospectTotals{2, 3, 0, 5, 6, 1, 2}, procs, 9, 10, {ring.at(9)}, 1000);
  CHECK_EQ(hex(f.data(), f.size()), std::string("71000000") + "7f00" + "0000" + "07000000" + "0000" + "0000" + "02000000" +
                                        "03000000" + "00000000" + "05000000" + "06000000" + "01000000" + "02000000" + "0100" +
                                        "0100" + "0900000000000000" + "0a00000000000000" + "04000000" + "39300000" + "02000000" +
                                        "03000000" + "04" + "6d696e65" + "01" + "00" + "0000" + "01000000" + "02000000" +
                                        "04000000" + "2a00000001000000" + "e8030000");
}

// ---- cid table and resolve ---------------------------------------------------------------------

static void testCids() {
  // cids wrap at 2^32 without 0 and without taking a cid in use; a full space is ENOSPC
  // (ported from test/field-hostile-bounds.test.ts)
  ProcBase owner;
  owner.id = 1;
  CapTable space(&owner);
  auto target = [] { return std::make_shared<Proxy>(Ref{9, 9, 9}); };
  uint32_t a = 0, b = 0, c = 0;
  CHECK(!space.install(target(), 4, &a));
  CHECK(!space.install(target(), 4, &b));
  CHECK_EQ(a, 1u);
  CHECK_EQ(b, 2u);
  space.setNextCid(0xffffffffu);
  CHECK(!space.install(target(), 4, &c));
  CHECK_EQ(c, 0xffffffffu);
  CHECK(!space.install(target(), 4, &c));
  CHECK_EQ(c, 3u);  // skips 0, and 1 and 2 in use
  CHECK_EQ(space.install(target(), 4, &c).code, uint16_t(kNoSpc));
  CHECK(space.remove(a) != nullptr);
  CHECK(!space.install(target(), 4, &c));
  CHECK_EQ(c, 4u);  // the next cid, not the freed one
  CHECK_EQ(space.resolve(a, Kind::Any, 0, 0, nullptr).code, uint16_t(kBadCap));
  CHECK(space.remove(a) == nullptr);

  // entries are counted on the target per space
  auto t = target();
  uint32_t x = 0;
  ProcBase other;
  other.id = 2;
  CapTable space2(&other);
  CHECK(!space2.install(t, 10, &x));
  CHECK(!space2.install(t, 10, &x));
  CHECK_EQ(t->nEntries, uint64_t(2));
  CHECK_EQ(t->entriesOf(&other), 2u);
  space2.remove(x);
  CHECK_EQ(t->nEntries, uint64_t(1));
}

static void testResolveOrder() {
  ProcBase owner;
  owner.id = 1;
  CapTable space(&owner);
  auto mem = std::make_shared<Obj>(1, Kind::Memory);
  auto info = std::make_shared<MemInfo>();
  info->perms = kRead;
  info->size = 100;
  mem->mem = info;
  auto req = std::make_shared<Obj>(2, Kind::Request);
  uint32_t m = 0, q = 0;
  CHECK(!space.install(mem, 10, &m));
  CHECK(!space.install(req, 10, &q));
  std::shared_ptr<Target> out;
  CHECK_EQ(space.resolve(99, Kind::Memory, kWrite, 1000, &out).code, uint16_t(kBadCap));   // before everything
  CHECK_EQ(space.resolve(q, Kind::Memory, kWrite, 1000, &out).code, uint16_t(kType));      // before rights and range
  CHECK_EQ(space.resolve(m, Kind::Memory, kWrite, 1000, &out).code, uint16_t(kPerm));      // before range
  CHECK_EQ(space.resolve(m, Kind::Memory, kRead, 1000, &out).code, uint16_t(kRange));
  CHECK(!space.resolve(m, Kind::Memory, kRead, 100, &out));
  CHECK(out.get() == mem.get());
  mem->revoked = true;
  CHECK_EQ(space.resolve(m, Kind::Request, kWrite, 1000, &out).code, uint16_t(kRevoked));  // before type
  CHECK(!space.resolve(q, Kind::Any, 0, 0, &out));
}

// ---- the core behind a recording host ---------------------------------------------------------

struct Sent {
  ConnId c;
  std::string bytes;
};
class FakeHost : public Host {
 public:
  std::vector<Sent> sent;
  std::vector<ConnId> closed;
  std::map<uint64_t, std::function<void()>> timers;
  uint64_t nextTimer = 1;
  void send(ConnId c, const struct iovec* iov, int n) override {
    std::string s;
    for (int i = 0; i < n; i++) s.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    sent.push_back(Sent{c, s});
  }
  void sendWithFds(ConnId c, const struct iovec* iov, int n, const int*, int) override { send(c, iov, n); }
  int takeFd(ConnId) override { return -1; }
  void sendQuiet(ConnId c, const struct iovec* iov, int n) override { send(c, iov, n); }
  int attachQueue(ConnId, int*, uint32_t*) override { return 0; }
  void waitingForCredits(ConnId, bool) override {}
  uint64_t backlog(ConnId c) const override {
    auto it = backlogs.find(c);
    return it == backlogs.end() ? 0 : it->second;
  }
  std::map<ConnId, uint64_t> backlogs;
  void close(ConnId c, const std::string&) override { closed.push_back(c); }
  void setLinkInfo(ConnId, bool, uint32_t, const std::string&) override {}
  std::vector<LinkStats> linkStats() const override { return {}; }
  uint64_t setTimer(uint32_t, std::function<void()> fn) override {
    timers[nextTimer] = std::move(fn);
    return nextTimer++;
  }
  void cancelTimer(uint64_t id) override { timers.erase(id); }
  void log(LogLevel, const std::string&, const std::string&) override {}
  uint64_t nowMs() const override { return 0; }
  bool mayIntrospect(ConnId) const override { return introspect; }
  uint64_t loopMs() const override { return 0; }
  bool introspect = true;
  /** The last frame sent on `c`. */
  std::string last(ConnId c) const {
    for (size_t i = sent.size(); i-- > 0;)
      if (sent[i].c == c) return sent[i].bytes;
    return {};
  }
};

static uint16_t codeOf(const std::string& f) { return f.size() >= 16 ? ld16(reinterpret_cast<const uint8_t*>(f.data()) + 12) : 0xffff; }
static uint16_t opOf(const std::string& f) { return f.size() >= 16 ? ld16(reinterpret_cast<const uint8_t*>(f.data()) + 4) : 0xffff; }
static uint32_t u32At(const std::string& f, size_t o) { return ld32(reinterpret_cast<const uint8_t*>(f.data()) + o); }

static void call(Core* core, ConnId c, Frame& f) { core->processFrame(c, f.data(), f.size()); }

static uint32_t hello(Core* core, FakeHost& host, ConnId c, uint32_t features) {
  Frame f;
  f.start(op::HELLO, 1).u32(123).u32(features).str("t").finish();
  core->processHello(c, 4242, true, f.data(), f.size());
  std::string r = host.last(c);
  CHECK_EQ(opOf(r), uint16_t(op::REPLY));
  CHECK_EQ(r.size(), size_t(52));
  return u32At(r, 24);
}

static void testCore() {
  FakeHost host;
  CoreConfig cfg;
  cfg.id = 1;
  cfg.epoch = 5;
  cfg.limits.maxOutstandingDeliveries = 2;
  Core* core = newCore(&host, cfg);
  uint32_t p1 = hello(core, host, 10, kFeatureMemoryDescriptors);
  uint32_t p2 = hello(core, host, 11, 0);
  CHECK(p1 != p2);
  CHECK_EQ(u32At(host.last(10), 16), 1u);  // controller
  CHECK_EQ(u32At(host.last(10), 20), 5u);  // epoch
  CHECK_EQ(u32At(host.last(10), 40), 2u);  // credits

  Frame f;
  f.start(op::NUL, 2).finish();
  call(core, 10, f);
  CHECK_EQ(host.last(10), std::string("\x10\0\0\0\x7f\0\0\0\x02\0\0\0\0\0\0\0", 16));

  // Immediates in any order merge sorted; an overlap is EARGSET, beyond maxImmBytes ERANGE.
  f.start(op::REQUEST_CREATE, 20).u32(1).u16(0).u16(3);
  f.u32(8).u32(2).u8(1).u8(2).u32(0).u32(2).u8(3).u8(4).u32(4).u32(4).u32(0x05060708).finish();
  call(core, 10, f);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(0));
  uint32_t sorted = u32At(host.last(10), 16);
  f.start(op::REQUEST_DERIVE, 21).u32(sorted).u16(0).u16(1).u32(9).u32(1).u8(9).finish();
  call(core, 10, f);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(kArgSet));  // 9 is inside 8+2
  f.start(op::REQUEST_DERIVE, 22).u32(sorted).u16(0).u16(2).u32(12).u32(1).u8(9).u32(11).u32(2).u8(9).u8(9).finish();
  call(core, 10, f);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(kArgSet));  // 11+2 overlaps 12 (same call)
  f.start(op::REQUEST_DERIVE, 23).u32(sorted).u16(0).u16(2).u32(2).u32(2).u8(9).u8(9).u32(65535).u32(2).u8(9).u8(9).finish();
  call(core, 10, f);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(kRange));  // range before arguments-set
  f.start(op::REQUEST_DERIVE, 24).u32(sorted).u16(0).u16(1).u32(10).u32(1).u8(9).finish();
  call(core, 10, f);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(0));  // right after 8+2
  f.start(op::CAP_DROP, 25).u32(u32At(host.last(10), 16)).finish();
  call(core, 10, f);
  f.start(op::CAP_REVOKE, 26).u32(sorted).finish();
  call(core, 10, f);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(0));

  // A Request of process 1, published, got by process 2.
  f.start(op::REQUEST_CREATE, 3).u32(77).u16(0).u16(0).finish();
  call(core, 10, f);
  uint32_t req = u32At(host.last(10), 16);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(0));
  f.start(op::KV_PUT, 4).u32(req).str("svc").finish();
  call(core, 10, f);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(0));
  f.start(op::KV_GET, 5).str("svc").finish();
  call(core, 11, f);
  uint32_t got = u32At(host.last(11), 16);
  CHECK_EQ(codeOf(host.last(11)), uint16_t(0));
  f.start(op::KV_PUT, 6).u32(got).str("svc").finish();
  call(core, 11, f);
  CHECK_EQ(codeOf(host.last(11)), uint16_t(kExist));

  // Error order: a truncated args is EPROTO even with a bad cid (and closes that channel only).
  f.start(op::REQUEST_INVOKE, 7).u32(999).u16(3).finish();
  call(core, 11, f);
  CHECK_EQ(codeOf(host.last(11)), uint16_t(kProto));
  CHECK_EQ(host.closed.size(), size_t(1));
  CHECK_EQ(host.closed[0], ConnId(11));
  core->processClosed(11);
  uint32_t p3 = hello(core, host, 12, 0);
  (void)p3;
  f.start(op::KV_GET, 8).str("svc").finish();
  call(core, 12, f);
  got = u32At(host.last(12), 16);
  // bad cid: EBADCAP; wrong type: ETYPE (memory_stat of a Request); slot limit at merge: ERANGE
  f.start(op::REQUEST_INVOKE, 9).u32(999).u16(0).u16(0).finish();
  call(core, 12, f);
  CHECK_EQ(codeOf(host.last(12)), uint16_t(kBadCap));
  f.start(op::MEMORY_STAT, 10).u32(got).finish();
  call(core, 12, f);
  CHECK_EQ(codeOf(host.last(12)), uint16_t(kType));
  f.start(op::REQUEST_INVOKE, 11).u32(got).u16(1).u16(0).u16(64).u16(0).u32(got).finish();
  call(core, 12, f);
  CHECK_EQ(codeOf(host.last(12)), uint16_t(kRange));

  // Invoke: delivered to process 1 with an immediate; the invoker's REPLY comes once delivered.
  size_t before = host.sent.size();
  f.start(op::REQUEST_INVOKE, 12).u32(got).u16(0).u16(1).u32(0).u32(2).u8(0xab).u8(0xcd).finish();
  call(core, 12, f);
  CHECK_EQ(host.sent.size(), before + 2);
  CHECK_EQ(opOf(host.sent[before].bytes), uint16_t(op::DELIVER));
  CHECK_EQ(host.sent[before].c, ConnId(10));
  CHECK_EQ(u32At(host.sent[before].bytes, 16), 77u);  // tag
  CHECK_EQ(codeOf(host.sent[before + 1].bytes), uint16_t(0));
  // Second delivery uses the last credit; the third waits (its REPLY too) until an ACK.
  call(core, 12, f);
  before = host.sent.size();
  call(core, 12, f);
  CHECK_EQ(host.sent.size(), before);
  uint64_t prov = 0, inv = 0;
  core->queuedDeliveryBytes(p1, &prov, &inv);
  CHECK_EQ(prov, uint64_t(256 + 8 + 2));
  f.start(op::DELIVER_ACK, 0).u32(1).finish();
  call(core, 10, f);
  CHECK_EQ(host.sent.size(), before + 2);  // the queued DELIVER and its REPLY
  // Over-ACK: EPROTO with seq 0, and only that channel closes.
  f.start(op::DELIVER_ACK, 0).u32(3).finish();
  call(core, 10, f);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(kProto));
  CHECK_EQ(host.closed.back(), ConnId(10));
  core->processClosed(10);
  // The provider is gone: its Request is revoked for the getter.
  f.start(op::REQUEST_INVOKE, 13).u32(got).u16(0).u16(0).finish();
  call(core, 12, f);
  CHECK_EQ(codeOf(host.last(12)), uint16_t(kRevoked));
  f.start(op::KV_GET, 14).str("svc").finish();
  call(core, 12, f);
  CHECK_EQ(codeOf(host.last(12)), uint16_t(kNoEnt));
  core->processClosed(12);
  CHECK_EQ(core->objectCount(), uint64_t(0));
  delete core;
}

// ---- names through an external store (host.h NameStore: etcd in cluster mode) --------------------

/** How many frames with `op` were sent on `c` from index `from` on. */
static size_t countOp(const FakeHost& host, ConnId c, uint16_t op, size_t from = 0) {
  size_t n = 0;
  for (size_t i = from; i < host.sent.size(); i++) n += host.sent[i].c == c && opOf(host.sent[i].bytes) == op;
  return n;
}

class FakeStore : public NameStore {
 public:
  struct Op {
    std::string name;
    NameRecord r;
    Answer cb;
  };
  std::vector<Op> puts, gets, removes;
  void put(const std::string& name, const NameRecord& r, Answer cb) override { puts.push_back(Op{name, r, std::move(cb)}); }
  void get(const std::string& name, Answer cb) override { gets.push_back(Op{name, NameRecord{}, std::move(cb)}); }
  void remove(const std::string& name, const NameRecord& r) override { removes.push_back(Op{name, r, nullptr}); }
};

static void testNameStore() {
  FakeHost host;
  FakeStore store;
  CoreConfig cfg;
  cfg.id = 1;
  cfg.epoch = 5;
  cfg.names = &store;
  Core* core = newCore(&host, cfg);
  uint32_t p1 = hello(core, host, 10, 0);
  uint32_t p2 = hello(core, host, 11, 0);
  Frame f;
  f.start(op::REQUEST_CREATE, 1).u32(77).u16(0).u16(0).finish();
  call(core, 10, f);
  uint32_t req = u32At(host.last(10), 16);

  // kv_put goes to the store; the Process is answered when it answers
  size_t before = host.sent.size();
  f.start(op::KV_PUT, 2).u32(req).str("svc").finish();
  call(core, 10, f);
  CHECK_EQ(host.sent.size(), before);
  CHECK_EQ(store.puts.size(), size_t(1));
  CHECK_EQ(store.puts[0].name, std::string("svc"));
  CHECK_EQ(store.puts[0].r.origin, 1u);
  CHECK_EQ(store.puts[0].r.originEpoch, 5u);
  CHECK_EQ(store.puts[0].r.ownerProc, p1);
  CHECK_EQ(store.puts[0].r.refController, 1u);
  CHECK_EQ(store.puts[0].r.refEpoch, 5u);
  // a second put of the same name while the first is in flight: EBUSY at once
  f.start(op::KV_PUT, 3).u32(req).str("svc").finish();
  call(core, 10, f);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(kBusy));
  NameRecord stored = store.puts[0].r;
  stored.revision = 7;
  store.puts[0].cb(0, "", stored);
  CHECK_EQ(codeOf(host.last(10)), uint16_t(0));
  CHECK_EQ(host.last(10).size(), size_t(16));  // the REPLY of seq 2
  CHECK_EQ(u32At(host.last(10), 8), 2u);
  // another local Process: EEXIST without asking the store
  f.start(op::REQUEST_CREATE, 4).u32(78).u16(0).u16(0).finish();
  call(core, 11, f);
  uint32_t req2 = u32At(host.last(11), 16);
  f.start(op::KV_PUT, 5).u32(req2).str("svc").finish();
  call(core, 11, f);
  CHECK_EQ(codeOf(host.last(11)), uint16_t(kExist));
  CHECK_EQ(store.puts.size(), size_t(1));

  // kv_get: answered from the store's record (a revocation-tree child of the local object)
  f.start(op::KV_GET, 6).str("svc").finish();
  call(core, 11, f);
  CHECK_EQ(store.gets.size(), size_t(1));
  store.gets[0].cb(0, "", stored);
  CHECK_EQ(codeOf(host.last(11)), uint16_t(0));
  CHECK_EQ(u32At(host.last(11), 8), 6u);
  // absent; the store's errors pass through typed; a record of this Controller's earlier epoch is absent
  f.start(op::KV_GET, 7).str("nope").finish();
  call(core, 11, f);
  store.gets[1].cb(kNoEnt, "no cap published as 'nope'", NameRecord{});
  CHECK_EQ(codeOf(host.last(11)), uint16_t(kNoEnt));
  f.start(op::KV_GET, 8).str("svc").finish();
  call(core, 11, f);
  NameRecord old = stored;
  old.originEpoch = 4;
  old.refEpoch = 4;
  store.gets[2].cb(0, "", old);
  CHECK_EQ(codeOf(host.last(11)), uint16_t(kNoEnt));
  // at most 64 in flight per Process: EAGAIN beyond; an ETIMEDOUT answer reaches the Process
  size_t g0 = store.gets.size();
  for (uint32_t i = 0; i < 64; i++) {
    f.start(op::KV_GET, 100 + i).str("svc").finish();
    call(core, 11, f);
  }
  CHECK_EQ(store.gets.size(), g0 + 64);
  f.start(op::KV_GET, 200).str("svc").finish();
  call(core, 11, f);
  CHECK_EQ(codeOf(host.last(11)), uint16_t(kAgain));
  CHECK_EQ(store.gets.size(), g0 + 64);
  for (size_t i = g0; i < store.gets.size(); i++) store.gets[i].cb(kTimedOut, "etcd did not answer", NameRecord{});
  CHECK_EQ(codeOf(host.last(11)), uint16_t(kTimedOut));
  // a name longer than 1024 bytes (few characters: continuation bytes) is EINVAL, not stored
  f.start(op::KV_PUT, 9).u32(req2).str("a" + std::string(1100, '\x80')).finish();
  call(core, 11, f);
  CHECK_EQ(codeOf(host.last(11)), uint16_t(kInval));
  CHECK_EQ(store.puts.size(), size_t(1));

  // a publisher that goes while its put is in flight: the stored name is removed again
  f.start(op::KV_PUT, 10).u32(req2).str("svc2").finish();
  call(core, 11, f);
  CHECK_EQ(store.puts.size(), size_t(2));
  core->processClosed(11);
  NameRecord r2 = store.puts[1].r;
  store.puts[1].cb(0, "", r2);
  CHECK_EQ(store.removes.size(), size_t(1));
  CHECK_EQ(store.removes[0].name, std::string("svc2"));
  CHECK_EQ(store.removes[0].r.ownerProc, p2);
  // the publisher goes: its name is removed from the store (only its own value)
  core->processClosed(10);
  CHECK_EQ(store.removes.size(), size_t(2));
  CHECK_EQ(store.removes[1].name, std::string("svc"));
  CHECK_EQ(store.removes[1].r.ownerProc, p1);
  CHECK_EQ(core->objectCount(), uint64_t(0));

  // A name of a Controller this one has no link to yet (it is joining: its lease lives, or
  // the store would not hold the name): the KV_GET waits for the link instead of answering a
  // cap that fails "not connected"; without a link in kPeerJoinWaitMs it is EREVOKED.
  uint32_t p3 = hello(core, host, 12, 0);
  (void)p3;
  NameRecord remote;
  remote.origin = remote.refController = 3;
  remote.originEpoch = remote.refEpoch = 2;
  remote.refId = 40;
  remote.revision = 9;
  size_t timers0 = host.timers.size();
  before = host.sent.size();
  f.start(op::KV_GET, 20).str("far").finish();
  call(core, 12, f);
  store.gets.back().cb(0, "", remote);
  CHECK_EQ(host.sent.size(), before);  // not answered yet
  CHECK_EQ(host.timers.size(), timers0 + 1);
  const ConnId P3 = 50;
  CHECK(core->peerUp(P3, 3, 2));
  CHECK_EQ(host.timers.size(), timers0);    // the wait's timer is cancelled
  CHECK_EQ(countOp(host, P3, op::P_REVTREE, before), size_t(1));  // the getter's child, made by its owner
  // the link is to an older epoch than the name's: still waiting; the timer fires: EREVOKED
  remote.originEpoch = remote.refEpoch = 3;
  f.start(op::KV_GET, 21).str("far2").finish();
  call(core, 12, f);
  store.gets.back().cb(0, "", remote);
  CHECK_EQ(host.timers.size(), timers0 + 1);
  auto fire = std::move(host.timers.rbegin()->second);
  host.timers.erase(std::prev(host.timers.end()));
  fire();
  CHECK_EQ(codeOf(host.last(12)), uint16_t(kRevoked));
  CHECK_EQ(u32At(host.last(12), 8), 21u);
  // a name of an epoch older than the link's: absent (its Controller restarted)
  remote.originEpoch = remote.refEpoch = 1;
  f.start(op::KV_GET, 22).str("far3").finish();
  call(core, 12, f);
  store.gets.back().cb(0, "", remote);
  CHECK_EQ(codeOf(host.last(12)), uint16_t(kNoEnt));
  core->processClosed(12);
  delete core;
}

// ---- copies across Controllers: zero-copy receive (peerSinkOpen/Done) and drained() ----------

static Ref refAt(const std::string& f, size_t o) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(f.data()) + o;
  Ref r;
  r.controller = ld32(p);
  r.epoch = ld32(p + 4);
  std::memcpy(&r.id, p + 8, 8);
  return r;
}

/** A recording host whose connections carry fds: `incoming` is what takeFd hands out. */
class FdHost : public FakeHost {
 public:
  std::deque<int> incoming;
  struct FdFrame {
    ConnId c;
    std::string bytes;
    int fd;  // a dup of the fd sent (ours to close)
  };
  std::vector<FdFrame> withFds;
  int takeFd(ConnId) override {
    if (incoming.empty()) return -1;
    int fd = incoming.front();
    incoming.pop_front();
    return fd;
  }
  void sendWithFds(ConnId c, const struct iovec* iov, int n, const int* fds, int nfds) override {
    std::string s;
    for (int i = 0; i < n; i++) s.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    sent.push_back(Sent{c, s});
    withFds.push_back(FdFrame{c, s, nfds == 1 ? dup(fds[0]) : -1});
  }
};

static int openFds() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d)) n++;
    closedir(d);
  }
  return n;
}

static bool fdOpen(int fd) { return fcntl(fd, F_GETFD) >= 0; }

static Frame& memCreate(Frame& f, uint32_t seq, uint8_t flags, uint32_t id, uint64_t off, uint64_t size, uint64_t regionSize,
                        uint8_t perms = kRW) {
  return f.start(op::MEMORY_CREATE, seq).u8(kShared).u8(perms).u8(flags).u8(0).u32(id).u64(off).u64(size).u64(regionSize).finish();
}

static void testPeerCopies() {
  FdHost host;
  CoreConfig cfg;
  cfg.id = 1;
  cfg.epoch = 5;
  cfg.peerIds = {2};
  Core* core = newCore(&host, cfg);
  const ConnId P = 50, C = 10;
  CHECK(core->peerUp(P, 2, 1));
  hello(core, host, C, kFeatureMemoryDescriptors);  // kernel pid 4242

  // A sealed shared region of the Process (its fd goes to the Controller with MEMORY_CREATE).
  const size_t kSize = 1 << 20;
  int fd = region::create(kSize, region::kOwnerSeals);
  CHECK(fd >= 0);
  auto* mine = static_cast<uint8_t*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  CHECK(mine != MAP_FAILED);
  host.incoming.push_back(fd);  // the core owns it now
  Frame f;
  call(core, C, memCreate(f, 2, kMemCreateFd, 1, 0, kSize, kSize));
  CHECK_EQ(codeOf(host.last(C)), uint16_t(0));
  uint32_t memCid = u32At(host.last(C), 16);
  // Published: the name goes to the peer with the object's ref.
  f.start(op::KV_PUT, 3).u32(memCid).str("m").finish();
  call(core, C, f);
  CHECK_EQ(opOf(host.last(P)), uint16_t(op::P_KV_PUT));
  const Ref ref = refAt(host.last(P), 16 + 32);
  CHECK_EQ(ref.controller, 1u);

  // A P_MEM_WRITE of 20000 bytes at 100: its payload goes to the mapping at 100.
  const size_t n = 20000;
  std::vector<uint8_t> head(kPeerSinkPeekBytes, 0xab);
  auto headOf = [&](uint32_t seq, const Ref& r, uint64_t off, uint64_t total, size_t len) {
    Frame h;
    encodePMemWriteHead(h, seq, r, off, total, len);
    std::memcpy(head.data(), h.data(), h.size());
    return h.size();
  };
  Core::PeerSink sink;
  CHECK_EQ(headOf(77, ref, 100, 1000, n), size_t(48));
  CHECK(core->peerSinkOpen(P, head.data(), head.size(), 48 + n, &sink));
  CHECK_EQ(sink.headBytes, size_t(48));
  Core::PeerSink second;
  CHECK(!core->peerSinkOpen(P, head.data(), head.size(), 48 + n, &second));  // one at a time per link
  std::memset(sink.dst, 0x5c, n);
  CHECK_EQ(mine[99], uint8_t(0));
  CHECK_EQ(mine[100], uint8_t(0x5c));
  CHECK_EQ(mine[100 + n - 1], uint8_t(0x5c));
  CHECK_EQ(mine[100 + n], uint8_t(0));
  size_t before = host.sent.size();
  core->peerSinkDone(P, false);
  CHECK_EQ(host.sent.size(), before + 1);
  CHECK_EQ(opOf(host.last(P)), uint16_t(op::REPLY));
  CHECK_EQ(u32At(host.last(P), 8), 77u);
  CHECK_EQ(codeOf(host.last(P)), uint16_t(0));
  core->peerSinkDone(P, false);  // nothing open: nothing sent
  CHECK_EQ(host.sent.size(), before + 1);
  // A fault (truncated mapping) answers EFAULT.
  headOf(78, ref, 0, n, n);
  CHECK(core->peerSinkOpen(P, head.data(), head.size(), 48 + n, &sink));
  core->peerSinkDone(P, true);
  CHECK_EQ(codeOf(host.last(P)), uint16_t(kFault));
  // A hostile peer writes nowhere outside the Memory: every bound declines (the frame then
  // comes whole and is answered with its error, as before).
  headOf(79, ref, kSize - 10, kSize, n);
  CHECK(!core->peerSinkOpen(P, head.data(), head.size(), 48 + n, &sink));       // past the end
  headOf(79, ref, ~uint64_t(0) - 5, kSize, n);
  CHECK(!core->peerSinkOpen(P, head.data(), head.size(), 48 + n, &sink));       // offset wraps
  headOf(79, ref, 0, kSize + 1, n);
  CHECK(!core->peerSinkOpen(P, head.data(), head.size(), 48 + n, &sink));       // total beyond size
  headOf(79, Ref{1, 5, 999999}, 0, n, n);
  CHECK(!core->peerSinkOpen(P, head.data(), head.size(), 48 + n, &sink));       // no such object
  headOf(79, ref, 0, n, n);
  CHECK(!core->peerSinkOpen(P + 1, head.data(), head.size(), 48 + n, &sink));   // not a peer link
  CHECK(!core->peerSinkOpen(P, head.data(), 40, 48 + n, &sink));                // short head
  Frame other;
  other.start(op::P_NULL, 80).finish();
  std::memcpy(head.data(), other.data(), other.size());
  CHECK(!core->peerSinkOpen(P, head.data(), head.size(), 48 + n, &sink));       // another op
  // The declined frame, whole: ERANGE, and the mapping's bytes past the end untouched.
  std::vector<uint8_t> whole(48 + 16, 0x77);
  Frame h;
  encodePMemWriteHead(h, 81, ref, kSize - 10, kSize, 16);
  std::memcpy(whole.data(), h.data(), h.size());
  core->peerFrame(P, whole.data(), whole.size());
  CHECK_EQ(codeOf(host.last(P)), uint16_t(kRange));
  CHECK_EQ(mine[kSize - 10], uint8_t(0));
  // A read-only view of it: declined, then EPERM.
  f.start(op::MEMORY_DIMINISH, 4).u32(memCid).u8(kWrite).u8(0).u16(0).u64(0).u64(4096).finish();
  call(core, C, f);
  CHECK_EQ(codeOf(host.last(C)), uint16_t(0));
  f.start(op::KV_PUT, 5).u32(u32At(host.last(C), 16)).str("ro").finish();
  call(core, C, f);
  const Ref roRef = refAt(host.last(P), 16 + 32);
  headOf(82, roRef, 0, n, n);
  CHECK(!core->peerSinkOpen(P, head.data(), head.size(), 48 + n, &sink));

  // drained(): a copy to a peer whose link has more than maxOutboundBytes unsent waits, and
  // goes on when the link drains. Source: served Memory of the Process (MEM_READ to it).
  f.start(op::MEMORY_CREATE, 6).u8(kServed).u8(kRW).u16(0).u32(0).u64(0).u64(kSize).u64(9).finish();
  call(core, C, f);
  CHECK_EQ(codeOf(host.last(C)), uint16_t(0));
  uint32_t src = u32At(host.last(C), 16);
  encodePKvPut(f, 1, 1, 2, 1, false, Ref{2, 1, 99}, "far");
  core->peerFrame(P, f.data(), f.size());
  f.start(op::KV_GET, 7).str("far").finish();
  call(core, C, f);
  // a remote name: the getter's cap is a revtree child made at the owner (P_REVTREE)
  CHECK_EQ(opOf(host.last(P)), uint16_t(op::P_REVTREE));
  encodeRefReply(f, u32At(host.last(P), 8), Ref{2, 1, 100});
  core->peerFrame(P, f.data(), f.size());
  CHECK_EQ(u32At(host.last(C), 8), 7u);
  CHECK_EQ(codeOf(host.last(C)), uint16_t(0));
  uint32_t far = u32At(host.last(C), 16);
  host.backlogs[P] = cfg.limits.maxOutboundBytes + 1;
  before = host.sent.size();
  f.start(op::MEMORY_COPY, 8).u32(src).u32(far).finish();
  call(core, C, f);
  CHECK_EQ(countOp(host, C, op::MEM_READ, before), size_t(0));  // waiting for the link
  host.backlogs[P] = 0;
  core->drained(P);
  CHECK_EQ(countOp(host, C, op::MEM_READ, before), size_t(4));  // 1 MiB in 4 chunks of 256 KiB
  // Answer the reads; each becomes a P_MEM_WRITE; the peer's REPLYs finish the copy.
  std::vector<uint32_t> reads;
  for (size_t i = before; i < host.sent.size(); i++)
    if (host.sent[i].c == C && opOf(host.sent[i].bytes) == op::MEM_READ) reads.push_back(u32At(host.sent[i].bytes, 8));
  std::vector<uint8_t> reply(16 + (256 << 10), 0x33);
  for (uint32_t seq : reads) {
    Frame r;
    r.start(op::REPLY, seq).finish(256 << 10);
    std::memcpy(reply.data(), r.data(), 16);
    size_t at = host.sent.size();
    core->processFrame(C, reply.data(), reply.size());
    CHECK_EQ(countOp(host, P, op::P_MEM_WRITE, at), size_t(1));
  }
  std::vector<uint32_t> writes;
  for (size_t i = before; i < host.sent.size(); i++)
    if (host.sent[i].c == P && opOf(host.sent[i].bytes) == op::P_MEM_WRITE) writes.push_back(u32At(host.sent[i].bytes, 8));
  CHECK_EQ(writes.size(), size_t(4));
  for (uint32_t seq : writes) {
    Frame r;
    r.start(op::REPLY, seq).finish();
    core->peerFrame(P, r.data(), r.size());
  }
  CHECK_EQ(opOf(host.last(C)), uint16_t(op::REPLY));
  CHECK_EQ(u32At(host.last(C), 8), 8u);
  CHECK_EQ(codeOf(host.last(C)), uint16_t(0));

  // A copy waiting on a link that closes fails (no such peer) instead of hanging.
  host.backlogs[P] = cfg.limits.maxOutboundBytes + 1;
  before = host.sent.size();
  f.start(op::MEMORY_COPY, 9).u32(src).u32(far).finish();
  call(core, C, f);
  CHECK_EQ(host.sent.size(), before);
  core->peerClosed(P);
  bool answered = false;
  for (size_t i = before; i < host.sent.size(); i++)
    if (host.sent[i].c == C && opOf(host.sent[i].bytes) == op::REPLY && u32At(host.sent[i].bytes, 8) == 9u)
      answered = codeOf(host.sent[i].bytes) != 0;
  CHECK(answered);

  core->processClosed(C);
  delete core;
  munmap(mine, kSize);
}

// ---- shared Memory by fd (memory.cc): registration, MEMORY_MAP, regions over 4 GiB, cleanup ----

static void testMemoryFds() {
  int fdsBefore = openFds();
  FdHost host;
  CoreConfig cfg;
  cfg.id = 1;
  cfg.epoch = 1;
  Core* core = newCore(&host, cfg);
  hello(core, host, 20, kFeatureMemoryDescriptors);  // the owner (unix, pid 4242)
  hello(core, host, 21, 0);                          // an adaptor (unix)
  {
    Frame h;
    h.start(op::HELLO, 1).u32(1).u32(0).str("tcp").finish();
    core->processHello(22, 0, false, h.data(), h.size());  // over tcp: no pid, no fds
  }
  Frame f;
  const uint64_t kSize = 3 * 4096;

  // A sealed memfd registers; its fd is the Controller's now; a part of it by id, no fd.
  int fd = region::create(kSize, region::kOwnerSeals);
  CHECK(fd >= 0);
  host.incoming.push_back(fd);
  call(core, 20, memCreate(f, 2, kMemCreateFd, 1, 0, kSize, kSize));
  std::string r = host.last(20);
  CHECK_EQ(codeOf(r), uint16_t(0));
  CHECK_EQ(r.size(), size_t(32));
  uint32_t whole = u32At(r, 16);
  uint64_t key = ld64(reinterpret_cast<const uint8_t*>(r.data()) + 24);
  CHECK(key != 0);
  CHECK(host.incoming.empty());
  call(core, 20, memCreate(f, 3, 0, 1, 4096, 4096, kSize));
  r = host.last(20);
  CHECK_EQ(codeOf(r), uint16_t(0));
  uint32_t part = u32At(r, 16);
  CHECK_EQ(ld64(reinterpret_cast<const uint8_t*>(r.data()) + 24), key);
  // Beyond the region: ERANGE; an unknown id without fd: ENOENT; the same id with an fd again: EEXIST (that fd closed).
  call(core, 20, memCreate(f, 4, 0, 1, 8192, 8192, kSize));
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kRange));
  call(core, 20, memCreate(f, 5, 0, 2, 0, 4096, kSize));
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kNoEnt));
  int again = region::create(kSize, region::kOwnerSeals);
  host.incoming.push_back(again);
  call(core, 20, memCreate(f, 6, kMemCreateFd, 1, 0, kSize, kSize));
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kExist));
  CHECK(!fdOpen(again));

  // Refused fds, each closed: unsealed memfd (EINVAL), plain file and pipe (EBADF), a size
  // that is not the region's (EINVAL), a read-only fd of a sealed memfd (EBADF).
  int unsealed = region::create(4096, 0);
  host.incoming.push_back(unsealed);
  call(core, 20, memCreate(f, 7, kMemCreateFd, 3, 0, 4096, 4096));
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kInval));
  CHECK(!fdOpen(unsealed));
  char tmpl[] = "/tmp/fractos-core-test-XXXXXX";
  int file = mkstemp(tmpl);
  CHECK(file >= 0);
  unlink(tmpl);
  CHECK_EQ(ftruncate(file, 4096), 0);
  host.incoming.push_back(file);
  call(core, 20, memCreate(f, 8, kMemCreateFd, 4, 0, 4096, 4096));
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kBadFd));
  CHECK(!fdOpen(file));
  int pipefd[2];
  CHECK_EQ(pipe(pipefd), 0);
  host.incoming.push_back(pipefd[0]);
  call(core, 20, memCreate(f, 9, kMemCreateFd, 5, 0, 4096, 4096));
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kBadFd));
  CHECK(!fdOpen(pipefd[0]));
  close(pipefd[1]);
  int sized = region::create(4096, region::kOwnerSeals);
  host.incoming.push_back(sized);
  call(core, 20, memCreate(f, 10, kMemCreateFd, 6, 0, 4096, 8192));
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kInval));
  CHECK(!fdOpen(sized));
  int rw = region::create(4096, region::kOwnerSeals);
  int ro = region::reopenReadOnly(rw);
  close(rw);
  host.incoming.push_back(ro);
  call(core, 20, memCreate(f, 11, kMemCreateFd, 7, 0, 4096, 4096));
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kBadFd));
  CHECK(!fdOpen(ro));
  // tcp: EPERM (an fd said to be attached and none there changes nothing: no pid, no fds).
  call(core, 22, memCreate(f, 2, kMemCreateFd, 1, 0, 4096, 4096));
  CHECK_EQ(codeOf(host.last(22)), uint16_t(kPerm));
  CHECK(host.closed.empty());

  // The seal: the owner cannot shrink (nor grow) its region.
  {
    int own = region::create(4096, region::kOwnerSeals);
    CHECK(ftruncate(own, 0) != 0 && errno == EPERM);
    CHECK(ftruncate(own, 8192) != 0 && errno == EPERM);
    close(own);
  }

  // MEMORY_STAT: region key, mappable only for the whole region.
  f.start(op::MEMORY_STAT, 12).u32(whole).finish();
  call(core, 20, f);
  r = host.last(20);
  CHECK_EQ(r.size(), size_t(16 + 40));
  CHECK_EQ(uint8_t(r[26]), uint8_t(kMemLocal | kMemSelf | kMemMappable));
  CHECK_EQ(ld64(reinterpret_cast<const uint8_t*>(r.data()) + 48), key);
  f.start(op::MEMORY_STAT, 13).u32(part).finish();
  call(core, 20, f);
  r = host.last(20);
  CHECK_EQ(uint8_t(r[26]), uint8_t(kMemLocal | kMemSelf));
  CHECK_EQ(ld64(reinterpret_cast<const uint8_t*>(r.data()) + 32), uint64_t(4096));

  // MEMORY_MAP: the owner's whole RW cap gets a read-write fd of the same memfd.
  f.start(op::MEMORY_MAP, 14).u32(whole).finish();
  call(core, 20, f);
  CHECK_EQ(host.withFds.size(), size_t(1));
  CHECK_EQ(codeOf(host.withFds.back().bytes), uint16_t(0));
  CHECK_EQ(host.withFds.back().bytes.size(), size_t(16 + 40));
  int got = host.withFds.back().fd;
  CHECK((fcntl(got, F_GETFL) & O_ACCMODE) == O_RDWR);
  auto* m = static_cast<uint8_t*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, got, 0));
  CHECK(m != MAP_FAILED);
  m[4096] = 0x5a;  // seen through the Controller below
  // A read-only whole view (WRITE dropped): a read-only fd, which cannot be mapped writable.
  f.start(op::MEMORY_DIMINISH, 15).u32(whole).u8(kWrite).u8(0).u16(0).u64(0).u64(kSize).finish();
  call(core, 20, f);
  uint32_t roWhole = u32At(host.last(20), 16);
  f.start(op::MEMORY_MAP, 16).u32(roWhole).finish();
  call(core, 20, f);
  CHECK_EQ(codeOf(host.withFds.back().bytes), uint16_t(0));
  CHECK_EQ(uint8_t(host.withFds.back().bytes[48]), uint8_t(kRead));
  int rofd = host.withFds.back().fd;
  CHECK((fcntl(rofd, F_GETFL) & O_ACCMODE) == O_RDONLY);
  CHECK(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, rofd, 0) == MAP_FAILED && errno == EACCES);
  void* rom = mmap(nullptr, kSize, PROT_READ, MAP_SHARED, rofd, 0);
  CHECK(rom != MAP_FAILED);
  CHECK_EQ(static_cast<uint8_t*>(rom)[4096], uint8_t(0x5a));
  CHECK(mprotect(rom, kSize, PROT_READ | PROT_WRITE) != 0);
  munmap(rom, kSize);
  close(rofd);
  // A part of a region not shared whole: EPERM, no fd; a write-only cap: EPERM.
  size_t nFds = host.withFds.size();
  f.start(op::MEMORY_MAP, 17).u32(part).finish();
  call(core, 20, f);
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kPerm));
  f.start(op::MEMORY_DIMINISH, 18).u32(whole).u8(kRead).u8(0).u16(0).u64(0).u64(kSize).finish();
  call(core, 20, f);
  uint32_t woWhole = u32At(host.last(20), 16);
  f.start(op::MEMORY_MAP, 19).u32(woWhole).finish();
  call(core, 20, f);
  CHECK_EQ(codeOf(host.last(20)), uint16_t(kPerm));
  CHECK_EQ(host.withFds.size(), nFds);

  // A region shared whole: a part maps (the fd of the whole region, the view's offset).
  int shared = region::create(kSize, region::kOwnerSeals);
  host.incoming.push_back(shared);
  call(core, 20, memCreate(f, 20, kMemCreateFd | kMemCreateShareWhole, 8, 4096, 4096, kSize));
  uint32_t sharedPart = u32At(host.last(20), 16);
  f.start(op::MEMORY_MAP, 21).u32(sharedPart).finish();
  call(core, 20, f);
  CHECK_EQ(codeOf(host.withFds.back().bytes), uint16_t(0));
  CHECK_EQ(ld64(reinterpret_cast<const uint8_t*>(host.withFds.back().bytes.data()) + 24), kSize);          // regionSize
  CHECK_EQ(ld64(reinterpret_cast<const uint8_t*>(host.withFds.back().bytes.data()) + 32), uint64_t(4096)); // regionOffset
  close(host.withFds.back().fd);

  // A region over 4 GiB (sparse: a few pages touched): copies at 4 GiB + 4096 both ways.
  const uint64_t kBig = (uint64_t(5) << 30);
  int big = region::create(kBig, region::kOwnerSeals);
  CHECK(big >= 0);
  int bigMine = dup(big);
  host.incoming.push_back(big);
  call(core, 20, memCreate(f, 22, kMemCreateFd, 9, (uint64_t(4) << 30) + 4096, 4096, kBig));
  CHECK_EQ(codeOf(host.last(20)), uint16_t(0));
  uint32_t far = u32At(host.last(20), 16);
  f.start(op::MEMORY_COPY, 23).u32(part).u32(far).finish();  // part = bytes [4096, 8192) of region 1: 0x5a first
  call(core, 20, f);
  CHECK_EQ(codeOf(host.last(20)), uint16_t(0));
  {
    auto* b = static_cast<uint8_t*>(mmap(nullptr, kBig, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, bigMine, 0));
    CHECK(b != MAP_FAILED);
    CHECK_EQ(b[(uint64_t(4) << 30) + 4096], uint8_t(0x5a));
    b[(uint64_t(4) << 30) + 4097] = 0x77;
    munmap(b, kBig);
  }
  f.start(op::MEMORY_COPY, 24).u32(far).u32(part).finish();
  call(core, 20, f);
  CHECK_EQ(codeOf(host.last(20)), uint16_t(0));
  CHECK_EQ(m[4097], uint8_t(0x77));
  struct stat st;
  CHECK_EQ(fstat(bigMine, &st), 0);
  CHECK(uint64_t(st.st_blocks) * 512 <= 64 * 4096);  // sparse: a few pages
  close(bigMine);
  // The Controller's region fds are bounded by half its RLIMIT_NOFILE: ENOSPC beyond, the fd closed.
  {
    struct rlimit saved;
    CHECK_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
    int64_t held = Region::openFds.load();
    struct rlimit low = saved;
    low.rlim_cur = rlim_t(2 * (held + 2));  // room for two more regions
    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
    uint16_t codes[3];
    for (uint32_t i = 0; i < 3; i++) {
      int rfd = region::create(4096, region::kOwnerSeals);
      host.incoming.push_back(rfd);
      call(core, 20, memCreate(f, 30 + i, kMemCreateFd, 40 + i, 0, 4096, 4096));
      codes[i] = codeOf(host.last(20));
      if (codes[i] != 0) CHECK(!fdOpen(rfd));
    }
    CHECK_EQ(codes[0], uint16_t(0));
    CHECK_EQ(codes[1], uint16_t(0));
    CHECK_EQ(codes[2], uint16_t(kNoSpc));
    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  }
  // A bad or short body: EPROTO closes the channel (the fd said to be there is not).
  call(core, 21, memCreate(f, 2, kMemCreateFd, 1, 0, 4096, 4096));
  CHECK_EQ(codeOf(host.last(21)), uint16_t(kProto));
  CHECK_EQ(host.closed.back(), ConnId(21));
  core->processClosed(21);

  munmap(m, kSize);
  close(got);
  // The owner goes: its Memory objects are revoked and collected, every region fd closed.
  core->processClosed(20);
  core->processClosed(22);
  CHECK_EQ(core->objectCount(), uint64_t(0));
  CHECK_EQ(openFds(), fdsBefore);
  delete core;
}

int main() {
  testWire();
  testCids();
  testResolveOrder();
  testCore();
  testNameStore();
  testPeerCopies();
  testMemoryFds();
  std::printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}

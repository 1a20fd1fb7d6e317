// The wire format of docs/protocol.md: header, error codes, ops, the bounded reader, the
// frame writer, `args`, and one encoder or decoder per op body that the core sends or reads.
// Shared by both sides of every channel kind (Process channels and peer links); golden
// tests: controller/src/test/wire_test.cc (the same bytes as test/protocol.test.ts).
// No I/O, no exceptions.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace fractos {

constexpr size_t kHeaderBytes = 16;
constexpr size_t kRefBytes = 16;
/** Bytes a queued invocation counts beyond its arguments (libfractos/protocol.ts). */
constexpr uint64_t kQueuedDeliveryOverheadBytes = 256;
/** Data chunk of memory copies (bytes) and chunks of one copy in flight. */
constexpr uint64_t kCopyChunkBytes = 256 * 1024;
constexpr int kCopyWindow = 8;
/** Names one Process may publish at once. */
constexpr size_t kMaxNamesPerProcess = 1024;
/** Longest error message in a REPLY (bytes). */
constexpr size_t kMaxErrorMessageBytes = 512;

/** Wire error codes (libfractos/errors.ts, append-only). */
enum Code : uint16_t {
  kOk = 0, kBadCap = 1, kRevoked = 2, kPerm = 3, kRange = 4, kArgSet = 5, kProto = 6, kDisconnected = 7,
  kType = 8, kNoSpc = 9, kAgain = 10, kNoEnt = 11, kExist = 12, kInval = 13, kIo = 14, kNoDev = 15,
  kTimedOut = 16, kNotLocal = 17, kBusy = 18, kNotSup = 19, kFault = 20, kAccess = 26, kBadFd = 31,
};

/** Name of a wire code ("EBADCAP"), for logs. */
const char* codeName(uint16_t code);

/** An error: a wire code (0 = none) and a message (no "CODE: " prefix). */
struct Err {
  uint16_t code = kOk;
  std::string msg;
  Err() = default;
  Err(uint16_t c, std::string m) : code(c), msg(std::move(m)) {}
  explicit operator bool() const { return code != kOk; }
};

namespace op {
enum : uint16_t {
  REPLY = 0x7f,
  HELLO = 0x01, NUL = 0x02, STATS = 0x03, INTROSPECT = 0x04,
  MEMORY_CREATE = 0x10, MEMORY_DIMINISH = 0x11, MEMORY_COPY = 0x12, MEMORY_STAT = 0x13, MEMORY_MAP = 0x14,
  REQUEST_CREATE = 0x20, REQUEST_DERIVE = 0x21, REQUEST_INVOKE = 0x22, REQUEST_INVOKE_QUIET = 0x23,
  CAP_REVTREE = 0x30, CAP_REVOKE = 0x31, CAP_DROP = 0x32,
  MONITOR_DELEGATE = 0x40, MONITOR_RECEIVE = 0x41,
  KV_PUT = 0x50, KV_GET = 0x51,
  DELIVER_ACK = 0x60, CAP_DROP_MANY = 0x61,
  DELIVER = 0x80, MONITOR_FIRE = 0x81, MEM_READ = 0x82, MEM_WRITE = 0x83,
  PEER_HELLO = 0xa0, P_NULL = 0xa1, P_INVOKE = 0xa2, P_DERIVE = 0xa3, P_REVTREE = 0xa4, P_REVOKE = 0xa5,
  P_DIMINISH = 0xa6, P_COPY = 0xa7, P_MEM_WRITE = 0xa9, P_STAT = 0xaa, P_MONITOR_DELEGATE = 0xab,
  P_MONITOR_FIRE = 0xac, P_HOLD = 0xad, P_REVOKED = 0xae, P_KV_PUT = 0xaf, PEER_AUTH = 0xb0,
};
}  // namespace op

/** Name of an op ("MEMORY_COPY" or "0x99"), for messages. */
std::string opName(uint16_t op);

enum Perm : uint8_t { kRead = 1, kWrite = 2, kRW = 3 };
enum Backing : uint8_t { kShared = 0, kServed = 1 };
enum class Kind : uint8_t { Any = 0, Memory = 1, Request = 2 };
enum Reason : uint16_t { kReasonRevoked = 1, kReasonOwnerFailed = 2, kReasonDelegatesGone = 3 };
/** MEMORY_CREATE flags (shared backing): the region's fd comes with this frame; any view may be mapped whole. */
enum MemCreateFlag : uint8_t { kMemCreateFd = 1, kMemCreateShareWhole = 2 };
/** Flags of MEMORY_STAT and of DELIVER's Memory descriptors. */
enum MemFlag : uint8_t { kMemLocal = 1, kMemSelf = 2, kMemMappable = 4 };
/** HELLO feature bit: DELIVER carries Memory descriptors. */
constexpr uint32_t kFeatureMemoryDescriptors = 1;
/** HELLO feature: a queue pair (docs/queues.md), unix Processes only; the HELLO reply carries its fds. */
constexpr uint32_t kFeatureQueue = 2;

/** ref: u32 controller, u32 epoch, u64 object id (< 2^53). */
struct Ref {
  uint32_t controller = 0;
  uint32_t epoch = 0;
  uint64_t id = 0;
  bool operator==(const Ref& o) const { return controller == o.controller && epoch == o.epoch && id == o.id; }
};
struct RefHash {
  size_t operator()(const Ref& r) const {
    return std::hash<uint64_t>()(r.id * 0x9e3779b97f4a7c15ull ^ (uint64_t(r.controller) << 32 | r.epoch));
  }
};
std::string refString(const Ref& r);

inline uint16_t ld16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
inline uint32_t ld32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t ld64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

/** The 16-byte header. */
struct Header {
  uint32_t length = 0;
  uint16_t op = 0;
  uint16_t flags = 0;
  uint32_t seq = 0;
  uint16_t code = 0;
  uint16_t reserved = 0;
};
/** Header of a frame of at least 16 bytes. */
Header readHeader(const uint8_t* f);

/**
 * Reads a frame body with bounds checks. A read past the end, or a u64 of 2^53 or more,
 * sets `bad` (the frame is EPROTO) and yields 0s; so a whole body is parsed before any
 * check of its meaning.
 */
struct Reader {
  const uint8_t* p;
  size_t end;
  size_t off;
  bool bad = false;
  std::string why;  // first problem, for the EPROTO message
  Reader(const uint8_t* frame, size_t len, size_t start = kHeaderBytes) : p(frame), end(len), off(start) {}
  bool has(size_t n) const { return !bad && off + n <= end; }
  void fail(const char* w) {
    if (!bad) why = w;
    bad = true;
  }
  uint8_t u8();
  uint16_t u16();
  uint32_t u32();
  int32_t i32();
  uint64_t u64();
  Ref ref();
  void skip(size_t n);
  /** The bytes from here to the end (utf8 names). */
  std::string_view rest();
  size_t left() const { return bad || off > end ? 0 : end - off; }
  /** EPROTO naming what was short or out of range, or none. */
  Err err() const;
};

/**
 * Builds one frame: a 16-byte header, then the body; `finish` writes the length. Reused
 * (clear keeps the capacity) so steady traffic allocates nothing.
 */
struct Frame {
  std::vector<uint8_t> b;
  Frame& start(uint16_t op, uint32_t seq, uint16_t code = 0);
  Frame& u8(uint8_t v) { b.push_back(v); return *this; }
  Frame& u16(uint16_t v);
  Frame& u32(uint32_t v);
  Frame& i32(int32_t v) { return u32(uint32_t(v)); }
  Frame& u64(uint64_t v);
  Frame& ref(const Ref& r) { return u32(r.controller).u32(r.epoch).u64(r.id); }
  Frame& bytes(const void* p, size_t n);
  Frame& str(std::string_view s) { return bytes(s.data(), s.size()); }
  /** Patch the length field with `extra` more bytes sent after this buffer (iov). */
  Frame& finish(size_t extra = 0);
  size_t size() const { return b.size(); }
  const uint8_t* data() const { return b.data(); }
};

// ---- args ------------------------------------------------------------------------------

/** One immediate range of `args`, pointing into the frame it was read from. */
struct ImmArg {
  uint32_t offset;
  uint32_t len;
  const uint8_t* data;
};
/** One cap argument: a cid on channels, a ref on peer links. */
struct CapArg {
  uint16_t slot;
  uint32_t cid;
  Ref ref;
};
/** `args`: u16 nCaps, u16 nImms, nCaps x (u16 slot, u16 0, cap), nImms x (u32 off, u32 len, bytes). */
struct Args {
  std::vector<CapArg> caps;
  std::vector<ImmArg> imms;
  void clear() { caps.clear(); imms.clear(); }
  bool empty() const { return caps.empty() && imms.empty(); }
};
/** Read `args` (caps as refs when `refs`). Truncation is EPROTO (r.bad); limits are checked at merge. */
void readArgs(Reader& r, bool refs, Args& out);
/** Bytes `args` take on the wire. */
size_t argsBytes(const Args& a, bool refs);
/** queuedDeliveryBytes of libfractos/protocol.ts: 256 + 16 per cap + (8 + len) per immediate. */
uint64_t queuedDeliveryBytes(const Args& a);

// ---- encoders of the frames the core sends ----------------------------------------------

/** REPLY with an error code and message (truncated to 512 bytes on a UTF-8 boundary). */
void encodeError(Frame& f, uint32_t seq, const Err& e);
/** REPLY to HELLO: u32 controller, u32 epoch, u32 process id, u32 maxFrameBytes, u32 maxImmBytes, u32 maxCapSlots, u32 credits, u32 features granted, u32 queue ring bytes (0: no queue pair). */
void encodeHelloReply(Frame& f, uint32_t seq, uint32_t controller, uint32_t epoch, uint32_t procId, uint32_t maxFrame,
                      uint32_t maxImm, uint32_t maxSlots, uint32_t credits, uint32_t features, uint32_t ringBytes);
/** REPLY: u32 cid. */
void encodeCidReply(Frame& f, uint32_t seq, uint32_t cid);
/** REPLY: ref. */
void encodeRefReply(Frame& f, uint32_t seq, const Ref& r);
/** REPLY to MEMORY_CREATE: u32 cid, u32 0, u64 regionKey (0: served). */
void encodeMemCreateReply(Frame& f, uint32_t seq, uint32_t cid, uint64_t regionKey);
/**
 * REPLY to MEMORY_STAT: u64 size, u8 perms, u8 backing, u8 flags (MemFlag), u8 0, u32 0,
 * u64 regionOffset, u64 servedKey, u64 regionKey.
 */
void encodeMemStatReply(Frame& f, uint32_t seq, uint64_t size, uint8_t perms, uint8_t backing, uint8_t flags, uint64_t off,
                        uint64_t servedKey, uint64_t regionKey);
/**
 * REPLY to MEMORY_MAP (sent with the region's fd): u64 regionKey, u64 regionSize, u64
 * regionOffset, u64 size, u8 perms (of the fd: READ or READ|WRITE), u8 0, u16 0, u32 0.
 */
void encodeMemMapReply(Frame& f, uint32_t seq, uint64_t regionKey, uint64_t regionSize, uint64_t off, uint64_t size,
                       uint8_t perms);
/** REPLY to P_STAT: u64 size, u8 perms, u8 backing. */
void encodePStatReply(Frame& f, uint32_t seq, uint64_t size, uint8_t perms, uint8_t backing);
/** MONITOR_FIRE / P_MONITOR_FIRE: u32 token, u16 reason, u16 0. */
void encodeMonitorFire(Frame& f, uint16_t op, uint32_t token, uint16_t reason);
/** MEM_READ: u64 servedKey, u64 offset, u32 length. */
void encodeMemRead(Frame& f, uint32_t seq, uint64_t key, uint64_t off, uint32_t len);
/** MEM_WRITE head: u64 servedKey, u64 offset; `len` data bytes follow (iov). */
void encodeMemWriteHead(Frame& f, uint32_t seq, uint64_t key, uint64_t off, size_t len);
/** P_MEM_WRITE head: ref, u64 offset, u64 total; `len` data bytes follow (iov). */
void encodePMemWriteHead(Frame& f, uint32_t seq, const Ref& r, uint64_t off, uint64_t total, size_t len);
/** P_HOLD: ref, i32 delta. */
void encodePHold(Frame& f, const Ref& r, int32_t delta);
/** P_REVOKED: ref, u16 reason, u16 0. */
void encodePRevoked(Frame& f, const Ref& r, uint16_t reason);
/** P_KV_PUT: u64 ts, u64 since, u32 origin, u32 owner process, u32 flags (1 delete), u32 0, ref, utf8 name. */
void encodePKvPut(Frame& f, uint64_t ts, uint64_t since, uint32_t origin, uint32_t ownerProc, bool del, const Ref& r,
                  std::string_view name);

/** One entry of the STATS reply. */
struct StatsLink {
  bool peer;
  bool closed;
  uint32_t id;
  uint64_t framesIn, framesOut, bytesIn, bytesOut;
  std::string_view name;
};
/** REPLY to STATS: u32 controller, u32 epoch, u16 n, n x (u8 kind, u8 flags, u32 id, 4 x u64, u16 nameLen, name). */
void encodeStatsReply(Frame& f, uint32_t seq, uint32_t controller, uint32_t epoch, const std::vector<StatsLink>& links);

struct InvocationRecord;  // invocations.h
/** One Process of the INTROSPECT reply. */
struct IntrospectProc {
  uint32_t id, pid, objects, caps;
  std::string_view name;  // at most 255 bytes are sent
};
/** Totals of the INTROSPECT reply. */
struct IntrospectTotals {
  uint32_t controller, epoch, flags, objects, caps, proxies, names;
};
/**
 * REPLY to INTROSPECT (docs/protocol.md "Introspection", libfractos/introspect.ts): u32
 * controller, u32 epoch, u32 flags, u32 objects, u32 caps, u32 proxies, u32 names, u16
 * nProcs, u16 nRecords, u64 firstSeq, u64 nextSeq, nProcs x (u32 id, u32 pid, u32 objects,
 * u32 caps, u8 nameLen, name), nRecords x (u8 kind, u8 0, u16 0, u32 invoker, u32 target
 * controller, u32 provider, u64 object, u32 age ms): the age is nowMs - atMs, saturated.
 */
void encodeIntrospectReply(Frame& f, uint32_t seq, const IntrospectTotals& t, const std::vector<IntrospectProc>& procs,
                           uint64_t firstSeq, uint64_t nextSeq, const std::vector<InvocationRecord>& recs, uint64_t nowMs);

/**
 * A Memory descriptor in DELIVER (40 bytes): u16 slot, u8 perms, u8 backing, u8 flags
 * (MemFlag), u8 0, u16 0, u64 size, u64 regionOffset, u64 servedKey, u64 regionKey.
 */
struct DeliverDesc {
  uint16_t slot;
  uint8_t perms, backing, flags;
  uint64_t size, offset, servedKey, regionKey;
};
/** Append one DeliverDesc. */
void encodeDeliverDesc(Frame& f, const DeliverDesc& d);
/** A Memory descriptor on peer links: u16 slot, u8 perms, u8 backing, u32 0, u64 size. */
struct PeerDesc {
  uint16_t slot;
  uint8_t perms, backing;
  uint64_t size;
};

/** Write `args` whose caps are the given cids/refs (`refs` picks which). */
void writeArgs(Frame& f, const Args& a, bool refs);

}  // namespace fractos

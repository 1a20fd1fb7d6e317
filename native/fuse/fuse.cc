// fractos_fuse: libfuse3's low-level API (fuse_lowlevel.h, libfuse 3.14) for `fractos mount`.
//
// One session per mount. A loop thread polls /dev/fuse (and a wake-up eventfd), receives each
// kernel request (fuse_session_receive_buf) and lets libfuse decode it
// (fuse_session_process_buf); every operation callback copies its arguments into an Ev and
// hands it to JS through a threadsafe function without waiting: the loop thread never blocks
// on JS, so any number of requests are in flight (the kernel's max_background bounds the
// asynchronous ones). JS answers later, from its own thread, with the reply functions
// (fuse_reply_* are safe from any thread: each is one writev on the fd).
//
// Requests are named to JS by a 53-bit id, never by pointer: a table id -> fuse_req_t (under a
// mutex) makes a reply to an unknown or already answered id a no-op (returns false), so a late
// answer after an interrupt or a stop cannot touch a freed request. forget/batch_forget are
// answered here (fuse_reply_none) and reported to JS as FORGET events. FUSE_INTERRUPT: every
// request registers an interrupt callback that reports INTERRUPT(id); JS decides.
//
// Stop (JS thread): wake and join the loop thread, answer every pending request ENOTCONN,
// fuse_session_unmount (lazy unmount as root, else fusermount3 -u -z), fuse_session_destroy.
// A mount that goes away underneath (fusermount3 -u, umount) ends the loop with ENODEV: an
// EXIT event tells JS, which then stops the session.
//
// Thin by design: names, options and error codes are validated in native/fuse/index.ts.
#include <napi.h>
#include <uv.h>
#include <fuse_lowlevel.h>
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <mutex>
#include <poll.h>
#include <string>
#include <sys/eventfd.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "frame_hook.h"
#include "hook_frames.h"

namespace {

// Event kinds, shared with index.ts (FuseOp).
enum Op : uint32_t {
  OP_INIT = 1, OP_EXIT, OP_INTERRUPT, OP_FORGET,
  OP_LOOKUP = 10, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_MKNOD, OP_MKDIR, OP_UNLINK, OP_RMDIR,
  OP_SYMLINK, OP_RENAME, OP_LINK, OP_OPEN, OP_READ, OP_WRITE, OP_FLUSH, OP_RELEASE, OP_FSYNC,
  OP_OPENDIR, OP_READDIR, OP_READDIRPLUS, OP_RELEASEDIR, OP_FSYNCDIR, OP_STATFS, OP_ACCESS,
  OP_CREATE, OP_FALLOCATE,
};

// Attribute array layout (Float64Array), shared with index.ts (ATTR_*).
constexpr int A_INO = 0, A_MODE = 1, A_NLINK = 2, A_UID = 3, A_GID = 4, A_RDEV = 5, A_SIZE = 6,
              A_BLOCKS = 7, A_ATIME_S = 8, A_ATIME_NS = 9, A_MTIME_S = 10, A_MTIME_NS = 11,
              A_CTIME_S = 12, A_CTIME_NS = 13, A_FIELDS = 14;

struct Session;
struct Dax;

// One kernel request (or event) on its way to JS.
struct Ev {
  Session* s = nullptr;
  uint32_t op = 0;
  uint64_t id = 0;
  uint64_t ino = 0;
  double a = 0, b = 0, c = 0, d = 0;
  std::string name, name2;
  std::vector<char> data;  // write payload
  bool hasAttr = false;
  double attr[8] = {0};  // setattr: mode uid gid size atimeS atimeNs mtimeS mtimeNs
  uint32_t uid = 0, gid = 0, pid = 0;
};

struct Session {
  fuse_session* se = nullptr;
  std::thread loop;
  int wake = -1;
  std::atomic<bool> stopping{false};
  bool stopped = false;
  Napi::ThreadSafeFunction tsfn;
  std::mutex mu;
  std::unordered_map<uint64_t, fuse_req_t> reqs;
  uint64_t nextId = 1;
  // init options
  unsigned maxWrite = 1 << 20;
  unsigned maxBackground = 64;
  bool writeback = false;
  bool splice = false;
  std::string mountpoint;
  // Freed when both the JS External and the threadsafe function are finalized (JS thread).
  int refs = 2;
  // The native DAX read path (daxSetup), read by the loop thread.
  std::atomic<Dax*> dax{nullptr};
};

// libfuse's log lines of the current mount call (fuse_session_new/mount print their reasons).
thread_local std::string* tl_log = nullptr;
void LogFunc(enum fuse_log_level, const char* fmt, va_list ap) {
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  if (tl_log) *tl_log += line;
  // Outside a mount call libfuse has nothing to say that JS does not get as an error.
}

void CallJs(Napi::Env env, Napi::Function fn, Ev* ev);

void Post(Session* s, Ev* ev) {
  ev->s = s;
  if (s->tsfn.NonBlockingCall(ev, CallJs) != napi_ok) delete ev;
}

Session* Of(fuse_req_t req) { return static_cast<Session*>(fuse_req_userdata(req)); }

void OnInterrupt(fuse_req_t req, void* data) {
  Ev* ev = new Ev();
  ev->op = OP_INTERRUPT;
  ev->id = reinterpret_cast<uintptr_t>(data);
  Post(Of(req), ev);
}

// A request event: registers `req` under a new id.
Ev* Begin(fuse_req_t req, uint32_t op, fuse_ino_t ino) {
  Session* s = Of(req);
  Ev* ev = new Ev();
  ev->op = op;
  ev->ino = ino;
  const fuse_ctx* ctx = fuse_req_ctx(req);
  ev->uid = ctx->uid;
  ev->gid = ctx->gid;
  ev->pid = ctx->pid;
  {
    std::lock_guard<std::mutex> g(s->mu);
    ev->id = s->nextId++;
    s->reqs.emplace(ev->id, req);
  }
  fuse_req_interrupt_func(req, OnInterrupt, reinterpret_cast<void*>(static_cast<uintptr_t>(ev->id)));
  return ev;
}

void Send(fuse_req_t req, Ev* ev) { Post(Of(req), ev); }

// ---- the native DAX read path (docs/mount.md "Native DAX reads") ---------------------------
//
// With `--dax`, JS registers each open file's DAX extents here (daxFile) and hands over a
// share of the data region with its own Memory caps and continuation Requests (daxSetup).
// A READ of whole blocks inside one extent, within the size JS knows, is then served without
// JS: the FUSE thread takes a native slot and queues the op; the channel's libuv thread
// (uv_async) builds the REQUEST_INVOKE_QUIET of the extent's blockdev Request and sends it on
// the Process's channel through the frame hook (native/include/frame_hook.h); the
// continuation's DELIVER is taken by the hook on that thread, which answers the kernel from
// the slot (fuse_reply_buf) and returns the delivery credit. Anything else, and any error
// (the invoke refused: EREVOKED after a truncate; the continuation's onError), goes to JS as
// an ordinary READ event, which serves it exactly as before. daxForget (release, truncate)
// stops native service of a handle at once; a detached channel (the Controller went away)
// answers every op in flight EIO, a stop ENOTCONN.

using namespace fractos::hookframes;  // wire constants, ld/st, header, credit frames

/**
 * u32 cid, u16 3 caps, u16 1 imm, 3 x (u16 slot, u16 0, u32 cid), (u32 off, u32 12, u64 offset,
 * u32 length); a write's immediate carries u32 flags (0) too: 4 bytes more.
 */
constexpr uint32_t DX_INVOKE_BYTES = HEADER + 4 + 4 + 3 * 8 + 8 + 12;
constexpr uint32_t DX_INVOKE_MAX = DX_INVOKE_BYTES + 4;
constexpr uint32_t DX_MAX_SLOTS = 1024;

struct DaxExtent {
  uint64_t fileOff, len;
  uint32_t read, write;
};

struct DaxFile {
  uint64_t ino = 0, size = 0;
  uint32_t blockSize = 4096;
  bool written = false;  // a native write happened (JS records the mtime at release)
  std::vector<DaxExtent> extents;  // ascending fileOff
};

struct DaxSlot {
  uint32_t mem = 0, ok = 0, err = 0;  // caps: this slot's Memory, its continuation pair
  bool busy = false;
  bool write = false;
  uint16_t gen = 0;                   // seq check of the invoke's REPLY
  fuse_req_t req = nullptr;
  uint64_t fh = 0, ino = 0, off = 0;  // the FUSE request (for the fallback to JS)
  size_t size = 0;
  uint32_t cid = 0;                   // the extent's read Request
  uint64_t volOff = 0;
  uint32_t len = 0, skip = 0, n = 0;  // device bytes; answer = [skip, skip + n) of the slot
  uint64_t tQueued = 0, tSent = 0;    // CLOCK_MONOTONIC ns (stats: hand-off and service time)
};

inline uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

struct Dax {
  Session* s = nullptr;
  fractos_frame_hook hook{};
  const fractos_chan_ops* ops = nullptr;  // loop thread only
  uv_async_t* async = nullptr;
  Napi::Reference<Napi::ArrayBuffer> regionRef;
  uint8_t* base = nullptr;  // the native slots' bytes (slot i at base + i * slotBytes)
  uint32_t slotBytes = 0;
  uint32_t okTag = 0, errTag = 0, fOffset = 0, sBuffer = 0, sOk = 0, sErr = 0, bytesOff = 0, codeOff = 0;
  bool writes = false;  // native writes (the write layout's flags right after offset and length)
  std::vector<DaxSlot> slots;
  // Shared between the FUSE thread and the loop thread: under mu.
  std::mutex mu;
  bool open = false;  // attached and not stopped: new reads may be taken
  std::unordered_map<uint64_t, DaxFile> files;
  std::vector<uint32_t> freeSlots, queued;
  uint32_t inflight = 0;
  uint64_t direct = 0;  // invokes the FUSE thread sent itself (send_any_thread)
  // The channel's send_any_thread (frame_hook.h), when it has one and `directSend` is on.
  int (*sendAny)(void*, const struct iovec*, int, uint32_t) = nullptr;
  void* chan = nullptr;
  bool directSend = true;
  // Loop thread only.
  std::vector<uint32_t> sending;
  std::vector<uint8_t> out;
  std::vector<uint32_t> drops;
  uint32_t acks = 0;
  uint64_t reads = 0, writes_ = 0, fallbacks = 0, errors = 0, declined = 0;
  uint64_t handoffNs = 0, serviceNs = 0, sent = 0;  // sums: FUSE thread to send, send to answer
  bool closed = false;
};

void DaxFallback(Dax* d, DaxSlot& sl);

inline uint32_t DaxInvokeBytes(const DaxSlot& sl) { return sl.write ? DX_INVOKE_MAX : DX_INVOKE_BYTES; }

// The REQUEST_INVOKE_QUIET of slot si's read or write (DaxInvokeBytes at p).
void DaxInvokeFrame(const Dax* d, uint32_t si, uint8_t* p) {
  const DaxSlot& sl = d->slots[si];
  const uint32_t bytes = DaxInvokeBytes(sl);
  header(p, bytes, OP_REQUEST_INVOKE_QUIET, SEQ_NATIVE | (uint32_t(sl.gen & 0x7fff) << 16) | si);
  st32(p + 16, sl.cid);
  st16(p + 20, 3);
  st16(p + 22, 1);
  st16(p + 24, uint16_t(d->sBuffer)); st16(p + 26, 0); st32(p + 28, sl.mem);
  st16(p + 32, uint16_t(d->sOk)); st16(p + 34, 0); st32(p + 36, sl.ok);
  st16(p + 40, uint16_t(d->sErr)); st16(p + 42, 0); st32(p + 44, sl.err);
  st32(p + 48, d->fOffset);
  st32(p + 52, sl.write ? 16 : 12);
  st64(p + 56, sl.volOff);
  st32(p + 64, sl.len);
  if (sl.write) st32(p + 68, 0);  // flags: no FUA (durable against a crash of any Process; docs/storage.md)
}

// FUSE thread: take the READ (wbuf null) or WRITE (wbuf: its bytes) natively (true) or leave
// it to JS (false). A read: the whole blocks around the range, inside one extent, clamped to
// the known size. A write: whole blocks inside one extent and the known size (growth, partial
// blocks and FUA are the FS's: JS).
bool DaxTake(Dax* d, fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, uint64_t fh, const char* wbuf) {
  if (!d || size == 0 || off < 0) return false;
  const bool write = wbuf != nullptr;
  uint32_t si;
  {
    std::lock_guard<std::mutex> g(d->mu);
    if (!d->open || (write && !d->writes)) return false;
    auto it = d->files.find(fh);
    if (it == d->files.end()) return false;
    DaxFile& f = it->second;
    uint64_t o = uint64_t(off);
    uint64_t end = std::min<uint64_t>(o + size, f.size);
    if (end <= o) return false;  // at or past the end: JS answers 0 bytes (a read) or grows the file
    uint64_t bs = f.blockSize;
    uint64_t aOff = o - o % bs;
    uint64_t aLen = (end - aOff + bs - 1) / bs * bs;
    if (write && (aOff != o || end != o + size || aLen != size)) return false;
    if (aLen > d->slotBytes) {
      d->declined++;
      return false;
    }
    const DaxExtent* x = nullptr;
    for (const DaxExtent& e : f.extents)
      if (aOff >= e.fileOff && aOff + aLen <= e.fileOff + e.len) {
        x = &e;
        break;
      }
    if (!x || !(write ? x->write : x->read) || d->freeSlots.empty()) {
      d->declined++;
      return false;
    }
    si = d->freeSlots.back();
    d->freeSlots.pop_back();
    DaxSlot& sl = d->slots[si];
    sl.busy = true;
    sl.write = write;
    sl.gen++;
    sl.req = req;
    sl.fh = fh;
    sl.ino = ino;
    sl.off = o;
    sl.size = size;
    sl.cid = write ? x->write : x->read;
    sl.volOff = aOff - x->fileOff;
    sl.len = uint32_t(aLen);
    sl.skip = uint32_t(o - aOff);
    sl.n = uint32_t(end - o);
    if (write) {
      std::memcpy(d->base + size_t(si) * d->slotBytes, wbuf, size);  // wbuf is libfuse's receive buffer: valid only now
      f.written = true;
    }
    sl.tQueued = NowNs();
    // Straight onto the Controller's ring from this thread when the channel can take it now
    // (no wake-up of the channel's thread to send); else through the hand-off below.
    if (d->sendAny) {
      uint8_t frame[DX_INVOKE_MAX];
      DaxInvokeFrame(d, si, frame);
      struct iovec iov{frame, DaxInvokeBytes(sl)};
      sl.tSent = sl.tQueued;
      if (d->sendAny(d->chan, &iov, 1, 0) == 0) {
        d->inflight++;
        d->direct++;
        return true;
      }
    }
    d->queued.push_back(si);
  }
  uv_async_send(d->async);
  return true;
}

void DaxFreeSlot(Dax* d, uint32_t si) {
  DaxSlot& sl = d->slots[si];
  sl.busy = false;
  sl.req = nullptr;
  std::lock_guard<std::mutex> g(d->mu);
  d->inflight--;
  d->freeSlots.push_back(si);
}

void DaxSend(Dax* d, uint32_t flags) {
  if (d->out.empty()) return;
  if (d->ops) {
    struct iovec iov{d->out.data(), d->out.size()};
    d->ops->send(d->ops->chan, &iov, 1, flags);  // -EPIPE: closing; detach answers what is in flight
  }
  d->out.clear();
}

// Loop thread: send the invokes the FUSE thread queued.
void DaxOnAsync(uv_async_t* h) {
  Dax* d = static_cast<Dax*>(h->data);
  {
    std::lock_guard<std::mutex> g(d->mu);
    d->sending.swap(d->queued);
    d->inflight += uint32_t(d->sending.size());
  }
  const uint64_t now = d->sending.empty() ? 0 : NowNs();
  for (uint32_t si : d->sending) {
    DaxSlot& sl = d->slots[si];
    sl.tSent = now;
    d->handoffNs += now - sl.tQueued;
    d->sent++;
    if (!d->ops || d->closed) {  // detached meanwhile
      fuse_reply_err(sl.req, d->closed ? ENOTCONN : EIO);
      d->errors++;
      DaxFreeSlot(d, si);
      continue;
    }
    DaxInvokeFrame(d, si, grow(d->out, DaxInvokeBytes(sl)));
  }
  d->sending.clear();
  DaxSend(d, 0);
}

// An op JS serves instead: registered and posted as the READ or WRITE the kernel sent (a
// write's bytes from its slot).
void DaxFallback(Dax* d, DaxSlot& sl) {
  if (d->closed || d->s->stopped) {
    fuse_reply_err(sl.req, ENOTCONN);
    d->errors++;
    return;
  }
  d->fallbacks++;
  Ev* ev = Begin(sl.req, sl.write ? OP_WRITE : OP_READ, sl.ino);
  if (sl.write) {
    const char* p = reinterpret_cast<const char*>(d->base) + size_t(&sl - d->slots.data()) * d->slotBytes;
    ev->data.assign(p, p + sl.size);
  } else {
    ev->a = static_cast<double>(sl.size);
  }
  ev->b = static_cast<double>(sl.off);
  ev->c = static_cast<double>(sl.fh);
  Send(sl.req, ev);
}

// Stop serving handle fh natively (its FS open is revoked or closed). Any thread. Returns
// whether it wrote natively.
bool DaxForgetFh(Dax* d, uint64_t fh) {
  std::lock_guard<std::mutex> g(d->mu);
  auto it = d->files.find(fh);
  if (it == d->files.end()) return false;
  bool w = it->second.written;
  d->files.erase(it);
  return w;
}

// Every op in flight answered `err` (the channel went away, or a stop). Loop thread.
void DaxFailAll(Dax* d, int err) {
  {
    std::lock_guard<std::mutex> g(d->mu);
    d->open = false;
    d->sendAny = nullptr;
    d->chan = nullptr;
    d->files.clear();
    for (uint32_t si : d->queued) {  // queued by the FUSE thread, not sent yet
      d->slots[si].busy = false;
      fuse_reply_err(d->slots[si].req, err);
      d->slots[si].req = nullptr;
      d->freeSlots.push_back(si);
      d->errors++;
    }
    d->queued.clear();
  }
  for (uint32_t si = 0; si < d->slots.size(); si++) {
    DaxSlot& sl = d->slots[si];
    if (!sl.busy || !sl.req) continue;
    fuse_reply_err(sl.req, err);
    d->errors++;
    DaxFreeSlot(d, si);
  }
}

int DaxAttach(void* ctx, const fractos_chan_ops* ops) {
  Dax* d = static_cast<Dax*>(ctx);
  if (!ops || ops->abi != FRACTOS_FRAME_HOOK_ABI || ops->size < sizeof(fractos_chan_ops) || !ops->send) return -EINVAL;
  if (d->ops) return -EBUSY;
  if (d->closed) return -EPIPE;
  d->ops = ops;
  std::lock_guard<std::mutex> g(d->mu);
  d->open = true;
  // send_any_thread: present when the channel's table is large enough to hold it
  if (d->directSend && ops->size >= offsetof(fractos_chan_ops, send_any_thread) + sizeof ops->send_any_thread && ops->send_any_thread) {
    d->sendAny = ops->send_any_thread;
    d->chan = ops->chan;
  }
  return 0;
}

void DaxDetach(void* ctx) {
  Dax* d = static_cast<Dax*>(ctx);
  d->ops = nullptr;
  d->acks = 0;
  d->out.clear();
  d->drops.clear();
  DaxFailAll(d, EIO);
}

void DaxFlush(void* ctx) {
  Dax* d = static_cast<Dax*>(ctx);
  if (!d->ops) return;
  appendDropMany(d->out, d->drops);
  bool onlyAck = d->out.empty();
  appendDeliverAck(d->out, d->acks);
  DaxSend(d, onlyAck ? FRACTOS_SEND_QUIET : 0);  // credits alone: nobody waits for them
}

int DaxOnFrame(void* ctx, const uint8_t* f, uint32_t len) {
  Dax* d = static_cast<Dax*>(ctx);
  const uint16_t op = ld16(f + 4);
  if (op == OP_REPLY) {
    const uint32_t seq = ld32(f + 8);
    if (!(seq & SEQ_NATIVE)) return 0;
    const uint16_t code = ld16(f + 12);
    const uint32_t si = seq & 0xffff;
    if (code == 0 || si >= d->slots.size()) return 1;
    DaxSlot& sl = d->slots[si];
    if (!sl.busy || !sl.req || (sl.gen & 0x7fff) != ((seq >> 16) & 0x7fff)) return 1;
    // The invoke was refused (EREVOKED after a truncate, EBADCAP, EAGAIN): no continuation
    // comes. Stop serving that handle natively (JS refetches the extents) and let JS serve it.
    {
      std::lock_guard<std::mutex> g(d->mu);  // no extents: every op of the handle goes to JS until it registers new ones
      auto it = d->files.find(sl.fh);
      if (it != d->files.end()) it->second.extents.clear();
    }
    DaxFallback(d, sl);
    DaxFreeSlot(d, si);
    return 1;
  }
  if (op != OP_DELIVER || len < HEADER + 8) return 0;
  const uint32_t tag = ld32(f + 16);
  const bool ok = tag == d->okTag;
  if (!ok && tag != d->errTag) return 0;
  d->acks++;
  // args: u16 nCaps, u16 nImms, caps (u16 slot, u16 0, u32 cid), imms (u32 off, u32 len, bytes)
  const uint8_t* end = f + len;
  const uint8_t* p = f + 20;
  const uint16_t nCaps = ld16(p), nImms = ld16(p + 2);
  p += 4;
  if (uint64_t(end - p) < uint64_t(nCaps) * 8) return 1;  // malformed: nothing to act on
  for (uint16_t i = 0; i < nCaps; i++, p += 8) d->drops.push_back(ld32(p + 4));  // nobody asked for caps
  const uint8_t* idp = nullptr;
  const uint8_t* valp = nullptr;
  const uint32_t valOff = ok ? d->bytesOff : d->codeOff, valLen = ok ? 4 : 2;
  for (uint16_t i = 0; i < nImms && nImms <= 16; i++) {
    if (end - p < 8) return 1;
    uint32_t io = ld32(p), il = ld32(p + 4);
    p += 8;
    if (uint64_t(end - p) < il) return 1;
    if (!idp && io == 0 && il >= 4) idp = p;
    if (!valp && io <= valOff && uint64_t(valOff) + valLen <= uint64_t(io) + il) valp = p + (valOff - io);
    p += il;
  }
  if (!idp) return 1;
  uint32_t si = ld32(idp);
  if (si >= d->slots.size()) return 1;
  DaxSlot& sl = d->slots[si];
  if (!sl.busy || !sl.req) return 1;  // late or duplicate: answered already
  uint32_t got = ok && valp ? ld32(valp) : 0;
  if (!ok || got != sl.len) {
    DaxFallback(d, sl);  // JS serves it (and answers its error, if it has one too)
    DaxFreeSlot(d, si);
    return 1;
  }
  d->serviceNs += NowNs() - sl.tSent;
  if (sl.write) {
    d->writes_++;
    fuse_reply_write(sl.req, sl.n);
  } else {
    d->reads++;
    fuse_reply_buf(sl.req, reinterpret_cast<const char*>(d->base) + size_t(si) * d->slotBytes + sl.skip, sl.n);
  }
  DaxFreeSlot(d, si);
  return 1;
}


void LlInit(void* ud, fuse_conn_info* conn) {
  Session* s = static_cast<Session*>(ud);
  conn->max_write = s->maxWrite;
  conn->max_read = 0;
  conn->max_background = s->maxBackground;
  conn->congestion_threshold = s->maxBackground * 3 / 4;
  unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_ASYNC_DIO |
                  FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_HANDLE_KILLPRIV | FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_AUTO_INVAL_DATA;
  if (s->writeback) want |= FUSE_CAP_WRITEBACK_CACHE;
  if (s->splice) want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
  conn->want |= want & conn->capable;
  if (!s->splice) conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  // readdirplus on every page (not the adaptive mode: ls reads every page before it stats an
  // entry, so only the first page would carry attributes): the FS's readdir answers the
  // entries' attributes in the same reply, so ls -l or find -ls need no lookup per entry.
  conn->want |= FUSE_CAP_READDIRPLUS & conn->capable;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  // Without locks implemented here the kernel keeps POSIX and flock locks local to this mount.
  conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
  Ev* ev = new Ev();
  ev->op = OP_INIT;
  ev->a = conn->max_write;
  ev->b = conn->want;
  ev->c = conn->proto_minor;
  Post(s, ev);
}

void LlLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Ev* ev = Begin(req, OP_LOOKUP, parent);
  ev->name = name;
  Send(req, ev);
}

void Forget(Session* s, fuse_ino_t ino, uint64_t n) {
  Ev* ev = new Ev();
  ev->op = OP_FORGET;
  ev->ino = ino;
  ev->a = static_cast<double>(n);
  Post(s, ev);
}

void LlForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Session* s = Of(req);
  fuse_reply_none(req);
  Forget(s, ino, nlookup);
}

void LlForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* f) {
  Session* s = Of(req);
  fuse_reply_none(req);
  for (size_t i = 0; i < count; i++) Forget(s, f[i].ino, f[i].nlookup);
}

double Fh(fuse_file_info* fi) { return fi ? static_cast<double>(fi->fh) : 0; }

void LlGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_GETATTR, ino);
  ev->a = Fh(fi);
  Send(req, ev);
}

void LlSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* st, int toSet, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_SETATTR, ino);
  ev->a = toSet;
  ev->b = Fh(fi);
  ev->c = fi ? 1 : 0;
  ev->hasAttr = true;
  ev->attr[0] = st->st_mode;
  ev->attr[1] = st->st_uid;
  ev->attr[2] = st->st_gid;
  ev->attr[3] = static_cast<double>(st->st_size);
  ev->attr[4] = static_cast<double>(st->st_atim.tv_sec);
  ev->attr[5] = static_cast<double>(st->st_atim.tv_nsec);
  ev->attr[6] = static_cast<double>(st->st_mtim.tv_sec);
  ev->attr[7] = static_cast<double>(st->st_mtim.tv_nsec);
  Send(req, ev);
}

void LlReadlink(fuse_req_t req, fuse_ino_t ino) { Send(req, Begin(req, OP_READLINK, ino)); }

void LlMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  Ev* ev = Begin(req, OP_MKNOD, parent);
  ev->name = name;
  ev->a = mode;
  ev->b = static_cast<double>(rdev);
  Send(req, ev);
}

void LlMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Ev* ev = Begin(req, OP_MKDIR, parent);
  ev->name = name;
  ev->a = mode;
  Send(req, ev);
}

void LlUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Ev* ev = Begin(req, OP_UNLINK, parent);
  ev->name = name;
  Send(req, ev);
}

void LlRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Ev* ev = Begin(req, OP_RMDIR, parent);
  ev->name = name;
  Send(req, ev);
}

void LlSymlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  Ev* ev = Begin(req, OP_SYMLINK, parent);
  ev->name = name;
  ev->name2 = link;
  Send(req, ev);
}

void LlRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname, unsigned flags) {
  Ev* ev = Begin(req, OP_RENAME, parent);
  ev->name = name;
  ev->a = static_cast<double>(newparent);
  ev->name2 = newname;
  ev->b = flags;
  Send(req, ev);
}

void LlLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  Ev* ev = Begin(req, OP_LINK, ino);
  ev->a = static_cast<double>(newparent);
  ev->name = newname;
  Send(req, ev);
}

void LlOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_OPEN, ino);
  ev->a = fi->flags;
  Send(req, ev);
}

void LlRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  if (DaxTake(Of(req)->dax.load(std::memory_order_acquire), req, ino, size, off, fi->fh, nullptr)) return;
  Ev* ev = Begin(req, OP_READ, ino);
  ev->a = static_cast<double>(size);
  ev->b = static_cast<double>(off);
  ev->c = Fh(fi);
  Send(req, ev);
}

void LlWrite(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  if (!fi->writepage && DaxTake(Of(req)->dax.load(std::memory_order_acquire), req, ino, size, off, fi->fh, buf)) return;
  Ev* ev = Begin(req, OP_WRITE, ino);
  ev->data.assign(buf, buf + size);  // buf is the session's receive buffer: valid only now
  ev->b = static_cast<double>(off);
  ev->c = Fh(fi);
  ev->d = fi->writepage ? 1 : 0;
  Send(req, ev);
}

void LlFlush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_FLUSH, ino);
  ev->a = Fh(fi);
  Send(req, ev);
}

void LlRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_RELEASE, ino);
  ev->a = Fh(fi);
  ev->b = fi->flags;
  Send(req, ev);
}

void LlFsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_FSYNC, ino);
  ev->a = Fh(fi);
  ev->b = datasync;
  Send(req, ev);
}

void LlOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_OPENDIR, ino);
  ev->a = fi->flags;
  Send(req, ev);
}

void Readdir(fuse_req_t req, uint32_t op, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Ev* ev = Begin(req, op, ino);
  ev->a = static_cast<double>(size);
  ev->b = static_cast<double>(off);
  ev->c = Fh(fi);
  Send(req, ev);
}

void LlReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) { Readdir(req, OP_READDIR, ino, size, off, fi); }
void LlReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) { Readdir(req, OP_READDIRPLUS, ino, size, off, fi); }

void LlReleasedir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_RELEASEDIR, ino);
  ev->a = Fh(fi);
  Send(req, ev);
}

void LlFsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_FSYNCDIR, ino);
  ev->a = Fh(fi);
  ev->b = datasync;
  Send(req, ev);
}

void LlStatfs(fuse_req_t req, fuse_ino_t ino) { Send(req, Begin(req, OP_STATFS, ino)); }

void LlAccess(fuse_req_t req, fuse_ino_t ino, int mask) {
  Ev* ev = Begin(req, OP_ACCESS, ino);
  ev->a = mask;
  Send(req, ev);
}

void LlCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_CREATE, parent);
  ev->name = name;
  ev->a = mode;
  ev->b = fi->flags;
  Send(req, ev);
}

void LlFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, fuse_file_info* fi) {
  Ev* ev = Begin(req, OP_FALLOCATE, ino);
  ev->a = mode;
  ev->b = static_cast<double>(offset);
  ev->c = static_cast<double>(length);
  ev->d = Fh(fi);
  Send(req, ev);
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops o;
  memset(&o, 0, sizeof o);
  o.init = LlInit;
  o.lookup = LlLookup;
  o.forget = LlForget;
  o.forget_multi = LlForgetMulti;
  o.getattr = LlGetattr;
  o.setattr = LlSetattr;
  o.readlink = LlReadlink;
  o.mknod = LlMknod;
  o.mkdir = LlMkdir;
  o.unlink = LlUnlink;
  o.rmdir = LlRmdir;
  o.symlink = LlSymlink;
  o.rename = LlRename;
  o.link = LlLink;
  o.open = LlOpen;
  o.read = LlRead;
  o.write = LlWrite;
  o.flush = LlFlush;
  o.release = LlRelease;
  o.fsync = LlFsync;
  o.opendir = LlOpendir;
  o.readdir = LlReaddir;
  o.readdirplus = LlReaddirplus;
  o.releasedir = LlReleasedir;
  o.fsyncdir = LlFsyncdir;
  o.statfs = LlStatfs;
  o.access = LlAccess;
  o.create = LlCreate;
  o.fallocate = LlFallocate;
  return o;
}();

void Loop(Session* s) {
  fuse_buf buf;
  memset(&buf, 0, sizeof buf);
  int err = 0;
  pollfd fds[2] = {{fuse_session_fd(s->se), POLLIN, 0}, {s->wake, POLLIN, 0}};
  while (!s->stopping.load()) {
    int n = poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (fds[1].revents) break;
    if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
      err = ENODEV;
      break;
    }
    int r = fuse_session_receive_buf(s->se, &buf);
    if (r == -EINTR || r == -EAGAIN || r == -ENOENT) continue;  // ENOENT: the request was interrupted and gone
    if (r <= 0) {
      err = r < 0 ? -r : ENODEV;
      break;
    }
    fuse_session_process_buf(s->se, &buf);
  }
  free(buf.mem);
  if (!s->stopping.load()) {
    Ev* ev = new Ev();
    ev->op = OP_EXIT;
    ev->a = err;
    Post(s, ev);
  }
}

void CallJs(Napi::Env env, Napi::Function fn, Ev* ev) {
  if (env == nullptr || ev->s->stopped) {
    delete ev;
    return;
  }
  napi_value data;
  if (ev->op == OP_WRITE) {
    data = Napi::Buffer<char>::Copy(env, ev->data.data(), ev->data.size());
  } else if (ev->hasAttr) {
    Napi::Float64Array f = Napi::Float64Array::New(env, 8);
    for (int i = 0; i < 8; i++) f[i] = ev->attr[i];
    data = f;
  } else {
    data = env.Undefined();
  }
  napi_value args[] = {
      Napi::Number::New(env, ev->op), Napi::Number::New(env, static_cast<double>(ev->id)),
      Napi::Number::New(env, static_cast<double>(ev->ino)), Napi::Number::New(env, ev->a),
      Napi::Number::New(env, ev->b), Napi::Number::New(env, ev->c), Napi::Number::New(env, ev->d),
      Napi::String::New(env, ev->name), Napi::String::New(env, ev->name2), data,
      Napi::Number::New(env, ev->uid), Napi::Number::New(env, ev->gid), Napi::Number::New(env, ev->pid),
  };
  delete ev;
  fn.Call(13, args);
}

// ---- JS side ------------------------------------------------------------------------------

Session* SessionOf(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) return nullptr;
  return info[0].As<Napi::External<Session>>().Data();
}

Napi::Value Fail(Napi::Env env, const std::string& msg, int err) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, -err));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

void DaxDelete(Dax* d);
void Unref(Session* s) {
  if (--s->refs != 0) return;
  if (Dax* d = s->dax.load()) DaxDelete(d);
  delete s;
}
void Finalize(Napi::Env, void*, Session* s) { Unref(s); }
void StopSession(Session* s);
void FinalizeExternal(Napi::Env, Session* s) {
  StopSession(s);  // a session dropped by JS without stop: unmount, do not leave the thread running
  Unref(s);
}

// mount(mountpoint, options: string[] (fuse args), cfg: {maxWrite, maxBackground, writeback, splice}, onEvent)
Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsArray() || !info[2].IsObject() || !info[3].IsFunction()) {
    Napi::TypeError::New(env, "mount(mountpoint, args, cfg, onEvent)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Session* s = new Session();
  s->mountpoint = info[0].As<Napi::String>().Utf8Value();
  Napi::Object cfg = info[2].As<Napi::Object>();
  s->maxWrite = cfg.Get("maxWrite").As<Napi::Number>().Uint32Value();
  s->maxBackground = cfg.Get("maxBackground").As<Napi::Number>().Uint32Value();
  s->writeback = cfg.Get("writeback").ToBoolean();
  s->splice = cfg.Get("splice").ToBoolean();
  Napi::Array arr = info[1].As<Napi::Array>();
  std::vector<std::string> strs{"fractos"};
  for (uint32_t i = 0; i < arr.Length(); i++) strs.push_back(arr.Get(i).ToString().Utf8Value());
  std::vector<char*> argv;
  for (auto& x : strs) argv.push_back(x.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  std::string log;
  tl_log = &log;
  s->se = fuse_session_new(&args, &kOps, sizeof kOps, s);
  int err = errno;
  if (!s->se) {
    tl_log = nullptr;
    delete s;
    return Fail(env, "fuse_session_new: " + (log.empty() ? std::string("bad options") : log), EINVAL);
  }
  if (fuse_session_mount(s->se, s->mountpoint.c_str()) != 0) {
    err = errno ? errno : EIO;
    tl_log = nullptr;
    fuse_session_destroy(s->se);
    delete s;
    return Fail(env, "fuse_session_mount: " + (log.empty() ? std::string(strerror(err)) : log), err);
  }
  tl_log = nullptr;
  s->wake = eventfd(0, EFD_CLOEXEC);
  s->tsfn = Napi::ThreadSafeFunction::New(env, info[3].As<Napi::Function>(), "fractos_fuse", 0, 1, s, Finalize, s);
  s->loop = std::thread(Loop, s);
  return Napi::External<Session>::New(env, s, FinalizeExternal);
}

void StopSession(Session* s) {
  if (s->stopped) return;
  s->stopping.store(true);
  uint64_t one = 1;
  if (write(s->wake, &one, sizeof one) < 0) {
    // an eventfd write fails only on overflow: the loop is woken anyway
  }
  s->loop.join();
  s->stopped = true;
  if (Dax* d = s->dax.load()) {
    d->closed = true;
    DaxFailAll(d, ENOTCONN);
    uv_close(reinterpret_cast<uv_handle_t*>(d->async), [](uv_handle_t* h) { std::free(h); });
    d->async = nullptr;
  }
  {
    std::lock_guard<std::mutex> g(s->mu);
    for (auto& [id, req] : s->reqs) fuse_reply_err(req, ENOTCONN);
    s->reqs.clear();
  }
  fuse_session_unmount(s->se);
  fuse_session_destroy(s->se);
  s->se = nullptr;
  close(s->wake);
  s->tsfn.Release();
}

// stop(session): see the module comment. Idempotent.
Napi::Value Stop(const Napi::CallbackInfo& info) {
  Session* s = SessionOf(info);
  if (!s) return Fail(info.Env(), "stop: not a session", EINVAL);
  StopSession(s);
  return info.Env().Undefined();
}

// Take request `id` out of the table (null: unknown, answered, or stopped).
fuse_req_t Take(Session* s, const Napi::Value& v) {
  if (!s || s->stopped || !v.IsNumber()) return nullptr;
  uint64_t id = static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
  std::lock_guard<std::mutex> g(s->mu);
  auto it = s->reqs.find(id);
  if (it == s->reqs.end()) return nullptr;
  fuse_req_t r = it->second;
  s->reqs.erase(it);
  return r;
}

double Num(const Napi::CallbackInfo& info, size_t i) { return info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : 0; }

void FillStatRaw(const double* f, struct stat* st) {
  memset(st, 0, sizeof *st);
  st->st_ino = static_cast<ino_t>(f[A_INO]);
  st->st_mode = static_cast<mode_t>(f[A_MODE]);
  st->st_nlink = static_cast<nlink_t>(f[A_NLINK]);
  st->st_uid = static_cast<uid_t>(f[A_UID]);
  st->st_gid = static_cast<gid_t>(f[A_GID]);
  st->st_rdev = static_cast<dev_t>(f[A_RDEV]);
  st->st_size = static_cast<off_t>(f[A_SIZE]);
  st->st_blocks = static_cast<blkcnt_t>(f[A_BLOCKS]);
  st->st_blksize = 4096;
  st->st_atim.tv_sec = static_cast<time_t>(f[A_ATIME_S]);
  st->st_atim.tv_nsec = static_cast<long>(f[A_ATIME_NS]);
  st->st_mtim.tv_sec = static_cast<time_t>(f[A_MTIME_S]);
  st->st_mtim.tv_nsec = static_cast<long>(f[A_MTIME_NS]);
  st->st_ctim.tv_sec = static_cast<time_t>(f[A_CTIME_S]);
  st->st_ctim.tv_nsec = static_cast<long>(f[A_CTIME_NS]);
}

bool FillStat(const Napi::Value& v, struct stat* st) {
  memset(st, 0, sizeof *st);
  if (!v.IsTypedArray()) return false;
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array || ta.ElementLength() < static_cast<size_t>(A_FIELDS)) return false;
  FillStatRaw(v.As<Napi::Float64Array>().Data(), st);
  return true;
}

bool FillEntry(const Napi::CallbackInfo& info, size_t at, fuse_entry_param* e) {
  memset(e, 0, sizeof *e);
  e->ino = static_cast<fuse_ino_t>(Num(info, at));
  e->generation = static_cast<uint64_t>(Num(info, at + 1));
  if (e->ino != 0 && !FillStat(info[at + 2], &e->attr)) return false;
  e->attr_timeout = Num(info, at + 3);
  e->entry_timeout = Num(info, at + 4);
  return true;
}

void FillOpen(fuse_file_info* fi, double fh, uint32_t flags) {
  memset(fi, 0, sizeof *fi);
  fi->fh = static_cast<uint64_t>(fh);
  fi->direct_io = (flags & 1) != 0;
  fi->keep_cache = (flags & 2) != 0;
  fi->cache_readdir = (flags & 4) != 0;
  fi->noflush = (flags & 8) != 0;
  fi->nonseekable = (flags & 16) != 0;
}

Napi::Value Answered(Napi::Env env, fuse_req_t r, int res) { return Napi::Boolean::New(env, r != nullptr && res == 0); }

// replyErr(session, id, errno): errno 0 answers success for ops without data (flush, release, ...).
Napi::Value ReplyErr(const Napi::CallbackInfo& info) {
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_err(r, static_cast<int>(Num(info, 2))) : 0);
}

// replyEntry(session, id, ino, generation, attr, attrTimeout, entryTimeout): ino 0 = negative entry.
Napi::Value ReplyEntry(const Napi::CallbackInfo& info) {
  fuse_entry_param e;
  if (!FillEntry(info, 2, &e)) return Fail(info.Env(), "replyEntry: attr must be a Float64Array(14)", EINVAL);
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_entry(r, &e) : 0);
}

// replyCreate(session, id, ino, generation, attr, attrTimeout, entryTimeout, fh, openFlags)
Napi::Value ReplyCreate(const Napi::CallbackInfo& info) {
  fuse_entry_param e;
  if (!FillEntry(info, 2, &e) || e.ino == 0) return Fail(info.Env(), "replyCreate: bad entry", EINVAL);
  fuse_file_info fi;
  FillOpen(&fi, Num(info, 7), static_cast<uint32_t>(Num(info, 8)));
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_create(r, &e, &fi) : 0);
}

// replyAttr(session, id, attr, timeout)
Napi::Value ReplyAttr(const Napi::CallbackInfo& info) {
  struct stat st;
  if (!FillStat(info[2], &st)) return Fail(info.Env(), "replyAttr: attr must be a Float64Array(14)", EINVAL);
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_attr(r, &st, Num(info, 3)) : 0);
}

// replyReadlink(session, id, target)
Napi::Value ReplyReadlink(const Napi::CallbackInfo& info) {
  std::string t = info[2].ToString().Utf8Value();
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_readlink(r, t.c_str()) : 0);
}

// replyOpen(session, id, fh, openFlags: 1 direct_io, 2 keep_cache, 4 cache_readdir, 8 noflush, 16 nonseekable)
Napi::Value ReplyOpen(const Napi::CallbackInfo& info) {
  fuse_file_info fi;
  FillOpen(&fi, Num(info, 2), static_cast<uint32_t>(Num(info, 3)));
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_open(r, &fi) : 0);
}

// replyWrite(session, id, count)
Napi::Value ReplyWrite(const Napi::CallbackInfo& info) {
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_write(r, static_cast<size_t>(Num(info, 2))) : 0);
}

// replyBuf(session, id, bytes: Uint8Array | undefined): the bytes are copied to the kernel now.
Napi::Value ReplyBuf(const Napi::CallbackInfo& info) {
  const char* p = nullptr;
  size_t n = 0;
  if (info.Length() > 2 && info[2].IsTypedArray()) {
    Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
    p = static_cast<const char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    n = ta.ByteLength();
  }
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_buf(r, p, n) : 0);
}

// replyStatfs(session, id, Float64Array[bsize, frsize, blocks, bfree, bavail, files, ffree, favail, namemax])
Napi::Value ReplyStatfs(const Napi::CallbackInfo& info) {
  if (!info[2].IsTypedArray()) return Fail(info.Env(), "replyStatfs: Float64Array(9)", EINVAL);
  Napi::Float64Array f = info[2].As<Napi::Float64Array>();
  if (f.ElementLength() < 9) return Fail(info.Env(), "replyStatfs: Float64Array(9)", EINVAL);
  struct statvfs sv;
  memset(&sv, 0, sizeof sv);
  sv.f_bsize = static_cast<unsigned long>(f[0]);
  sv.f_frsize = static_cast<unsigned long>(f[1]);
  sv.f_blocks = static_cast<fsblkcnt_t>(f[2]);
  sv.f_bfree = static_cast<fsblkcnt_t>(f[3]);
  sv.f_bavail = static_cast<fsblkcnt_t>(f[4]);
  sv.f_files = static_cast<fsfilcnt_t>(f[5]);
  sv.f_ffree = static_cast<fsfilcnt_t>(f[6]);
  sv.f_favail = static_cast<fsfilcnt_t>(f[7]);
  sv.f_namemax = static_cast<unsigned long>(f[8]);
  fuse_req_t r = Take(SessionOf(info), info[1]);
  return Answered(info.Env(), r, r ? fuse_reply_statfs(r, &sv) : 0);
}

// replyDir(session, id, size, plus, names: string[], attrs: Float64Array(15 per name: attr + next
// offset), attrTimeout, entryTimeout) -> entries packed (those that fit in `size` bytes; the
// kernel asks again from the last one's next offset). readdir uses only ino and mode of attr.
Napi::Value ReplyDir(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = SessionOf(info);
  size_t size = static_cast<size_t>(Num(info, 2));
  bool plus = info[3].ToBoolean();
  if (!info[4].IsArray() || !info[5].IsTypedArray()) return Fail(env, "replyDir: names, attrs", EINVAL);
  Napi::Array names = info[4].As<Napi::Array>();
  Napi::Float64Array f = info[5].As<Napi::Float64Array>();
  uint32_t n = names.Length();
  if (f.ElementLength() < static_cast<size_t>(n) * (A_FIELDS + 1)) return Fail(env, "replyDir: attrs too short", EINVAL);
  fuse_req_t r = Take(s, info[1]);
  if (!r) return Napi::Number::New(env, -1);
  std::vector<char> buf(size);
  size_t used = 0;
  uint32_t i = 0;
  for (; i < n; i++) {
    std::string name = names.Get(i).ToString().Utf8Value();
    const double* a = f.Data() + static_cast<size_t>(i) * (A_FIELDS + 1);
    off_t next = static_cast<off_t>(a[A_FIELDS]);
    size_t need;
    if (plus) {
      fuse_entry_param e;
      memset(&e, 0, sizeof e);
      FillStatRaw(a, &e.attr);
      e.ino = static_cast<fuse_ino_t>(a[A_INO]);
      e.attr_timeout = Num(info, 6);
      e.entry_timeout = Num(info, 7);
      need = fuse_add_direntry_plus(r, buf.data() + used, size - used, name.c_str(), &e, next);
    } else {
      struct stat st;
      memset(&st, 0, sizeof st);
      st.st_ino = static_cast<ino_t>(a[A_INO]);
      st.st_mode = static_cast<mode_t>(a[A_MODE]);
      need = fuse_add_direntry(r, buf.data() + used, size - used, name.c_str(), &st, next);
    }
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(r, buf.data(), used);
  return Napi::Number::New(env, i);
}

// invalEntry(session, parent, name) / invalInode(session, ino, off, len): tell the kernel to drop
// a cached name or attributes/data (another client changed the FS). 0 or -errno (-ENOENT: not cached).
Napi::Value InvalEntry(const Napi::CallbackInfo& info) {
  Session* s = SessionOf(info);
  if (!s || s->stopped) return Napi::Number::New(info.Env(), -ENOTCONN);
  std::string name = info[2].ToString().Utf8Value();
  return Napi::Number::New(info.Env(), fuse_lowlevel_notify_inval_entry(s->se, static_cast<fuse_ino_t>(Num(info, 1)), name.c_str(), name.size()));
}

Napi::Value InvalInode(const Napi::CallbackInfo& info) {
  Session* s = SessionOf(info);
  if (!s || s->stopped) return Napi::Number::New(info.Env(), -ENOTCONN);
  return Napi::Number::New(info.Env(), fuse_lowlevel_notify_inval_inode(s->se, static_cast<fuse_ino_t>(Num(info, 1)), static_cast<off_t>(Num(info, 2)), static_cast<off_t>(Num(info, 3))));
}

// pending(session): requests received and not yet answered (for tests and stats).
Napi::Value Pending(const Napi::CallbackInfo& info) {
  Session* s = SessionOf(info);
  if (!s) return Napi::Number::New(info.Env(), 0);
  std::lock_guard<std::mutex> g(s->mu);
  return Napi::Number::New(info.Env(), static_cast<double>(s->reqs.size()));
}


// ---- native DAX reads: JS side ---------------------------------------------------------------

// daxSetup(session, cfg: Uint32Array[9] (okTag, errTag, fOffset, sBuffer, sOk, sErr, bytesOff,
// codeOff, direct: 1 = the FUSE thread sends its invokes itself when the channel can, fFlags:
// the write layout's flags, 0xffffffff = no native writes), region: ArrayBuffer, at, slotBytes, caps: Uint32Array (3 per slot: Memory, onSuccess,
// onError; the continuations preset with the slot index as a u32 at offset 0)) -> the frame hook
// (an External, for Process.setFrameHook with the session as owner). Slot i is
// region[at + i * slotBytes, + slotBytes). Once per session.
Napi::Value DaxSetup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = SessionOf(info);
  if (!s || s->stopped || s->dax.load()) return Fail(env, "daxSetup: not a session, stopped, or set up already", EINVAL);
  if (info.Length() < 6 || !info[1].IsTypedArray() || !info[2].IsArrayBuffer() || !info[3].IsNumber() || !info[4].IsNumber() || !info[5].IsTypedArray())
    return Fail(env, "daxSetup(session, cfg, region, at, slotBytes, caps)", EINVAL);
  Napi::TypedArray cfgT = info[1].As<Napi::TypedArray>(), capsT = info[5].As<Napi::TypedArray>();
  if (cfgT.TypedArrayType() != napi_uint32_array || cfgT.ElementLength() != 10 || capsT.TypedArrayType() != napi_uint32_array || capsT.ElementLength() % 3 != 0)
    return Fail(env, "daxSetup: cfg Uint32Array(10), caps Uint32Array(3 per slot)", EINVAL);
  const uint32_t* c = cfgT.As<Napi::Uint32Array>().Data();
  const uint32_t* caps = capsT.As<Napi::Uint32Array>().Data();
  size_t n = capsT.ElementLength() / 3;
  Napi::ArrayBuffer ab = info[2].As<Napi::ArrayBuffer>();
  double at = info[3].As<Napi::Number>().DoubleValue(), sb = info[4].As<Napi::Number>().DoubleValue();
  if (n == 0 || n > DX_MAX_SLOTS || !(sb >= 4096 && sb <= (1 << 20)) || !(at >= 0) || at + sb * double(n) > double(ab.ByteLength()))
    return Fail(env, "daxSetup: slots outside the region, or not 1..1024 slots of 4 KiB..1 MiB", EINVAL);
  Dax* d = new Dax();
  d->s = s;
  d->okTag = c[0], d->errTag = c[1], d->fOffset = c[2], d->sBuffer = c[3], d->sOk = c[4], d->sErr = c[5], d->bytesOff = c[6], d->codeOff = c[7];
  d->directSend = c[8] != 0;
  d->writes = c[9] == c[2] + 12;  // flags right after offset (u64) and length (u32): one immediate
  d->regionRef = Napi::Persistent(ab);
  d->base = static_cast<uint8_t*>(ab.Data()) + size_t(at);
  d->slotBytes = uint32_t(sb);
  d->slots.resize(n);
  for (size_t i = 0; i < n; i++) {
    d->slots[i].mem = caps[3 * i];
    d->slots[i].ok = caps[3 * i + 1];
    d->slots[i].err = caps[3 * i + 2];
  }
  for (size_t i = n; i-- > 0;) d->freeSlots.push_back(uint32_t(i));
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  d->async = static_cast<uv_async_t*>(std::malloc(sizeof(uv_async_t)));
  if (!d->async || uv_async_init(loop, d->async, DaxOnAsync) != 0) {
    std::free(d->async);
    delete d;
    return Fail(env, "daxSetup: uv_async_init", EIO);
  }
  d->async->data = d;
  uv_unref(reinterpret_cast<uv_handle_t*>(d->async));
  d->hook = fractos_frame_hook{FRACTOS_FRAME_HOOK_MAGIC, FRACTOS_FRAME_HOOK_ABI, sizeof(fractos_frame_hook), 0, d, DaxAttach, DaxDetach, DaxOnFrame, DaxFlush};
  s->dax.store(d);
  return Napi::External<fractos_frame_hook>::New(env, &d->hook);
}

// daxFile(session, fh, ino, size, blockSize, extents: Float64Array (fileOffset, length, readCid,
// writeCid per extent)): reads of handle fh within `size` bytes may be served natively.
Napi::Value DaxFileJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = SessionOf(info);
  Dax* d = s ? s->dax.load() : nullptr;
  if (!d) return Napi::Boolean::New(env, false);
  if (info.Length() < 6 || !info[5].IsTypedArray()) return Fail(env, "daxFile(session, fh, ino, size, blockSize, extents)", EINVAL);
  Napi::TypedArray t = info[5].As<Napi::TypedArray>();
  if (t.TypedArrayType() != napi_float64_array || t.ElementLength() % 4 != 0) return Fail(env, "daxFile: extents Float64Array(4 per extent)", EINVAL);
  const double* x = t.As<Napi::Float64Array>().Data();
  DaxFile f;
  f.ino = uint64_t(Num(info, 2));
  f.size = uint64_t(Num(info, 3));
  uint32_t bs = uint32_t(Num(info, 4));
  if (bs < 512 || (bs & (bs - 1)) != 0) return Fail(env, "daxFile: block size not a power of two >= 512", EINVAL);
  f.blockSize = bs;
  for (size_t i = 0; i + 4 <= t.ElementLength(); i += 4) f.extents.push_back(DaxExtent{uint64_t(x[i]), uint64_t(x[i + 1]), uint32_t(x[i + 2]), uint32_t(x[i + 3])});
  std::lock_guard<std::mutex> g(d->mu);
  if (!d->open) return Napi::Boolean::New(env, false);
  DaxFile& slot = d->files[uint64_t(Num(info, 1))];
  f.written = slot.written;
  slot = std::move(f);
  return Napi::Boolean::New(env, true);
}

// daxForget(session, fh) -> wrote: handle fh is served by JS only from now on (ops taken
// before complete); true when it wrote natively since it was registered.
Napi::Value DaxForget(const Napi::CallbackInfo& info) {
  Session* s = SessionOf(info);
  Dax* d = s ? s->dax.load() : nullptr;
  return Napi::Boolean::New(info.Env(), d ? DaxForgetFh(d, uint64_t(Num(info, 1))) : false);
}

// daxStats(session) -> {reads, fallbacks, declined, errors, inflight, files, attached, handoffNs
// (mean, FUSE thread to the invoke sent), serviceNs (mean, invoke sent to the kernel answered)} | null
Napi::Value DaxStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Session* s = SessionOf(info);
  Dax* d = s ? s->dax.load() : nullptr;
  if (!d) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  std::lock_guard<std::mutex> g(d->mu);
  o.Set("reads", Napi::Number::New(env, double(d->reads)));
  o.Set("writes", Napi::Number::New(env, double(d->writes_)));
  o.Set("fallbacks", Napi::Number::New(env, double(d->fallbacks)));
  o.Set("declined", Napi::Number::New(env, double(d->declined)));
  o.Set("errors", Napi::Number::New(env, double(d->errors)));
  o.Set("inflight", Napi::Number::New(env, double(d->inflight)));
  o.Set("direct", Napi::Number::New(env, double(d->direct)));
  o.Set("files", Napi::Number::New(env, double(d->files.size())));
  o.Set("attached", Napi::Boolean::New(env, d->ops != nullptr));
  o.Set("handoffNs", Napi::Number::New(env, d->sent ? double(d->handoffNs) / double(d->sent) : 0));
  o.Set("serviceNs", Napi::Number::New(env, d->reads ? double(d->serviceNs) / double(d->reads) : 0));
  return o;
}

void DaxDelete(Dax* d) {
  d->regionRef.Reset();
  delete d;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  fuse_set_log_func(LogFunc);
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("stop", Napi::Function::New(env, Stop));
  exports.Set("replyErr", Napi::Function::New(env, ReplyErr));
  exports.Set("replyEntry", Napi::Function::New(env, ReplyEntry));
  exports.Set("replyCreate", Napi::Function::New(env, ReplyCreate));
  exports.Set("replyAttr", Napi::Function::New(env, ReplyAttr));
  exports.Set("replyReadlink", Napi::Function::New(env, ReplyReadlink));
  exports.Set("replyOpen", Napi::Function::New(env, ReplyOpen));
  exports.Set("replyWrite", Napi::Function::New(env, ReplyWrite));
  exports.Set("replyBuf", Napi::Function::New(env, ReplyBuf));
  exports.Set("replyStatfs", Napi::Function::New(env, ReplyStatfs));
  exports.Set("replyDir", Napi::Function::New(env, ReplyDir));
  exports.Set("invalEntry", Napi::Function::New(env, InvalEntry));
  exports.Set("invalInode", Napi::Function::New(env, InvalInode));
  exports.Set("pending", Napi::Function::New(env, Pending));
  exports.Set("daxSetup", Napi::Function::New(env, DaxSetup));
  exports.Set("daxFile", Napi::Function::New(env, DaxFileJs));
  exports.Set("daxForget", Napi::Function::New(env, DaxForget));
  exports.Set("daxStats", Napi::Function::New(env, DaxStats));
  return exports;
}

}  // namespace

NODE_API_MODULE(fractos_fuse, Init)

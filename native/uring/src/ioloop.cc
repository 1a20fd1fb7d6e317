// The block-device adaptor's native I/O loop (issue #8 item 6; docs/blockdev-backend.md
// "The native I/O loop"): read/write deliveries of volume Requests are taken off the
// Process's channel in C++ (through the frame hook of native/include/frame_hook.h, which the
// queue addon's frame splitter calls), checked exactly as blockdev-adaptor/service.ts checks
// them, turned into io_uring SQEs that target the client's mapped Memory, submitted once per
// drained batch, and on completion the continuation is invoked (a REQUEST_INVOKE frame with
// IoReply's immediate; REQUEST_INVOKE_QUIET, whose success REPLY wakes nobody), the delivered caps dropped (CAP_DROP_MANY) and the delivery credits
// returned (DELIVER_ACK), without entering JS.
//
// Anything that is not the plain case is passed to JS unchanged (the hook returns 0), which
// then serves it exactly as before: a check that fails (JS answers with its typed error), a
// buffer whose region is not registered here (JS maps it with MEMORY_MAP, registers it, and
// later deliveries come here), no descriptor, FUA writes, a full slot table, a malformed
// body. Only I/O results that are not the full length go to JS (`onError`), which answers
// onError with the same code and message as its own path and drops the caps.
//
// Safety against a hostile client: the loop only ever reads or writes
// [regionOffset, regionOffset + length) of a registered mapping, checked against the size of
// that mapping (not against anything the client wrote), and only [vol.start + offset,
// + length) of the device with offset + length <= vol.length; a mapping stays mapped (a
// strong reference to its ArrayBuffer) while I/O into it is in flight, even when JS drops it.
#include <napi.h>
#include <uv.h>

#include <liburing.h>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "frame_hook.h"
#include "hook_frames.h"

namespace fractos::ioloop {

namespace {

using namespace fractos::hookframes;  // op codes, HEADER, SEQ_NATIVE, ld/st, header, credit frames

// Wire constants of docs/protocol.md (libfractos/protocol.ts Perm, Backing, MemFlag).
constexpr uint8_t PERM_READ = 1, PERM_WRITE = 2;
constexpr uint8_t BACKING_SHARED = 0;
constexpr uint8_t MEMFLAG_LOCAL = 1;
constexpr uint32_t DESCRIPTOR_BYTES = 40;
/** Bytes of one REQUEST_INVOKE_QUIET the loop sends (see Complete). */
constexpr uint32_t INVOKE_BYTES = HEADER + 4 + 4 + 8 + 4;

/** Why a delivery went to JS (stats().fallbacks). */
enum Fallback : uint8_t {
  FB_CHECK,       // a check failed: JS answers with its typed error
  FB_NO_DESC,     // no Memory descriptor (not local, or not asked): JS does memory_stat
  FB_UNMAPPED,    // region not registered here (first use, read-only mapping for a read, not shared)
  FB_UNALIGNED,   // region offset not aligned for O_DIRECT: JS bounces
  FB_FUA,         // write with FUA: JS writes and flushes
  FB_BUSY,        // slot table or SQ full
  FB_SHAPE,       // a body the loop does not parse (extra caps, split immediates, malformed)
  FB_COUNT
};
const char* const kFallbackNames[FB_COUNT] = {"check", "noDescriptor", "unmapped", "unaligned", "fua", "busy", "shape"};

struct Volume {
  uint64_t start;
  uint64_t length;
};

struct Region {
  uint8_t* base = nullptr;
  uint64_t size = 0;
  bool writable = false;
  bool dead = false;  // unregistered while I/O was in flight: freed by the last completion
  uint32_t inflight = 0;
  Napi::Reference<Napi::ArrayBuffer> ref;
};

struct Slot {
  Region* region;
  uint64_t offset;  // in the volume
  uint32_t volume;
  uint32_t length;
  uint32_t buf, ok, fail;
  bool write;
};

}  // namespace

class IoLoop : public Napi::ObjectWrap<IoLoop> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "IoLoop",
                       {InstanceMethod<&IoLoop::Hook>("hook"), InstanceMethod<&IoLoop::SetVolume>("setVolume"),
                        InstanceMethod<&IoLoop::RemoveVolume>("removeVolume"),
                        InstanceMethod<&IoLoop::RegisterRegion>("registerRegion"),
                        InstanceMethod<&IoLoop::UnregisterRegion>("unregisterRegion"),
                        InstanceMethod<&IoLoop::Stats>("stats"), InstanceMethod<&IoLoop::Close>("close")});
  }

  // new IoLoop(fd, entries, cfg: Uint32Array[14], onError(write, volume, offset, length, res, buf, ok, fail))
  // cfg: readTag, writeTag, fVolume, fOffset, fLength, fFlags, sBuffer, sOk, sErr, replyOff,
  //      maxIo, blockSize, memAlign, fuaFlag
  explicit IoLoop(const Napi::CallbackInfo& info) : Napi::ObjectWrap<IoLoop>(info) {
    Napi::Env env = info.Env();
    env_ = env;
    if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsTypedArray() || !info[3].IsFunction())
      throw Napi::TypeError::New(env, "IoLoop(fd, entries, cfg: Uint32Array, onError)");
    auto cfg = info[2].As<Napi::TypedArray>();
    if (cfg.TypedArrayType() != napi_uint32_array || cfg.ElementLength() != 14)
      throw Napi::TypeError::New(env, "IoLoop: cfg must be a Uint32Array of 14");
    const uint32_t* c = reinterpret_cast<const uint32_t*>(static_cast<uint8_t*>(cfg.ArrayBuffer().Data()) + cfg.ByteOffset());
    readTag_ = c[0];
    writeTag_ = c[1];
    fVolume_ = c[2];
    fOffset_ = c[3];
    fLength_ = c[4];
    fFlags_ = c[5];
    sBuffer_ = c[6];
    sOk_ = c[7];
    sErr_ = c[8];
    replyOff_ = c[9];
    maxIo_ = c[10];
    blockSize_ = c[11];
    align_ = c[12] > 512 ? c[12] : 512;
    fua_ = c[13];
    if (blockSize_ == 0 || (blockSize_ & (blockSize_ - 1)) != 0) throw Napi::RangeError::New(env, "IoLoop: block size must be a power of two");
    unsigned entries = info[1].As<Napi::Number>().Uint32Value();
    if (entries < 1 || entries > 4096) throw Napi::RangeError::New(env, "IoLoop: entries in [1, 4096]");
    onError_ = Napi::Persistent(info[3].As<Napi::Function>());
    fd_ = fcntl(info[0].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
    if (fd_ < 0) throw Napi::Error::New(env, std::string("IoLoop: dup: ") + strerror(errno));
    int r = io_uring_queue_init(entries, &ring_, 0);
    if (r < 0) {
      ::close(fd_);
      throw Napi::Error::New(env, std::string("IoLoop: io_uring_queue_init: ") + strerror(-r));
    }
    ringUp_ = true;
    slots_.resize(ring_.sq.ring_entries);
    for (uint32_t i = uint32_t(slots_.size()); i-- > 0;) free_.push_back(i);
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0 || io_uring_register_eventfd(&ring_, efd_) < 0) {
      Teardown(false);
      throw Napi::Error::New(env, "IoLoop: eventfd");
    }
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = static_cast<uv_poll_t*>(std::malloc(sizeof(uv_poll_t)));  // freed by uv_close (Teardown)
    if (!poll_ || uv_poll_init(loop, poll_, efd_) != 0) {
      std::free(poll_);
      poll_ = nullptr;
      Teardown(false);
      throw Napi::Error::New(env, "IoLoop: uv_poll_init");
    }
    poll_->data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(poll_));  // referenced only while I/O is in flight (close() waits for it)
    uv_poll_start(poll_, UV_READABLE, &IoLoop::OnPoll);
    hook_ = fractos_frame_hook{FRACTOS_FRAME_HOOK_MAGIC, FRACTOS_FRAME_HOOK_ABI, sizeof(fractos_frame_hook), 0, this,
                               &IoLoop::HAttach, &IoLoop::HDetach, &IoLoop::HFrame, &IoLoop::HFlush};
    out_.reserve(64 * 1024);
    napi_add_env_cleanup_hook(env, &IoLoop::CleanupHook, this);
    cleanupAdded_ = true;
  }

  ~IoLoop() override { Teardown(false); }

 private:
  // ---- JS API ------------------------------------------------------------------------------

  // hook() -> External of the fractos_frame_hook (pass to the queue addon's setFrameHook)
  Napi::Value Hook(const Napi::CallbackInfo& info) {
    return Napi::External<fractos_frame_hook>::New(info.Env(), &hook_);
  }

  // setVolume(id, start, length): deliveries for volume `id` map [0, length) to the device at start
  Napi::Value SetVolume(const Napi::CallbackInfo& info) {
    uint32_t id = info[0].As<Napi::Number>().Uint32Value();
    double s = info[1].As<Napi::Number>().DoubleValue(), l = info[2].As<Napi::Number>().DoubleValue();
    if (!(s >= 0 && l >= 0 && s + l <= 9007199254740992.0)) throw Napi::RangeError::New(info.Env(), "setVolume: bad range");
    volumes_[id] = Volume{uint64_t(s), uint64_t(l)};
    return info.Env().Undefined();
  }

  // removeVolume(id): later deliveries for it go to JS (ENOENT); I/O in flight completes
  Napi::Value RemoveVolume(const Napi::CallbackInfo& info) {
    volumes_.erase(info[0].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
  }

  // registerRegion(key, buffer: ArrayBuffer, writable): the whole mapping of region `key`
  Napi::Value RegisterRegion(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsArrayBuffer()) throw Napi::TypeError::New(env, "registerRegion(key, buffer, writable)");
    uint64_t key = uint64_t(info[0].As<Napi::Number>().DoubleValue());
    auto ab = info[1].As<Napi::ArrayBuffer>();
    bool writable = info[2].ToBoolean();
    auto it = regions_.find(key);
    if (it != regions_.end()) {
      if (it->second->base == ab.Data() && it->second->writable == writable) return env.Undefined();
      if (it->second->writable && !writable) return env.Undefined();  // a read-only mapping never replaces a writable one
      Retire(it->second);
      regions_.erase(it);
    }
    if (regions_.size() >= kMaxRegions) throw Napi::RangeError::New(env, "registerRegion: too many regions");
    auto* r = new Region();
    r->base = static_cast<uint8_t*>(ab.Data());
    r->size = ab.ByteLength();
    r->writable = writable;
    r->ref = Napi::Persistent(ab);
    regions_[key] = r;
    return env.Undefined();
  }

  // unregisterRegion(key, buffer): forget it if `buffer` is the one registered (JS dropped it)
  Napi::Value UnregisterRegion(const Napi::CallbackInfo& info) {
    uint64_t key = uint64_t(info[0].As<Napi::Number>().DoubleValue());
    auto it = regions_.find(key);
    if (it != regions_.end() && (!info[1].IsArrayBuffer() || info[1].As<Napi::ArrayBuffer>().Data() == it->second->base)) {
      Retire(it->second);
      regions_.erase(it);
    }
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("reads", Napi::Number::New(env, double(reads_)));
    o.Set("writes", Napi::Number::New(env, double(writes_)));
    o.Set("ioErrors", Napi::Number::New(env, double(ioErrors_)));
    o.Set("invokeErrors", Napi::Number::New(env, double(invokeErrors_)));
    o.Set("submits", Napi::Number::New(env, double(submits_)));
    o.Set("spins", Napi::Number::New(env, double(spins_)));
    o.Set("spinHits", Napi::Number::New(env, double(spinHits_)));
    o.Set("inFlight", Napi::Number::New(env, double(inflight_)));
    o.Set("regions", Napi::Number::New(env, double(regions_.size())));
    o.Set("volumes", Napi::Number::New(env, double(volumes_.size())));
    o.Set("attached", Napi::Boolean::New(env, ops_ != nullptr));
    Napi::Object f = Napi::Object::New(env);
    for (int i = 0; i < FB_COUNT; i++) f.Set(kFallbackNames[i], Napi::Number::New(env, double(fallbacks_[i])));
    o.Set("fallbacks", f);
    return o;
  }

  // close(cb): take no more deliveries; cb() once the I/O in flight completed and the ring is gone
  Napi::Value Close(const Napi::CallbackInfo& info) {
    closing_ = true;
    if (info.Length() > 0 && info[0].IsFunction()) closeCb_ = Napi::Persistent(info[0].As<Napi::Function>());
    MaybeFinishClose();
    return info.Env().Undefined();
  }

  // ---- the frame hook (frame_hook.h) -----------------------------------------------------

  static int HAttach(void* ctx, const fractos_chan_ops* ops) {
    auto* self = static_cast<IoLoop*>(ctx);
    if (!ops || ops->abi != FRACTOS_FRAME_HOOK_ABI || ops->size < sizeof(fractos_chan_ops) || !ops->send) return -EINVAL;
    if (self->ops_) return -EBUSY;
    if (self->closed_ || self->closing_) return -EPIPE;
    self->ops_ = ops;
    return 0;
  }

  static void HDetach(void* ctx) {
    auto* self = static_cast<IoLoop*>(ctx);
    self->ops_ = nullptr;
    self->acks_ = 0;
    self->out_.clear();
  }

  static int HFrame(void* ctx, const uint8_t* f, uint32_t len) { return static_cast<IoLoop*>(ctx)->OnFrame(f, len); }

  static void HFlush(void* ctx) {
    auto* self = static_cast<IoLoop*>(ctx);
    if (self->closed_) return;
    if (self->prepped_) {
      int r = io_uring_submit(&self->ring_);
      self->submits_++;
      if (r >= 0) self->prepped_ = 0;
      // r < 0 (EAGAIN/EBUSY: CQ overflow): the SQEs stay queued; the next flush or completion submits them
    }
    // Our credits: only a DELIVER_ACK is due here (answers go out on completion), and nobody
    // waits for it: published without waking the Controller (docs/queues.md).
    appendDeliverAck(self->out_, self->acks_);
    self->Send(self->out_.size() == HEADER + 4 ? FRACTOS_SEND_QUIET : 0);
    self->SpinForCompletions();
  }

  /**
   * With I/O in flight, before the loop goes back to sleep: poll the completion queue up to
   * spinNs_ when set (the device answers in tens of µs here; waking a sleeping vCPU costs 25-100 µs),
   * within the host's spinner budget (the channel's `spin`, docs/queues.md "Spinner budget"),
   * and reap at once what came. Returns early when the channel has frames (new deliveries
   * are served first). Not nested: the reap's own flush does not spin again.
   */
  void SpinForCompletions() {
    if (spinNs_ == 0 || spinning_ || inflight_ == 0 || closed_ || !ops_ || ops_->size < sizeof(fractos_chan_ops) || !ops_->spin) return;
    spinning_ = true;
    int got = ops_->spin(ops_->chan, [](void* a) { return io_uring_cq_ready(&static_cast<IoLoop*>(a)->ring_) > 0 ? 1 : 0; }, this, spinNs_);
    spins_++;
    if (got > 0 && io_uring_cq_ready(&ring_) > 0) {
      spinHits_++;
      Reap();
    }
    spinning_ = false;
  }

  /** The plain case (see the file comment), or 0: JS serves the frame. */
  int OnFrame(const uint8_t* f, uint32_t len) {
    const uint16_t op = ld16(f + 4);
    if (op == OP_REPLY) {
      uint32_t seq = ld32(f + 8);
      if (!(seq & SEQ_NATIVE)) return 0;
      if (ld16(f + 12) != 0) invokeErrors_++;  // like the JS path, a failed continuation is not retried
      return 1;
    }
    if (op != OP_DELIVER || !ops_ || closing_ || closed_ || len < HEADER + 8) return 0;
    const uint32_t tag = ld32(f + 16);
    const bool write = tag == writeTag_;
    if (!write && tag != readTag_) return 0;
    // args: u16 nCaps, u16 nImms, nCaps x (u16 slot, u16 0, u32 cid), nImms x (u32 off, u32 len, bytes)
    const uint8_t* end = f + len;
    const uint8_t* p = f + 20;
    const uint16_t nCaps = ld16(p), nImms = ld16(p + 2);
    p += 4;
    if (nCaps > 3 || nImms > 8 || uint32_t(end - p) < uint32_t(nCaps) * 8) return Fall(FB_SHAPE);
    uint32_t buf = 0, ok = 0, fail = 0;
    for (uint16_t i = 0; i < nCaps; i++, p += 8) {
      uint16_t slot = ld16(p);
      uint32_t cid = ld32(p + 4);
      if (slot == sBuffer_) buf = cid;
      else if (slot == sOk_) ok = cid;
      else if (slot == sErr_) fail = cid;
      else return Fall(FB_SHAPE);  // JS drops other caps too; not the plain case
    }
    const uint8_t* imm[8];
    uint32_t immOff[8], immLen[8];
    for (uint16_t i = 0; i < nImms; i++) {
      if (end - p < 8) return Fall(FB_SHAPE);
      immOff[i] = ld32(p);
      immLen[i] = ld32(p + 4);
      p += 8;
      if (uint64_t(end - p) < immLen[i]) return Fall(FB_SHAPE);
      imm[i] = p;
      p += immLen[i];
    }
    // The first range that covers a field whole (service.ts u32At/u64At through immView).
    auto field = [&](uint32_t off, uint32_t n) -> const uint8_t* {
      for (uint16_t i = 0; i < nImms; i++)
        if (immOff[i] <= off && uint64_t(off) + n <= uint64_t(immOff[i]) + immLen[i]) return imm[i] + (off - immOff[i]);
      return nullptr;
    };
    const uint8_t* pv = field(fVolume_, 4);
    const uint8_t* po = field(fOffset_, 8);
    const uint8_t* pl = field(fLength_, 4);
    if (!pv || !po || !pl) return Fall(FB_SHAPE);
    if (write) {
      const uint8_t* pf = field(fFlags_, 4);
      if (pf && (ld32(pf) & fua_)) return Fall(FB_FUA);
    }
    // Memory descriptors: u16 n, n x (u16 slot, u8 perms, u8 backing, u8 flags, u8 0, u16 0,
    // u64 size, u64 regionOffset, u64 servedKey, u64 regionKey); the last one of a slot counts.
    const uint8_t* desc = nullptr;
    if (end - p >= 2) {
      uint16_t n = ld16(p);
      p += 2;
      if (uint64_t(end - p) < uint64_t(n) * DESCRIPTOR_BYTES) return Fall(FB_SHAPE);
      for (uint16_t i = 0; i < n; i++, p += DESCRIPTOR_BYTES)
        if (ld16(p) == sBuffer_) desc = p;
    }
    // service.ts #io's checks, in its order; a failure is JS's to answer.
    const uint32_t volId = ld32(pv);
    const uint64_t offset = ld64(po);
    const uint32_t length = ld32(pl);
    auto vit = volumes_.find(volId);
    if (vit == volumes_.end() || !buf || !ok || !fail) return Fall(FB_CHECK);
    const Volume& vol = vit->second;
    if (length == 0 || length > maxIo_ || offset >= (uint64_t(1) << 53)) return Fall(FB_CHECK);
    if ((offset & (blockSize_ - 1)) != 0 || (length & (blockSize_ - 1)) != 0) return Fall(FB_CHECK);
    if (offset + length > vol.length) return Fall(FB_CHECK);
    if (!desc) return Fall(FB_NO_DESC);
    const uint8_t perms = desc[2], backing = desc[3], flags = desc[4];
    const uint64_t size = ld64(desc + 8), regionOffset = ld64(desc + 16), regionKey = ld64(desc + 32);
    if (!(perms & (write ? PERM_READ : PERM_WRITE))) return Fall(FB_CHECK);
    if (size < length) return Fall(FB_CHECK);
    if (regionOffset % align_ != 0) return Fall(FB_UNALIGNED);
    if (!(flags & MEMFLAG_LOCAL) || backing != BACKING_SHARED || regionKey == 0) return Fall(FB_UNMAPPED);
    auto rit = regions_.find(regionKey);
    if (rit == regions_.end()) return Fall(FB_UNMAPPED);
    Region* r = rit->second;
    // A read stores into the client's Memory: its mapping must be writable. The bytes must lie
    // inside the mapping we hold, whatever the descriptor says.
    if ((!write && !r->writable) || regionOffset > r->size || length > r->size - regionOffset) return Fall(FB_UNMAPPED);
    if (free_.empty()) return Fall(FB_BUSY);
    struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) return Fall(FB_BUSY);
    uint32_t si = free_.back();
    free_.pop_back();
    slots_[si] = Slot{r, offset, volId, length, buf, ok, fail, write};
    uint8_t* addr = r->base + regionOffset;
    if (write) io_uring_prep_write(sqe, fd_, addr, length, vol.start + offset);
    else io_uring_prep_read(sqe, fd_, addr, length, vol.start + offset);
    io_uring_sqe_set_data(sqe, reinterpret_cast<void*>(uintptr_t(si)));
    r->inflight++;
    if (inflight_++ == 0 && poll_) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));  // the loop stays up while I/O is in flight
    prepped_++;
    acks_++;
    return 1;
  }

  int Fall(Fallback why) {
    fallbacks_[why]++;
    return 0;
  }

  // ---- completions ----------------------------------------------------------------------

  static void OnPoll(uv_poll_t* h, int status, int) {
    auto* self = static_cast<IoLoop*>(h->data);
    if (status < 0 || self->closed_) return;
    self->Reap();
  }

  struct Failed {
    Slot s;
    int32_t res;
  };

  void Reap() {
    uint64_t v;
    while (::read(efd_, &v, sizeof v) > 0) {
    }
    failed_.clear();
    struct io_uring_cqe* cqes[256];
    for (;;) {
      unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 256);
      if (n == 0) break;
      for (unsigned i = 0; i < n; i++) {
        uint32_t si = uint32_t(reinterpret_cast<uintptr_t>(io_uring_cqe_get_data(cqes[i])));
        int32_t res = cqes[i]->res;
        if (si >= slots_.size()) continue;
        Slot& s = slots_[si];
        if (res == int32_t(s.length)) {
          (s.write ? writes_ : reads_)++;
          if (ops_) Complete(s);
        } else {
          ioErrors_++;
          failed_.push_back(Failed{s, res});
        }
        Release(s.region);
        if (--inflight_ == 0 && poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
        free_.push_back(si);
      }
      io_uring_cq_advance(&ring_, n);
    }
    if (ops_) appendDropMany(out_, drops_);
    drops_.clear();
    if (prepped_) HFlush(this);  // SQEs a failed submit left behind
    else Send();
    // I/O errors (rare): JS answers onError with its own code and message and drops the caps.
    if (!failed_.empty() && ops_) {
      Napi::HandleScope scope(env_);
      for (const Failed& x : failed_) {
        const Slot& s = x.s;
        onError_.MakeCallback(Value(), {Napi::Boolean::New(env_, s.write), Napi::Number::New(env_, s.volume), Napi::Number::New(env_, double(s.offset)),
                                        Napi::Number::New(env_, s.length), Napi::Number::New(env_, x.res), Napi::Number::New(env_, s.buf),
                                        Napi::Number::New(env_, s.ok), Napi::Number::New(env_, s.fail)});
        if (env_.IsExceptionPending()) {
          Napi::Error e = env_.GetAndClearPendingException();
          napi_fatal_exception(env_, e.Value());
        }
      }
    }
    failed_.clear();
    MaybeFinishClose();
  }

  /**
   * The continuation with IoReply's length (service.ts done2), then the caps go. Quiet: its
   * success REPLY is taken with our next woken batch (a refused one still wakes us).
   */
  void Complete(const Slot& s) {
    uint8_t* p = grow(out_, INVOKE_BYTES);
    // u32 cid, args: u16 0 caps, u16 1 imm, (u32 offset, u32 4, u32 length)
    header(p, INVOKE_BYTES, OP_REQUEST_INVOKE_QUIET, SEQ_NATIVE | (seq_++ & 0x7fffffffu));
    st32(p + 16, s.ok);
    st16(p + 20, 0);
    st16(p + 22, 1);
    st32(p + 24, replyOff_);
    st32(p + 28, 4);
    st32(p + 32, s.length);
    drops_.push_back(s.buf);
    if (s.ok != s.buf) drops_.push_back(s.ok);
    if (s.fail != s.buf && s.fail != s.ok) drops_.push_back(s.fail);
  }

  void Send(uint32_t flags = 0) {
    if (out_.empty()) return;
    if (ops_) {
      struct iovec iov{out_.data(), out_.size()};
      ops_->send(ops_->chan, &iov, 1, flags);  // -EPIPE: the channel is closing; the Controller revokes everything
    }
    out_.clear();
  }

  void Release(Region* r) {
    if (--r->inflight == 0 && r->dead) {
      r->ref.Reset();
      delete r;
    }
  }

  void Retire(Region* r) {
    if (r->inflight == 0) {
      r->ref.Reset();
      delete r;
    } else {
      r->dead = true;
    }
  }

  void MaybeFinishClose() {
    if (!closing_ || closed_ || inflight_ != 0) return;
    Teardown(false);
    if (!closeCb_.IsEmpty()) {
      Napi::HandleScope scope(env_);
      Napi::FunctionReference cb = std::move(closeCb_);
      cb.MakeCallback(Value(), {});
      if (env_.IsExceptionPending()) {
        Napi::Error e = env_.GetAndClearPendingException();
        napi_fatal_exception(env_, e.Value());
      }
    }
  }

  static void CleanupHook(void* arg) { static_cast<IoLoop*>(arg)->Teardown(true); }

  void Teardown(bool fromHook) {
    if (closed_) return;
    closed_ = true;
    ops_ = nullptr;
    if (poll_) {
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), reinterpret_cast<uv_close_cb>(reinterpret_cast<void (*)()>(&::free)));
      poll_ = nullptr;
    }
    if (ringUp_) {
      io_uring_queue_exit(&ring_);  // the kernel finishes or cancels what is in flight
      ringUp_ = false;
    }
    if (efd_ >= 0) ::close(efd_);
    if (fd_ >= 0) ::close(fd_);
    efd_ = fd_ = -1;
    for (auto& [k, r] : regions_) {
      if (!fromHook) r->ref.Reset();
      else r->ref.SuppressDestruct();
      delete r;
    }
    regions_.clear();
    if (cleanupAdded_ && !fromHook) napi_remove_env_cleanup_hook(env_, &IoLoop::CleanupHook, this);
    cleanupAdded_ = false;
  }

  static constexpr size_t kMaxRegions = 4096;

  Napi::Env env_ = nullptr;
  fractos_frame_hook hook_{};
  const fractos_chan_ops* ops_ = nullptr;
  struct io_uring ring_{};
  bool ringUp_ = false, closing_ = false, closed_ = false, cleanupAdded_ = false;
  int fd_ = -1, efd_ = -1;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference onError_, closeCb_;
  uint32_t readTag_ = 0, writeTag_ = 0, fVolume_ = 0, fOffset_ = 0, fLength_ = 0, fFlags_ = 0, sBuffer_ = 0, sOk_ = 0, sErr_ = 0,
           replyOff_ = 0, maxIo_ = 0, blockSize_ = 512, align_ = 512, fua_ = 0;
  std::unordered_map<uint32_t, Volume> volumes_;
  std::unordered_map<uint64_t, Region*> regions_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  std::vector<uint8_t> out_;
  std::vector<uint32_t> drops_;
  std::vector<Failed> failed_;
  uint32_t prepped_ = 0, acks_ = 0, seq_ = 0;
  uint64_t inflight_ = 0, reads_ = 0, writes_ = 0, ioErrors_ = 0, invokeErrors_ = 0, submits_ = 0;
  /**
   * Completion polling after a submit (SpinForCompletions): ns (FRACTOS_IOLOOP_SPIN_US, e.g. 50;
   * default 0, off: not proven better on the loaded 2-vCPU VM, docs/measurements.md), counters.
   */
  uint64_t spinNs_ = [] {
    const char* e = getenv("FRACTOS_IOLOOP_SPIN_US");
    uint64_t us = e ? strtoull(e, nullptr, 10) : 0;
    return (us > 1000 ? 1000 : us) * 1000;
  }();
  bool spinning_ = false;
  uint64_t spins_ = 0, spinHits_ = 0;
  uint64_t fallbacks_[FB_COUNT] = {};
};

Napi::Function InitIoLoop(Napi::Env env) { return IoLoop::Init(env); }

}  // namespace fractos::ioloop

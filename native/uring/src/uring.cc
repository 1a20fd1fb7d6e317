// fractos_uring: a thin node-addon-api binding over liburing.
//
// One `Ring` = one O_DIRECT file descriptor + one io_uring + one eventfd watched by a
// libuv poll handle on the owning environment's loop. Completions are never waited
// for on the JS thread: when the eventfd becomes readable, all ready CQEs are peeked
// in batches and reported through ONE JS callback per batch, written into two
// caller-provided typed arrays (tags: Uint32Array, res: Int32Array) - no allocation
// per completion. Errors of the I/O itself are negative errno values in `res`.
//
// Argument validation, defaults and error mapping live in index.ts / uring-backend.ts;
// here we only do the system calls and keep buffers alive while the kernel uses them.

#include <napi.h>
#include <uv.h>

#include <liburing.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

namespace fractos::ioloop {
Napi::Function InitIoLoop(Napi::Env env);  // ioloop.cc
}

namespace {

// Throws a JS Error carrying `errno` (negative, like io_uring results) and `syscall`.
[[noreturn]] void ThrowErrno(Napi::Env env, const char* syscall, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + std::strerror(err));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  throw e;
}

// Data pointer + length of an ArrayBuffer or ArrayBufferView (TypedArray/DataView),
// including the view's byte offset. Works for external ArrayBuffers (mmap'd Memory).
bool ViewData(napi_env env, napi_value v, uint8_t** data, size_t* len) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t length;
    void* p;
    napi_value ab;
    size_t off;
    if (napi_get_typedarray_info(env, v, &type, &length, &p, &ab, &off) != napi_ok) return false;
    size_t elem = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: elem = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
      default: elem = 1;
    }
    *data = static_cast<uint8_t*>(p);  // already offset by the view's byteOffset
    *len = length * elem;
    return true;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    size_t length;
    void* p;
    napi_value ab;
    size_t off;
    if (napi_get_dataview_info(env, v, &length, &p, &ab, &off) != napi_ok) return false;
    *data = static_cast<uint8_t*>(p);
    *len = length;
    return true;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    void* p;
    size_t length;
    if (napi_get_arraybuffer_info(env, v, &p, &length) != napi_ok) return false;
    *data = static_cast<uint8_t*>(p);
    *len = length;
    return true;
  }
  return false;
}

class Ring : public Napi::ObjectWrap<Ring> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Ring", {
      InstanceMethod<&Ring::PrepRead>("prepRead"),
      InstanceMethod<&Ring::PrepWrite>("prepWrite"),
      InstanceMethod<&Ring::PrepReadFixed>("prepReadFixed"),
      InstanceMethod<&Ring::PrepWriteFixed>("prepWriteFixed"),
      InstanceMethod<&Ring::PrepFsync>("prepFsync"),
      InstanceMethod<&Ring::Submit>("submit"),
      InstanceMethod<&Ring::RegisterBuffers>("registerBuffers"),
      InstanceMethod<&Ring::UnregisterBuffers>("unregisterBuffers"),
      InstanceMethod<&Ring::Close>("close"),
      InstanceAccessor<&Ring::GetFd>("fd"),
      InstanceAccessor<&Ring::GetSize>("size"),
      InstanceAccessor<&Ring::GetLbs>("logicalBlockSize"),
      InstanceAccessor<&Ring::GetMemAlign>("memAlign"),
      InstanceAccessor<&Ring::GetIsBlk>("isBlockDevice"),
      InstanceAccessor<&Ring::GetSqEntries>("sqEntries"),
      InstanceAccessor<&Ring::GetCqEntries>("cqEntries"),
      InstanceAccessor<&Ring::GetInFlight>("inFlight"),
      InstanceAccessor<&Ring::GetClosed>("closed"),
    });
  }

  // new Ring(path: string, readOnly: boolean, entries: number,
  //          tags: Uint32Array, res: Int32Array, onComplete: (n: number) => void)
  explicit Ring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Ring>(info) {
    Napi::Env env = info.Env();
    env_ = env;
    if (info.Length() < 6 || !info[0].IsString() || !info[2].IsNumber() || !info[3].IsTypedArray() ||
        !info[4].IsTypedArray() || !info[5].IsFunction()) {
      throw Napi::TypeError::New(env, "Ring(path, readOnly, entries, tags, res, onComplete)");
    }
    std::string path = info[0].As<Napi::String>();
    bool readOnly = info[1].ToBoolean();
    unsigned entries = info[2].As<Napi::Number>().Uint32Value();
    auto tags = info[3].As<Napi::TypedArray>();
    auto res = info[4].As<Napi::TypedArray>();
    if (tags.TypedArrayType() != napi_uint32_array || res.TypedArrayType() != napi_int32_array ||
        tags.ElementLength() == 0 || tags.ElementLength() != res.ElementLength()) {
      throw Napi::TypeError::New(env, "tags must be a Uint32Array and res an Int32Array of the same non-zero length");
    }
    tags_ = static_cast<uint32_t*>(static_cast<void*>(static_cast<uint8_t*>(tags.ArrayBuffer().Data()) + tags.ByteOffset()));
    res_ = static_cast<int32_t*>(static_cast<void*>(static_cast<uint8_t*>(res.ArrayBuffer().Data()) + res.ByteOffset()));
    batchCap_ = tags.ElementLength();
    arraysRef_ = Napi::Persistent(Napi::Array::New(env, 2));
    arraysRef_.Value().Set(0u, tags);
    arraysRef_.Value().Set(1u, res);
    onComplete_ = Napi::Persistent(info[5].As<Napi::Function>());
    pinned_ = Napi::Persistent(Napi::Array::New(env));

    fd_ = ::open(path.c_str(), (readOnly ? O_RDONLY : O_RDWR) | O_DIRECT | O_CLOEXEC);
    if (fd_ < 0) ThrowErrno(env, "open", errno);
    struct stat st;
    if (fstat(fd_, &st) != 0) Fail(env, "fstat", errno);
    if (S_ISBLK(st.st_mode)) {
      isBlk_ = true;
      uint64_t bytes = 0;
      int lbs = 0;
      if (ioctl(fd_, BLKGETSIZE64, &bytes) != 0) Fail(env, "ioctl(BLKGETSIZE64)", errno);
      if (ioctl(fd_, BLKSSZGET, &lbs) != 0) Fail(env, "ioctl(BLKSSZGET)", errno);
      size_ = bytes;
      lbs_ = static_cast<uint32_t>(lbs);
      memAlign_ = lbs_;
    } else if (S_ISREG(st.st_mode)) {
      size_ = static_cast<uint64_t>(st.st_size);
      lbs_ = static_cast<uint32_t>(st.st_blksize);
      memAlign_ = lbs_;
#ifdef STATX_DIOALIGN
      struct statx sx;
      if (statx(fd_, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
          sx.stx_dio_offset_align != 0) {
        lbs_ = sx.stx_dio_offset_align;
        memAlign_ = sx.stx_dio_mem_align;
      }
#endif
    } else {
      Fail(env, "open (not a regular file or block device)", EINVAL);
    }

    int r = io_uring_queue_init(entries, &ring_, 0);
    if (r < 0) Fail(env, "io_uring_queue_init", -r);
    ringUp_ = true;
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) Fail(env, "eventfd", errno);
    r = io_uring_register_eventfd(&ring_, efd_);
    if (r < 0) Fail(env, "io_uring_register_eventfd", -r);

    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) Fail(env, "napi_get_uv_event_loop", EINVAL);
    poll_ = static_cast<uv_poll_t*>(std::malloc(sizeof(uv_poll_t)));  // freed by uv_close (see Teardown)
    if (poll_ == nullptr) Fail(env, "malloc", ENOMEM);
    r = uv_poll_init(loop, poll_, efd_);
    if (r != 0) {
      std::free(poll_);
      poll_ = nullptr;
      Fail(env, "uv_poll_init", -r);
    }
    poll_->data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(poll_));  // only keeps the loop alive while ops are in flight
    r = uv_poll_start(poll_, UV_READABLE, &Ring::OnPoll);
    if (r != 0) Fail(env, "uv_poll_start", -r);
    napi_add_env_cleanup_hook(env, &Ring::CleanupHook, this);
    hookAdded_ = true;
  }

  ~Ring() override {
    Teardown(false);
  }

 private:
  // Releases what the constructor acquired so far, then throws.
  [[noreturn]] void Fail(Napi::Env env, const char* syscall, int err) {
    Teardown(false);
    ThrowErrno(env, syscall, err);
  }

  // Closes everything. `fromHook`: the environment is being torn down (no JS calls).
  void Teardown(bool fromHook) {
    if (closed_) return;
    closed_ = true;
    if (poll_ != nullptr) {
      uv_poll_stop(poll_);
      // The close callback runs on a later loop turn; at worker exit this addon may already be
      // unloaded by then, so the callback must not be code of ours: libc's free() it is.
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), reinterpret_cast<uv_close_cb>(reinterpret_cast<void (*)()>(&::free)));
      poll_ = nullptr;
    }
    if (ringUp_) {
      if (efd_ >= 0) io_uring_unregister_eventfd(&ring_);
      if (buffersRegistered_) io_uring_unregister_buffers(&ring_);
      io_uring_queue_exit(&ring_);  // the kernel cancels or finishes anything still in flight
      ringUp_ = false;
    }
    buffersRegistered_ = false;
    if (efd_ >= 0) ::close(efd_);
    efd_ = -1;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (hookAdded_) {
      if (!fromHook) napi_remove_env_cleanup_hook(env_, &Ring::CleanupHook, this);
      hookAdded_ = false;
    }
    if (strongRef_) {
      strongRef_ = false;
      if (!fromHook) Unref();
    }
    inFlight_ = 0;
  }

  static void CleanupHook(void* arg) {
    static_cast<Ring*>(arg)->Teardown(true);
  }

  static void OnPoll(uv_poll_t* handle, int status, int /*events*/) {
    Ring* self = static_cast<Ring*>(handle->data);
    if (self == nullptr || self->closed_) return;
    if (status < 0) return;  // spurious error on the eventfd: completions will be reaped on the next wake-up
    self->Reap();
  }

  // Moves every ready CQE into the batch arrays and calls onComplete(n) once per batch.
  // Uses the C API and never throws: this runs on the loop, outside any JS frame, and the
  // environment may be terminating (process.exit() in a worker).
  void Reap() {
    uint64_t counter;
    while (::read(efd_, &counter, sizeof counter) > 0) {
    }
    napi_env env = env_;
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    struct io_uring_cqe* cqes[256];
    napi_value pinned = nullptr, undef = nullptr, fn = nullptr, recv = nullptr;
    bool ok = napi_get_reference_value(env, pinned_, &pinned) == napi_ok &&
              napi_get_undefined(env, &undef) == napi_ok &&
              napi_get_reference_value(env, onComplete_, &fn) == napi_ok &&
              napi_get_global(env, &recv) == napi_ok && pinned != nullptr && fn != nullptr;
    while (ok && !closed_) {
      unsigned cap = batchCap_ < 256 ? batchCap_ : 256;
      unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, cap);
      if (n == 0) break;
      for (unsigned i = 0; i < n; i++) {
        uint32_t slot = static_cast<uint32_t>(cqes[i]->user_data);
        tags_[i] = slotTag_[slot];
        res_[i] = cqes[i]->res;
        napi_set_element(env, pinned, slot, undef);
        freeSlots_.push_back(slot);
      }
      io_uring_cq_advance(&ring_, n);
      inFlight_ -= n;
      if (inFlight_ == 0) LoopUnref();
      napi_value argv, result;
      if (napi_create_uint32(env, n, &argv) != napi_ok) break;
      napi_status st = napi_make_callback(env, nullptr, recv, fn, 1, &argv, &result);
      if (st == napi_pending_exception) {
        napi_value exc;
        if (napi_get_and_clear_last_exception(env, &exc) != napi_ok) break;
        napi_fatal_exception(env, exc);  // 'uncaughtException'; if handled, keep reaping
        continue;
      }
      if (st != napi_ok) break;  // cannot call into JS any more (environment terminating)
    }
    napi_close_handle_scope(env, scope);
  }

  void LoopRef() {
    if (strongRef_) return;
    strongRef_ = true;
    Ref();  // keep the JS object alive while the kernel holds its buffers
    if (poll_) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  }

  void LoopUnref() {
    if (!strongRef_) return;
    strongRef_ = false;
    Unref();
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  }

  // Takes a slot for `tag` and pins `keep` (the buffer) until its completion is reaped.
  uint32_t TakeSlot(uint32_t tag, Napi::Value keep) {
    uint32_t slot;
    if (!freeSlots_.empty()) {
      slot = freeSlots_.back();
      freeSlots_.pop_back();
      slotTag_[slot] = tag;
    } else {
      slot = static_cast<uint32_t>(slotTag_.size());
      slotTag_.push_back(tag);
    }
    pinned_.Value().Set(slot, keep);
    inFlight_++;
    LoopRef();
    return slot;
  }

  // Shared body of the four read/write preps. Returns 0 or -errno (no SQE: -EBUSY).
  Napi::Value PrepRw(const Napi::CallbackInfo& info, bool write, bool fixed) {
    Napi::Env env = info.Env();
    if (closed_) return Napi::Number::New(env, -EBADF);
    if (info.Length() < (fixed ? 4u : 3u) || !info[0].IsNumber() || !info[2].IsNumber()) {
      throw Napi::TypeError::New(env, "prep(tag, buffer, offset[, bufIndex])");
    }
    uint8_t* data;
    size_t len;
    if (!ViewData(env, info[1], &data, &len)) throw Napi::TypeError::New(env, "buffer must be an ArrayBuffer or a view");
    if (len > UINT32_MAX) return Napi::Number::New(env, -EINVAL);
    uint32_t tag = info[0].As<Napi::Number>().Uint32Value();
    double offD = info[2].As<Napi::Number>().DoubleValue();
    if (!(offD >= 0)) return Napi::Number::New(env, -EINVAL);
    uint64_t off = static_cast<uint64_t>(offD);
    struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return Napi::Number::New(env, -EBUSY);
    unsigned n = static_cast<unsigned>(len);
    if (fixed) {
      int idx = info[3].As<Napi::Number>().Int32Value();
      if (write) io_uring_prep_write_fixed(sqe, fd_, data, n, off, idx);
      else io_uring_prep_read_fixed(sqe, fd_, data, n, off, idx);
    } else {
      if (write) io_uring_prep_write(sqe, fd_, data, n, off);
      else io_uring_prep_read(sqe, fd_, data, n, off);
    }
    io_uring_sqe_set_data64(sqe, TakeSlot(tag, info[1]));
    return Napi::Number::New(env, 0);
  }

  // prepRead(tag: u32, buffer: ArrayBufferView, offset: number /*bytes*/): 0 | -errno
  Napi::Value PrepRead(const Napi::CallbackInfo& info) { return PrepRw(info, false, false); }
  Napi::Value PrepWrite(const Napi::CallbackInfo& info) { return PrepRw(info, true, false); }
  // prepReadFixed(tag, buffer, offset, bufIndex): buffer must lie inside registered buffer bufIndex.
  Napi::Value PrepReadFixed(const Napi::CallbackInfo& info) { return PrepRw(info, false, true); }
  Napi::Value PrepWriteFixed(const Napi::CallbackInfo& info) { return PrepRw(info, true, true); }

  // prepFsync(tag: u32, datasync: boolean): 0 | -errno
  Napi::Value PrepFsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) return Napi::Number::New(env, -EBADF);
    if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "prepFsync(tag, datasync)");
    uint32_t tag = info[0].As<Napi::Number>().Uint32Value();
    bool datasync = info.Length() > 1 && info[1].ToBoolean();
    struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return Napi::Number::New(env, -EBUSY);
    io_uring_prep_fsync(sqe, fd_, datasync ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data64(sqe, TakeSlot(tag, env.Undefined()));
    return Napi::Number::New(env, 0);
  }

  // submit(): number of SQEs submitted | -errno
  Napi::Value Submit(const Napi::CallbackInfo& info) {
    if (closed_) return Napi::Number::New(info.Env(), -EBADF);
    return Napi::Number::New(info.Env(), io_uring_submit(&ring_));
  }

  // registerBuffers(buffers: ArrayBufferView[]): 0 | -errno. Pins the views until unregister/close.
  Napi::Value RegisterBuffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) return Napi::Number::New(env, -EBADF);
    if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "registerBuffers(buffers[])");
    if (buffersRegistered_) return Napi::Number::New(env, -EBUSY);
    Napi::Array arr = info[0].As<Napi::Array>();
    std::vector<struct iovec> iov(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); i++) {
      uint8_t* data;
      size_t len;
      if (!ViewData(env, arr.Get(i), &data, &len)) throw Napi::TypeError::New(env, "buffers must be ArrayBuffer views");
      iov[i].iov_base = data;
      iov[i].iov_len = len;
    }
    int r = io_uring_register_buffers(&ring_, iov.data(), static_cast<unsigned>(iov.size()));
    if (r == 0) {
      buffersRegistered_ = true;
      registered_ = Napi::Persistent(arr);
    }
    return Napi::Number::New(env, r);
  }

  // unregisterBuffers(): 0 | -errno
  Napi::Value UnregisterBuffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_ || !buffersRegistered_) return Napi::Number::New(env, -ENXIO);
    int r = io_uring_unregister_buffers(&ring_);
    if (r == 0) {
      buffersRegistered_ = false;
      registered_.Reset();
    }
    return Napi::Number::New(env, r);
  }

  // close(): undefined. Ops still in flight are waited for (blocking) and their results dropped.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!closed_ && inFlight_ > 0) {
      io_uring_submit(&ring_);
      while (inFlight_ > 0) {
        struct io_uring_cqe* cqe;
        if (io_uring_wait_cqe(&ring_, &cqe) != 0) break;
        io_uring_cqe_seen(&ring_, cqe);
        inFlight_--;
      }
    }
    Teardown(false);
    pinned_.Reset();
    registered_.Reset();
    return info.Env().Undefined();
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value GetSize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(size_)); }
  Napi::Value GetLbs(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), lbs_); }
  Napi::Value GetMemAlign(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), memAlign_); }
  Napi::Value GetIsBlk(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), isBlk_); }
  Napi::Value GetSqEntries(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), ringUp_ ? ring_.sq.ring_entries : 0);
  }
  Napi::Value GetCqEntries(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), ringUp_ ? ring_.cq.ring_entries : 0);
  }
  Napi::Value GetInFlight(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), inFlight_); }
  Napi::Value GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), closed_); }

  napi_env env_ = nullptr;
  struct io_uring ring_ {};
  bool ringUp_ = false;
  int fd_ = -1;
  int efd_ = -1;
  uv_poll_t* poll_ = nullptr;
  bool closed_ = false;
  bool hookAdded_ = false;
  bool strongRef_ = false;
  bool buffersRegistered_ = false;
  bool isBlk_ = false;
  uint64_t size_ = 0;
  uint32_t lbs_ = 512;
  uint32_t memAlign_ = 512;
  uint32_t inFlight_ = 0;
  uint32_t* tags_ = nullptr;
  int32_t* res_ = nullptr;
  unsigned batchCap_ = 0;
  std::vector<uint32_t> slotTag_;    // internal slot (= user_data) -> caller's tag
  std::vector<uint32_t> freeSlots_;  // free internal slots
  Napi::Reference<Napi::Array> pinned_;      // slot -> buffer kept alive while in flight
  Napi::Reference<Napi::Array> registered_;  // views registered with io_uring_register_buffers
  Napi::Reference<Napi::Array> arraysRef_;   // the batch arrays (their memory is written by Reap)
  Napi::FunctionReference onComplete_;
};

// allocAligned(size: number /*bytes*/, align: number /*bytes, power of two*/): Buffer
// Zero-filled, from posix_memalign; freed by the Buffer's finalizer.
Napi::Value AllocAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "allocAligned(size, align)");
  }
  double sizeD = info[0].As<Napi::Number>().DoubleValue();
  size_t align = info[1].As<Napi::Number>().Uint32Value();
  if (!(sizeD > 0) || align < sizeof(void*) || (align & (align - 1)) != 0) ThrowErrno(env, "allocAligned", EINVAL);
  size_t size = static_cast<size_t>(sizeD);
  void* p = nullptr;
  int r = posix_memalign(&p, align, size);
  if (r != 0) ThrowErrno(env, "posix_memalign", r);
  std::memset(p, 0, size);
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(size));
  return Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t*>(p), size, [size](Napi::Env e, uint8_t* q) {
    std::free(q);
    Napi::MemoryManagement::AdjustExternalMemory(e, -static_cast<int64_t>(size));
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Ring", Ring::Init(env));
  exports.Set("IoLoop", fractos::ioloop::InitIoLoop(env));
  exports.Set("allocAligned", Napi::Function::New(env, AllocAligned, "allocAligned"));
  return exports;
}

}  // namespace

NODE_API_MODULE(fractos_uring, Init)

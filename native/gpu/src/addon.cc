// fractos_gpu: napi binding. Thin: argument types are checked by native/gpu/index.ts; here
// only what memory safety needs (handles, ranges, alignment: Backend::pin/plan). Copies and
// launches run on libuv worker threads (Napi::AsyncWorker) and settle a Promise, so the JS
// event loop never blocks on a batch. Errors are Error objects with a string `code`
// (libfractos ERROR_CODES). Backends still open at environment teardown are closed by a
// cleanup hook (unless operations are still in flight, then they are left to the process exit).
#include <napi.h>

#include <set>
#include <unordered_map>

#include "backend.h"

namespace fractos_gpu {

namespace {

Napi::Error makeError(Napi::Env env, const char* code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

[[noreturn]] void throwJs(Napi::Env env, const GpuError& e) { throw makeError(env, e.code(), e.what()); }

uint64_t u64Arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) throw makeError(info.Env(), "EINVAL", std::string(what) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > 9007199254740991.0 || v != double(uint64_t(v)))
    throw makeError(info.Env(), "EINVAL", std::string(what) + " must be a non-negative safe integer");
  return uint64_t(v);
}

uint32_t u32Arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  uint64_t v = u64Arg(info, i, what);
  if (v > 0xffffffffull) throw makeError(info.Env(), "EINVAL", std::string(what) + " must fit in u32");
  return uint32_t(v);
}

// Base worker: runs `work` on a worker thread, unpins `pinned` on the JS thread afterwards,
// settles a promise (resolve value from `result`).
class Op : public Napi::AsyncWorker {
 public:
  Op(Napi::Env env, std::shared_ptr<Backend> be, std::vector<uint32_t> pinned)
      : Napi::AsyncWorker(env, "fractos_gpu"), be_(std::move(be)), pinned_(std::move(pinned)), deferred_(env) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      work();
    } catch (const GpuError& e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::exception& e) {
      code_ = "EIO";
      SetError(e.what());
    }
  }
  virtual void work() = 0;
  virtual Napi::Value result() { return Env().Undefined(); }
  void OnOK() override {
    release();
    deferred_.Resolve(result());
  }
  void OnError(const Napi::Error& e) override {
    release();
    deferred_.Reject(makeError(Env(), code_, e.Message()).Value());
  }
  void release() {
    for (uint32_t h : pinned_) be_->unpin(h);
    pinned_.clear();
  }
  std::shared_ptr<Backend> be_;
  std::vector<uint32_t> pinned_;
  Napi::Promise::Deferred deferred_;
  const char* code_ = "EIO";
};

class WriteOp : public Op {
 public:
  WriteOp(Napi::Env env, std::shared_ptr<Backend> be, uint32_t h, uint64_t addr, Napi::Uint8Array data)
      : Op(env, std::move(be), {h}), addr_(addr), src_(data.Data()), n_(data.ByteLength()) {
    ref_ = Napi::Persistent(data.As<Napi::Object>());  // keeps the source alive until settled
  }
  void work() override { be_->copyIn(addr_, src_, n_); }

 private:
  uint64_t addr_;
  const uint8_t* src_;
  size_t n_;
  Napi::ObjectReference ref_;
};

class ReadOp : public Op {
 public:
  ReadOp(Napi::Env env, std::shared_ptr<Backend> be, uint32_t h, uint64_t addr, Napi::Uint8Array dst)
      : Op(env, std::move(be), {h}), addr_(addr), dst_(dst.Data()), n_(dst.ByteLength()) {
    ref_ = Napi::Persistent(dst.As<Napi::Object>());
  }
  void work() override { be_->copyOut(dst_, addr_, n_); }
  Napi::Value result() override { return ref_.Value(); }

 private:
  uint64_t addr_;
  uint8_t* dst_;
  size_t n_;
  Napi::ObjectReference ref_;
};

class LaunchOp : public Op {
 public:
  LaunchOp(Napi::Env env, std::shared_ptr<Backend> be, std::vector<uint32_t> pinned, LaunchPlan plan)
      : Op(env, std::move(be), std::move(pinned)), plan_(plan) {}
  void work() override { be_->run(plan_); }

 private:
  LaunchPlan plan_;
};

class BackendWrap;
struct AddonData {
  Napi::FunctionReference ctor;
  std::set<BackendWrap*> live;
};

class BackendWrap : public Napi::ObjectWrap<BackendWrap> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeGpuBackend",
                       {InstanceAccessor<&BackendWrap::kind>("kind"), InstanceAccessor<&BackendWrap::deviceName>("deviceName"),
                        InstanceMethod<&BackendWrap::alloc>("alloc"), InstanceMethod<&BackendWrap::allocExternal>("allocExternal"),
                        InstanceMethod<&BackendWrap::free>("free"),
                        InstanceMethod<&BackendWrap::size>("size"), InstanceMethod<&BackendWrap::write>("write"),
                        InstanceMethod<&BackendWrap::read>("read"), InstanceMethod<&BackendWrap::launch>("launch"),
                        InstanceMethod<&BackendWrap::close>("close")});
  }

  // new NativeGpuBackend(kind: 'cpu'|'cuda', ptxPath: string)
  BackendWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BackendWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) throw makeError(env, "EINVAL", "(kind, ptxPath) expected");
    std::string kind = info[0].As<Napi::String>();
    try {
      if (kind == "cpu") be_ = openCpuBackend();
      else if (kind == "cuda") be_ = openCudaBackend(info[1].As<Napi::String>());
      else throw makeError(env, "EINVAL", "unknown backend kind '" + kind + "'");
    } catch (const GpuError& e) {
      throwJs(env, e);
    }
    data_ = env.GetInstanceData<AddonData>();
    data_->live.insert(this);
  }
  ~BackendWrap() override {
    if (data_) data_->live.erase(this);
    teardown();
  }
  // At env teardown / GC: close unless work is in flight (then the workers still hold it).
  void teardown() {
    if (be_ && !be_->closed() && !be_->busy()) {
      try {
        be_->close();
      } catch (...) {
      }
    }
  }

 private:
  Backend& be(Napi::Env env) {
    if (!be_ || be_->closed()) throw makeError(env, "EINVAL", "backend closed");
    return *be_;
  }
  Napi::Value kind(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), be_ ? be_->kind() : ""); }
  Napi::Value deviceName(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), be_ ? be_->deviceName() : "");
  }
  // alloc(size: number) -> handle: number
  Napi::Value alloc(const Napi::CallbackInfo& info) {
    uint64_t size = u64Arg(info, 0, "size");
    try {
      return Napi::Number::New(info.Env(), be(info.Env()).alloc(size));
    } catch (const GpuError& e) {
      throwJs(info.Env(), e);
    }
  }
  // allocExternal(ab: ArrayBuffer, offset, size) -> handle: `size` bytes at `offset` of `ab`
  // become a buffer (cpu backend only). A reference to `ab` is kept until free/close, so
  // the memory outlives every copy and launch using it. Detached or short buffers: EINVAL/ERANGE.
  Napi::Value allocExternal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArrayBuffer()) throw makeError(env, "EINVAL", "ab must be an ArrayBuffer");
    auto ab = info[0].As<Napi::ArrayBuffer>();
    uint64_t off = u64Arg(info, 1, "offset");
    uint64_t size = u64Arg(info, 2, "size");
    uint8_t* base = static_cast<uint8_t*>(ab.Data());
    uint64_t len = ab.ByteLength();
    if (!base || len == 0) throw makeError(env, "EINVAL", "ArrayBuffer is empty or detached");
    if (off > len || size > len - off)
      throw makeError(env, "ERANGE", "[" + std::to_string(off) + ", +" + std::to_string(size) + ") outside ArrayBuffer of " + std::to_string(len) + " bytes");
    try {
      uint32_t h = be(env).allocExternal(reinterpret_cast<uint64_t>(base + off), size);
      refs_[h] = Napi::Persistent(ab);
      return Napi::Number::New(env, h);
    } catch (const GpuError& e) {
      throwJs(env, e);
    }
  }
  // free(handle)
  Napi::Value free(const Napi::CallbackInfo& info) {
    uint32_t h = u32Arg(info, 0, "handle");
    try {
      be(info.Env()).free(h);
    } catch (const GpuError& e) {
      throwJs(info.Env(), e);
    }
    refs_.erase(h);  // releases an allocExternal ArrayBuffer
    return info.Env().Undefined();
  }
  Napi::Value size(const Napi::CallbackInfo& info) {
    uint32_t h = u32Arg(info, 0, "handle");
    try {
      return Napi::Number::New(info.Env(), double(be(info.Env()).size(h)));
    } catch (const GpuError& e) {
      throwJs(info.Env(), e);
    }
  }
  // write(handle, offset, data: Uint8Array) -> Promise<void>
  Napi::Value write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t h = u32Arg(info, 0, "handle");
    uint64_t off = u64Arg(info, 1, "offset");
    if (info.Length() < 3 || !info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw makeError(env, "EINVAL", "data must be a Uint8Array");
    auto data = info[2].As<Napi::Uint8Array>();
    try {
      uint64_t addr = be(env).pin(h, off, data.ByteLength());
      auto* op = new WriteOp(env, be_, h, addr, data);
      Napi::Promise p = op->promise();
      op->Queue();
      return p;
    } catch (const GpuError& e) {
      throwJs(env, e);
    }
  }
  // read(handle, offset, length) -> Promise<Uint8Array> (a new array of `length` bytes)
  Napi::Value read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t h = u32Arg(info, 0, "handle");
    uint64_t off = u64Arg(info, 1, "offset");
    uint64_t len = u64Arg(info, 2, "length");
    try {
      uint64_t addr = be(env).pin(h, off, len);
      Napi::Uint8Array dst;
      try {
        dst = Napi::Uint8Array::New(env, size_t(len));
      } catch (...) {
        be_->unpin(h);
        throw;
      }
      auto* op = new ReadOp(env, be_, h, addr, dst);
      Napi::Promise p = op->promise();
      op->Queue();
      return p;
    } catch (const GpuError& e) {
      throwJs(env, e);
    }
  }
  // launch(kernelId, buffers: number[] (handle, offset, handle, offset, ...), n, gridX, gridY) -> Promise<void>
  Napi::Value launch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t kid = u32Arg(info, 0, "kernel");
    if (info.Length() < 2 || !info[1].IsArray()) throw makeError(env, "EINVAL", "buffers must be an array");
    auto arr = info[1].As<Napi::Array>();
    if (arr.Length() % 2 || arr.Length() > 16) throw makeError(env, "EINVAL", "buffers: (handle, offset) pairs, at most 8");
    std::vector<BufferRef> bufs;
    for (uint32_t i = 0; i < arr.Length(); i += 2) {
      Napi::Value hv = arr.Get(i), ov = arr.Get(i + 1);
      if (!hv.IsNumber() || !ov.IsNumber()) throw makeError(env, "EINVAL", "buffers: numbers expected");
      double hd = hv.As<Napi::Number>().DoubleValue(), od = ov.As<Napi::Number>().DoubleValue();
      if (!(hd >= 0) || hd > 4294967295.0 || hd != double(uint32_t(hd)) || !(od >= 0) || od > 9007199254740991.0 ||
          od != double(uint64_t(od)))
        throw makeError(env, "EINVAL", "buffers: bad handle or offset");
      bufs.push_back({uint32_t(hd), uint64_t(od)});
    }
    uint32_t n = u32Arg(info, 2, "n"), gx = u32Arg(info, 3, "gridX"), gy = u32Arg(info, 4, "gridY");
    if (kid > uint32_t(KernelId::LbpChi2Batch)) throw makeError(env, "ENOENT", "unknown kernel id " + std::to_string(kid));
    try {
      std::vector<uint32_t> pinned;
      LaunchPlan plan = be(env).plan(KernelId(kid), bufs, n, gx, gy, pinned);
      auto* op = new LaunchOp(env, be_, std::move(pinned), plan);
      Napi::Promise p = op->promise();
      op->Queue();
      return p;
    } catch (const GpuError& e) {
      throwJs(env, e);
    }
  }
  // close(): frees every buffer and the device. EBUSY while operations are in flight. Idempotent.
  Napi::Value close(const Napi::CallbackInfo& info) {
    try {
      if (be_) be_->close();
    } catch (const GpuError& e) {
      throwJs(info.Env(), e);
    }
    refs_.clear();
    return info.Env().Undefined();
  }

  std::shared_ptr<Backend> be_;
  std::unordered_map<uint32_t, Napi::Reference<Napi::ArrayBuffer>> refs_;  // allocExternal
  AddonData* data_ = nullptr;
};

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);  // deleted by napi at env teardown
  Napi::Function ctor = BackendWrap::define(env);
  data->ctor = Napi::Persistent(ctor);
  env.AddCleanupHook([data]() {
    for (BackendWrap* b : data->live) b->teardown();
  });
  exports.Set("NativeGpuBackend", ctor);
  Napi::Object k = Napi::Object::New(env);
  k.Set("lbp_hist_batch", Napi::Number::New(env, uint32_t(KernelId::LbpHistBatch)));
  k.Set("lbp_chi2_batch", Napi::Number::New(env, uint32_t(KernelId::LbpChi2Batch)));
  exports.Set("KERNELS", k);
  exports.Set("IMAGE_WIDTH", Napi::Number::New(env, fractos_lbp::kImageWidth));
  exports.Set("IMAGE_HEIGHT", Napi::Number::New(env, fractos_lbp::kImageHeight));
  exports.Set("NUM_BINS", Napi::Number::New(env, fractos_lbp::kNumBins));
  return exports;
}

}  // namespace fractos_gpu

static Napi::Object InitFractosGpu(Napi::Env env, Napi::Object exports) { return fractos_gpu::init(env, exports); }

NODE_API_MODULE(fractos_gpu, InitFractosGpu)

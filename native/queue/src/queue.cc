// fractos_queue: the client side of the shared-memory queue pairs (ring.h, wake.h, memfd.h)
// for Node.js. See native/queue/index.ts for the API and docs/queues.md for the design.
// No C++ exceptions; errors are thrown as JS errors with a string `code` (EPROTO, ERANGE for
// an entry above max_entry, ETIMEDOUT, or the errno name of a failed system call).
#include <napi.h>
#include <uv.h>

#include <cstring>
#include <string>

#include "memfd.h"
#include "sock.h"
#include "ring.h"
#include "spin_budget.h"
#include "wake.h"

using namespace fractos::queue;

namespace {

Napi::Value Throw(Napi::Env env, const std::string& what, int neg) {
  int e = neg < 0 ? -neg : neg;
  // EBADF of a closed channel: EDISCONNECTED (the project's code for a closed channel).
  const char* code = e == EPROTO ? "EPROTO" : e == EMSGSIZE ? "ERANGE" : (e == EBADF && what == "channel") ? "EDISCONNECTED" : strerrorname_np(e);
  Napi::Error err = Napi::Error::New(env, what + ": " + (e == EPROTO ? "protocol violation by the peer" : strerror(e)));
  err.Set("code", Napi::String::New(env, code ? code : "EIO"));
  err.ThrowAsJavaScriptException();
  return env.Undefined();
}

bool IntArg(const Napi::CallbackInfo& info, size_t i, int64_t lo, int64_t hi, int64_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) return false;
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= double(lo) && d <= double(hi)) || d != double(int64_t(d))) return false;
  *out = int64_t(d);
  return true;
}

Napi::Value CreatePair(const Napi::CallbackInfo& info) {
  int64_t rb;
  if (!IntArg(info, 0, 0, MAX_RING_BYTES, &rb)) return Throw(info.Env(), "createPair", EINVAL);
  int fd = create_pair_fd(uint32_t(rb));
  if (fd < 0) return Throw(info.Env(), "createPair", fd);
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value Doorbell_(const Napi::CallbackInfo& info) {
  int fd = make_doorbell();
  if (fd < 0) return Throw(info.Env(), "eventfd", fd);
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  int sv[2];
  // Close-on-exec: a child gets an end only through spawn's stdio (dup2 clears the flag), so
  // that no child keeps the other end open and hides the close that signals a peer's end.
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return Throw(info.Env(), "socketpair", errno);
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  a.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return a;
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!IntArg(info, 0, 0, INT32_MAX, &fd)) return Throw(info.Env(), "close", EBADF);
  if (close(int(fd)) != 0) return Throw(info.Env(), "close", errno);
  return info.Env().Undefined();
}

Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t sock;
  if (!IntArg(info, 0, 0, INT32_MAX, &sock) || info.Length() < 3 || !info[1].IsArray() || !info[2].IsTypedArray())
    return Throw(env, "sendFds(sock, fds, data)", EINVAL);
  Napi::Array a = info[1].As<Napi::Array>();
  Napi::Uint8Array d = info[2].As<Napi::Uint8Array>();
  if (a.Length() < 1 || a.Length() > uint32_t(MAX_FDS)) return Throw(env, "sendFds", EINVAL);
  int fds[MAX_FDS];
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value v = a.Get(i);
    if (!v.IsNumber()) return Throw(env, "sendFds", EINVAL);
    fds[i] = v.As<Napi::Number>().Int32Value();
  }
  int r = send_fds(int(sock), fds, int(a.Length()), d.Data(), d.ByteLength());
  if (r < 0) return Throw(env, "sendFds", r);
  return env.Undefined();
}

Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t sock, want, cap;
  if (!IntArg(info, 0, 0, INT32_MAX, &sock) || !IntArg(info, 1, 1, MAX_FDS, &want) || !IntArg(info, 2, 1, 65536, &cap))
    return Throw(env, "recvFds(sock, want, cap)", EINVAL);
  int fds[MAX_FDS];
  Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, size_t(cap));
  ssize_t r = recv_fds(int(sock), fds, int(want), buf.Data(), size_t(cap));
  if (r < 0) return Throw(env, "recvFds", int(r));
  if (r == 0) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  Napi::Array a = Napi::Array::New(env, size_t(want));
  for (int i = 0; i < want; i++) a.Set(uint32_t(i), Napi::Number::New(env, fds[i]));
  o.Set("fds", a);
  o.Set("data", Napi::Buffer<uint8_t>::Copy(env, buf.Data(), size_t(r)));
  return o;
}

void UnmapRaw(Napi::Env, void* data, size_t* len) {
  munmap(data, *len);
  delete len;
}

/** The verified pair mapped as an ArrayBuffer (tests and tools: write what a hostile peer would). */
Napi::Value MapRaw(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!IntArg(info, 0, 0, INT32_MAX, &fd)) return Throw(env, "mapRaw", EBADF);
  int64_t rb = verify_pair_fd(int(fd), 0);
  if (rb < 0) return Throw(env, "mapRaw", int(rb));
  size_t size = pair_bytes(uint32_t(rb));
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, int(fd), 0);
  if (p == MAP_FAILED) return Throw(env, "mapRaw", errno);
  return Napi::ArrayBuffer::New(env, p, size, UnmapRaw, new size_t(size));
}

/** The host's spinner budget page (spin_budget.h), verified, as an ArrayBuffer (tests: a hostile view). */
Napi::Value MapBudgetRaw(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!IntArg(info, 0, 0, INT32_MAX, &fd)) return Throw(env, "mapBudgetRaw", EBADF);
  int e = 0;
  uint8_t* p = map_budget_fd(int(fd), &e);
  if (!p) return Throw(env, "mapBudgetRaw", -e);
  return Napi::ArrayBuffer::New(env, p, BUDGET_BYTES, UnmapRaw, new size_t(BUDGET_BYTES));
}

class Channel : public Napi::ObjectWrap<Channel> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Channel",
                       {InstanceMethod<&Channel::Push>("push"), InstanceMethod<&Channel::Publish>("publish"),
                        InstanceMethod<&Channel::PushWait>("pushWait"), InstanceMethod<&Channel::Drain>("drain"),
                        InstanceMethod<&Channel::Wait>("wait"), InstanceMethod<&Channel::Watch>("watch"),
                        InstanceMethod<&Channel::Unwatch>("unwatch"), InstanceMethod<&Channel::ArmSpace>("armSpace"),
                        InstanceMethod<&Channel::Stats>("stats"), InstanceMethod<&Channel::Close>("close")});
  }

  // new Channel(fd, side, ownEfd, peerEfd, ringBytes, maxEntry, spinNs, yields)
  explicit Channel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Channel>(info) {
    Napi::Env env = info.Env();
    int64_t fd, side, own, peer, rb, max_entry, spin, yields;
    if (!IntArg(info, 0, 0, INT32_MAX, &fd) || !IntArg(info, 1, 0, 1, &side) || !IntArg(info, 2, -1, INT32_MAX, &own) ||
        !IntArg(info, 3, -1, INT32_MAX, &peer) || !IntArg(info, 4, 0, MAX_RING_BYTES, &rb) ||
        !IntArg(info, 5, 0, MAX_RING_BYTES, &max_entry) || !IntArg(info, 6, 0, 1'000'000'000, &spin) ||
        !IntArg(info, 7, 0, 1000, &yields)) {
      Throw(env, "Channel(fd, side, ownEfd, peerEfd, ringBytes, maxEntry, spinNs, yields)", EINVAL);
      return;
    }
    if (int e = map_.map(int(fd), uint32_t(rb))) {
      Throw(env, "attach", e);
      return;
    }
    uint32_t lim = default_max_entry(map_.ring_bytes);
    uint32_t me = max_entry ? uint32_t(max_entry) : lim;
    if (me > lim) {
      map_.unmap();
      Throw(env, "attach: maxEntry above a quarter of the ring", EINVAL);
      return;
    }
    // Own copies of the doorbells: the channel's lifetime decides when they close.
    own_ = own >= 0 ? fcntl(int(own), F_DUPFD_CLOEXEC, 0) : -1;
    peer_ = peer >= 0 ? fcntl(int(peer), F_DUPFD_CLOEXEC, 0) : -1;
    if ((own >= 0 && own_ < 0) || (peer >= 0 && peer_ < 0)) {
      int e = errno;
      Release();
      Throw(env, "attach: dup doorbell", e);
      return;
    }
    ep_ = Endpoint(map_.base, map_.ring_bytes, Side(side), me, own_, peer_);
    if (ep_.rx.error() || ep_.tx.error()) {
      Release();
      Throw(env, "attach", EPROTO);
      return;
    }
    ep_side_ = int(side);
    pol_.spin_ns = uint64_t(spin);
    pol_.yields = uint32_t(yields);
  }
  ~Channel() override { Release(); }

 private:
  bool Open(Napi::Env env) {
    if (map_.base) return true;
    Throw(env, "channel", EBADF);
    return false;
  }

  // push(data, publish = true) -> boolean (false: full)
  Napi::Value Push(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsTypedArray()) return Throw(env, "push(data: Uint8Array)", EINVAL);
    Napi::TypedArray t = info[0].As<Napi::TypedArray>();
    size_t n = t.ByteLength();
    if (n > ep_.tx.max_entry()) return Throw(env, "push", EMSGSIZE);
    const uint8_t* p = static_cast<const uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
    int r = ep_.tx.push(p, uint32_t(n));
    if (r == -EAGAIN) return Napi::Boolean::New(env, false);
    if (r < 0) return Throw(env, "push", r);
    if (info.Length() < 2 || info[1].ToBoolean()) ep_.tx.publish();
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Publish(const Napi::CallbackInfo& info) {
    if (Open(info.Env())) ep_.tx.publish();
    return info.Env().Undefined();
  }

  // pushWait(data, timeoutMs): blocks (spin, yield, sleep) until there is space, then pushes and publishes.
  Napi::Value PushWait(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    int64_t ms;
    if (info.Length() < 2 || !info[0].IsTypedArray() || !IntArg(info, 1, 0, 86'400'000, &ms))
      return Throw(env, "pushWait(data, timeoutMs)", EINVAL);
    Napi::TypedArray t = info[0].As<Napi::TypedArray>();
    size_t n = t.ByteLength();
    if (n > ep_.tx.max_entry()) return Throw(env, "pushWait", EMSGSIZE);
    const uint8_t* p = static_cast<const uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
    uint64_t deadline = now_ns() + uint64_t(ms) * 1'000'000u;
    int r;
    while ((r = ep_.tx.push(p, uint32_t(n))) == -EAGAIN) {
      ep_.tx.publish();
      int w = ep_.tx.wait_space(uint32_t(n), pol_, deadline);
      if (w < 0) return Throw(env, "pushWait", w);
    }
    if (r < 0) return Throw(env, "pushWait", r);
    ep_.tx.publish();
    return env.Undefined();
  }

  /**
   * Copy entries into out as [u32 len LE][len bytes]... while the next one surely fits
   * (4 + maxEntry bytes left), acknowledge them (commit), return the bytes used. Throws EPROTO.
   */
  int64_t DrainInto(uint8_t* out, size_t cap, int* err) {
    size_t off = 0;
    uint32_t len = 0;
    *err = 0;
    while (cap - off >= 4 + size_t(ep_.rx.max_entry())) {
      int r = ep_.rx.pop(out + off + 4, ep_.rx.max_entry(), &len);
      if (r == 0) break;
      if (r < 0) {
        *err = r;
        break;
      }
      std::memcpy(out + off, &len, 4);
      off += 4 + len;
    }
    ep_.rx.commit();
    return int64_t(off);
  }

  Napi::Value Drain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsTypedArray()) return Throw(env, "drain(out: Uint8Array)", EINVAL);
    Napi::TypedArray t = info[0].As<Napi::TypedArray>();
    uint8_t* p = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
    int err;
    int64_t n = DrainInto(p, t.ByteLength(), &err);
    if (err && n == 0) return Throw(env, "drain", err);
    return Napi::Number::New(env, double(n));  // an error after some entries shows at the next call
  }

  // wait(timeoutMs) -> boolean: spin, yield, then sleep until entries (or an error) are there.
  Napi::Value Wait(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    int64_t ms;
    if (!IntArg(info, 0, 0, 86'400'000, &ms)) return Throw(env, "wait(timeoutMs)", EINVAL);
    int r = ep_.rx.wait(pol_, now_ns() + uint64_t(ms) * 1'000'000u);
    return Napi::Boolean::New(env, r == 0);
  }

  // armSpace() -> boolean: true when an entry of maxEntry bytes fits now; else the peer rings
  // our doorbell when it acknowledges (watch mode: the callback runs).
  Napi::Value ArmSpace(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    Doorbell b{RingCtl::at(map_.base, side_out(), map_.ring_bytes).prod_wait, own_};
    b.announce();
    if (ep_.tx.fits(ep_.tx.max_entry())) {
      b.awake();
      return Napi::Boolean::New(env, true);
    }
    return Napi::Boolean::New(env, false);
  }

  int side_out() const { return ep_side_ == SIDE_PROCESS ? RING_REQUEST : RING_COMPLETION; }

  // watch(batch: Uint8Array, cb(bytes: number, err: number)) on the own doorbell via uv_poll.
  Napi::Value Watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Open(env)) return env.Undefined();
    if (own_ < 0) return Throw(env, "watch: needs an own doorbell (eventfd)", EINVAL);
    if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsFunction())
      return Throw(env, "watch(batch: Uint8Array, cb)", EINVAL);
    if (poll_) return Throw(env, "watch: already watching", EBUSY);
    Napi::TypedArray t = info[0].As<Napi::TypedArray>();
    if (t.ByteLength() < 4 + size_t(ep_.rx.max_entry())) return Throw(env, "watch: batch smaller than 4 + maxEntry", EINVAL);
    batch_ref_ = Napi::Persistent(t.As<Napi::Object>());
    batch_ = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
    batch_cap_ = t.ByteLength();
    cb_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    int e = uv_poll_init(loop, poll_, own_);
    if (e == 0) {
      poll_->data = this;
      e = uv_poll_start(poll_, UV_READABLE, OnReadable);
      if (e != 0) {
        uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
        poll_ = nullptr;
      }
    } else {
      delete poll_;
      poll_ = nullptr;
    }
    if (e != 0) {
      cb_.Reset();
      batch_ref_.Reset();
      return Throw(env, "watch: uv_poll", -e);  // libuv errors are -errno on Linux
    }
    env_ = env;
    Ref();  // alive while watching
    if (ep_.rx.arm()) Kick();
    return env.Undefined();
  }

  void Kick() {
    uint64_t one = 1;
    ssize_t r = write(own_, &one, sizeof one);
    (void)r;
  }

  static void OnReadable(uv_poll_t* h, int status, int) {
    auto* self = static_cast<Channel*>(h->data);
    if (status < 0) return;
    self->Deliver();
  }

  void Deliver() {
    uint64_t v;
    ssize_t rd = read(own_, &v, sizeof v);  // clear the doorbell
    (void)rd;
    Napi::HandleScope scope(env_);
    for (int round = 0; round < 16 && poll_; round++) {
      ep_.rx.disarm();
      int err;
      int64_t n = DrainInto(batch_, batch_cap_, &err);
      // Every ring is reported (n may be 0: the peer acknowledged, space to push again).
      cb_.MakeCallback(Value(), {Napi::Number::New(env_, double(n)), Napi::Number::New(env_, err)});
      if (env_.IsExceptionPending()) {
        // A throwing callback is an uncaught exception, as for any libuv-driven JS callback.
        Napi::Error e = env_.GetAndClearPendingException();
        napi_fatal_exception(env_, e.Value());
        if (poll_) Kick();  // entries may remain: come back after the exception handlers ran
        return;
      }
      if (err || !poll_) {
        StopPoll();
        return;
      }
      if (!ep_.rx.arm()) return;  // asleep in the event loop: the producer rings the doorbell
    }
    if (poll_) Kick();  // still busy after 16 batches: let the loop run other work first
  }

  void StopPoll() {
    if (!poll_) return;
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
    ep_.rx.disarm();
    cb_.Reset();
    batch_ref_.Reset();
    Unref();
  }

  Napi::Value Unwatch(const Napi::CallbackInfo& info) {
    StopPoll();
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    if (!map_.base) return o;
    o.Set("ringBytes", Napi::Number::New(env, map_.ring_bytes));
    o.Set("maxEntry", Napi::Number::New(env, ep_.tx.max_entry()));
    o.Set("txTail", Napi::Number::New(env, double(ep_.tx.tail())));
    o.Set("txAcked", Napi::Number::New(env, double(ep_.tx.acked())));
    o.Set("rxHead", Napi::Number::New(env, double(ep_.rx.head())));
    o.Set("error", Napi::Number::New(env, ep_.rx.error() ? ep_.rx.error() : ep_.tx.error()));
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    StopPoll();
    Release();
    return info.Env().Undefined();
  }

  void Release() {
    if (poll_) return;  // watching holds a reference; Close stops it first
    ep_ = Endpoint();
    map_.unmap();
    if (own_ >= 0) close(own_);
    if (peer_ >= 0) close(peer_);
    own_ = peer_ = -1;
  }

  PairMap map_;
  Endpoint ep_;
  WakePolicy pol_;
  int own_ = -1, peer_ = -1;
  int ep_side_ = SIDE_PROCESS;
  uv_poll_t* poll_ = nullptr;
  Napi::Env env_ = nullptr;
  Napi::FunctionReference cb_;
  Napi::ObjectReference batch_ref_;
  uint8_t* batch_ = nullptr;
  size_t batch_cap_ = 0;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("createPair", Napi::Function::New<CreatePair>(env));
  exports.Set("doorbell", Napi::Function::New<Doorbell_>(env));
  exports.Set("socketpair", Napi::Function::New<SocketPair>(env));
  exports.Set("closeFd", Napi::Function::New<CloseFd>(env));
  exports.Set("sendFds", Napi::Function::New<SendFds>(env));
  exports.Set("recvFds", Napi::Function::New<RecvFds>(env));
  exports.Set("mapRaw", Napi::Function::New<MapRaw>(env));
  exports.Set("mapBudgetRaw", Napi::Function::New<MapBudgetRaw>(env));
  exports.Set("Channel", Channel::Init(env));
  exports.Set("Sock", Sock::Init(env));
  Napi::Object layout = Napi::Object::New(env);
  layout.Set("headerBytes", Napi::Number::New(env, double(PAIR_HEADER_BYTES)));
  layout.Set("ctlLine", Napi::Number::New(env, double(CTL_LINE)));
  layout.Set("minRingBytes", Napi::Number::New(env, MIN_RING_BYTES));
  layout.Set("maxRingBytes", Napi::Number::New(env, MAX_RING_BYTES));
  layout.Set("entryHeader", Napi::Number::New(env, ENTRY_HEADER));
  layout.Set("kindData", Napi::Number::New(env, KIND_DATA));
  layout.Set("kindWrap", Napi::Number::New(env, KIND_WRAP));
  exports.Set("layout", layout);
  return exports;
}

}  // namespace

NODE_API_MODULE(fractos_queue, Init)

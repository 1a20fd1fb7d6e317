// The client's unix socket to its Controller, owned natively (issue #8 item 2; docs/queues.md
// "The socket"): a non-blocking connect with a timeout, frames split in C++ and handed to JS
// once per batch with the fds that came with them (SCM_RIGHTS, native/include/fd_stream.h),
// writes with writev/sendmsg and an output queue whose fds leave with their frame's first
// byte. Used by libfractos/native-link.ts. No C++ exceptions; errors reach JS as a string
// code (EDISCONNECTED, ETIMEDOUT, EPROTO, or an errno name).
#include "sock.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace fractos::queue {

namespace {
constexpr uint32_t kLingerMs = 1000;
constexpr int kReadRounds = 16;

const char* codeOf(int e) {
  if (e == EPROTO) return "EPROTO";
  if (e == ETIMEDOUT) return "ETIMEDOUT";
  if (e == ECONNREFUSED || e == ENOENT || e == ECONNRESET || e == EPIPE || e == ENOTCONN) return "EDISCONNECTED";
  const char* n = strerrorname_np(e);
  return n ? n : "EIO";
}

void deletePoll(uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); }
void deleteTimer(uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); }
}  // namespace

Napi::Function Sock::Init(Napi::Env env) {
  return DefineClass(env, "Sock",
                     {InstanceMethod<&Sock::Connect>("connect"), InstanceMethod<&Sock::Start>("start"),
                      InstanceMethod<&Sock::Writev>("writev"), InstanceMethod<&Sock::SendFds>("sendWithFds"),
                      InstanceMethod<&Sock::Backlog>("backlog"), InstanceMethod<&Sock::SetReading>("setReading"),
                      InstanceMethod<&Sock::Close>("close"), InstanceMethod<&Sock::Fd>("fd"),
                      InstanceMethod<&Sock::AttachQueue>("attachQueue"), InstanceMethod<&Sock::Poll>("poll"),
                      InstanceMethod<&Sock::Stats>("stats"), InstanceMethod<&Sock::SetFrameHook>("setFrameHook"),
                      InstanceMethod<&Sock::SetWakeAll>("setWakeAll")});
}

// new Sock(maxFrameBytes)
Sock::Sock(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<Sock>(info), in_(16 * 1024 * 1024 + 4096), qin_(16 * 1024 * 1024 + 4096) {
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(info.Env(), "Sock(maxFrameBytes)").ThrowAsJavaScriptException();
    return;
  }
  uint32_t m = info[0].As<Napi::Number>().Uint32Value();
  if (m < FRAME_HEADER) m = FRAME_HEADER;
  in_ = FrameSplitter(m);
  qin_ = FrameSplitter(m);
  napi_get_uv_event_loop(info.Env(), &loop_);
  env_ = info.Env();
}

Sock::~Sock() {
  // Only reached once no handle refers to us (Unref after every handle closed). A hook still
  // set here is not called (Finish detached it on every normal path; at environment teardown
  // its loop may be gone already).
  hook_ = nullptr;
  if (fd_ >= 0) ::close(fd_);
}

Napi::Value Sock::Fd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

// connect(path, timeoutMs, cb(code|null))
Napi::Value Sock::Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsFunction() || fd_ >= 0 || state_ != St::Idle) {
    Napi::TypeError::New(env, "connect(path, timeoutMs, cb) on a new Sock").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  struct sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) {
    Napi::Error e = Napi::Error::New(env, "unix:" + path + ": path too long");
    e.Set("code", Napi::String::New(env, "EINVAL"));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  memcpy(sa.sun_path, path.data(), path.size());
  sa_ = std::string(reinterpret_cast<const char*>(&sa), sizeof sa);
  fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    Napi::Error e = Napi::Error::New(env, std::string("socket: ") + strerror(errno));
    e.Set("code", Napi::String::New(env, codeOf(errno)));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  connectCb_ = Napi::Persistent(info[2].As<Napi::Function>());
  state_ = St::Connecting;
  deadline_ = uv_now(loop_) + uint64_t(std::max(0.0, info[1].As<Napi::Number>().DoubleValue()));
  timer_ = new uv_timer_t;
  uv_timer_init(loop_, timer_);
  timer_->data = this;
  Ref();  // alive while a handle refers to us
  TryConnect();
  return env.Undefined();
}

// A unix stream connect() does not go "in progress": it succeeds, fails, or answers EAGAIN
// (the listener's backlog is full: try again). Each try runs from the loop (the callback is
// never called inside connect()).
void Sock::TryConnect() {
  int r = ::connect(fd_, reinterpret_cast<const sockaddr*>(sa_.data()), socklen_t(sa_.size()));
  int e = r == 0 ? 0 : errno;
  if (e == EAGAIN || e == EINTR || e == EINPROGRESS) {
    if (uv_now(loop_) >= deadline_) {
      connectErr_ = ETIMEDOUT;
      uv_timer_start(timer_, OnConnectTimer, 0, 0);
    } else {
      uv_timer_start(timer_, OnConnectTimer, 5, 0);  // retry in 5 ms
    }
    return;
  }
  connectErr_ = e;
  connectDone_ = true;
  uv_timer_start(timer_, OnConnectTimer, 0, 0);
}

void Sock::OnConnectTimer(uv_timer_t* t) {
  auto* self = static_cast<Sock*>(t->data);
  if (self->state_ != St::Connecting) return;
  if (!self->connectDone_ && self->connectErr_ == 0) {
    self->TryConnect();
    return;
  }
  Napi::HandleScope scope(self->env_);
  Napi::FunctionReference cb = std::move(self->connectCb_);
  int e = self->connectErr_;
  if (e != 0) {
    self->state_ = St::Dead;
    ::close(self->fd_);
    self->fd_ = -1;
    self->ReleaseHandles();
    std::string msg = e == ETIMEDOUT ? "connect timed out" : std::string("connect: ") + strerror(e);
    cb.MakeCallback(self->Value(), {Napi::String::New(self->env_, codeOf(e)), Napi::String::New(self->env_, msg)});
  } else {
    self->state_ = St::Open;
    cb.MakeCallback(self->Value(), {self->env_.Null(), self->env_.Null()});
  }
  self->FatalIfThrown();
}

void Sock::FatalIfThrown() {
  if (env_.IsExceptionPending()) {
    Napi::Error e = env_.GetAndClearPendingException();
    napi_fatal_exception(env_, e.Value());
  }
}

// start(onFrames(buf, fds: number[] | null), onClose(code | null, message))
Napi::Value Sock::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (state_ != St::Open || poll_ || info.Length() < 2 || !info[0].IsFunction() || !info[1].IsFunction()) {
    Napi::TypeError::New(env, "start(onFrames, onClose) on a connected Sock").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  framesCb_ = Napi::Persistent(info[0].As<Napi::Function>());
  closeCb_ = Napi::Persistent(info[1].As<Napi::Function>());
  poll_ = new uv_poll_t;
  int e = uv_poll_init(loop_, poll_, fd_);
  if (e != 0) {
    delete poll_;
    poll_ = nullptr;
    Napi::Error err = Napi::Error::New(env, "uv_poll_init failed");
    err.Set("code", Napi::String::New(env, codeOf(-e)));
    err.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  poll_->data = this;
  UpdatePoll();
  return env.Undefined();
}

void Sock::UpdatePoll() {
  if (!poll_) return;
  int ev = 0;
  if (reading_ || state_ == St::Closing) ev |= UV_READABLE | UV_DISCONNECT;
  if (out_.size() > 0) ev |= UV_WRITABLE;
  if (ev == pollEv_) return;
  pollEv_ = ev;
  if (ev) uv_poll_start(poll_, ev, OnPoll);
  else uv_poll_stop(poll_);
}

void Sock::OnPoll(uv_poll_t* h, int status, int events) {
  auto* self = static_cast<Sock*>(h->data);
  if (status < 0) {
    self->Fail(EDISCONNECTED_ERR, "socket error");
    return;
  }
  if (events & UV_WRITABLE) self->Flush();
  if (self->state_ == St::Dead) return;
  if (self->state_ == St::Closing) {
    self->Linger();
    return;
  }
  if (events & (UV_READABLE | UV_DISCONNECT)) self->Read();
}

void Sock::Read() {
  FrameBatch batch;
  int err = 0;
  bool eof = false;
  for (int round = 0; round < kReadRounds && reading_; round++) {
    size_t room;
    uint8_t* p = in_.space(&room);
    ssize_t r = fdstream::recvWithFds(fd_, p, room, rx_, in_.pos());
    if (r == 0) {
      eof = true;
      break;
    }
    if (r < 0) {
      if (r != -EAGAIN) err = int(-r);
      break;
    }
    counters_.bytesIn += uint64_t(r);
    int e = in_.commit(size_t(r), batch, &rx_);
    if (e) {
      err = -e;
      break;
    }
    if (size_t(r) < room) break;
  }
  if (batch.hooked) HookFlush(batch.hooked);
  if (batch.frames && state_ == St::Open) {
    Deliver(batch);
  } else {
    delete batch.bytes;
    for (auto& p : batch.fds) ::close(p.second);
  }
  if (state_ != St::Open) return;
  if (err) Fail(err, err == EPROTO ? "bad frame or control message from the controller" : strerror(err));
  else if (eof) {
    // What the Controller published on ring 1 before it closed (an error reply just before
    // the close, as a socket's last write) still arrives, then the close.
    if (map_.base && reading_) {
      FrameBatch qb;
      DrainQ(qb);
      if (qb.hooked) HookFlush(qb.hooked);
      if (qb.frames && state_ == St::Open) Deliver(qb);
      delete qb.bytes;
      if (state_ != St::Open) return;
    }
    Fail(EDISCONNECTED_ERR, "the controller closed the channel");
  }
}

/**
 * A batch's bytes as a JS Buffer (the vector is consumed). A small batch is copied into memory
 * V8 owns: an external Buffer costs a finalizer per batch, run by the GC (at QD32 a 4 KiB DAX
 * client spent ~10% of its CPU in the GC with one per batch); a large one is handed over.
 */
static Napi::Buffer<uint8_t> BatchBuffer(Napi::Env env, std::vector<uint8_t>* v) {
  constexpr size_t COPY_MAX = 64 * 1024;
  if (v->size() <= COPY_MAX) {
    Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(env, v->data(), v->size());
    delete v;
    return b;
  }
  return Napi::Buffer<uint8_t>::New(env, v->data(), v->size(), [](Napi::Env, uint8_t*, std::vector<uint8_t>* vec) { delete vec; }, v);
}

void Sock::Deliver(FrameBatch& b) {
  Napi::Env env = env_;
  Napi::HandleScope scope(env);
  auto* v = b.bytes;
  Napi::Buffer<uint8_t> buf = BatchBuffer(env, v);
  b.bytes = nullptr;
  Napi::Value fds = env.Null();
  if (!b.fds.empty()) {
    Napi::Array a = Napi::Array::New(env, b.fds.size() * 2);
    for (size_t i = 0; i < b.fds.size(); i++) {
      a.Set(uint32_t(2 * i), Napi::Number::New(env, b.fds[i].first));
      a.Set(uint32_t(2 * i + 1), Napi::Number::New(env, b.fds[i].second));
    }
    fds = a;
  }
  counters_.framesIn += b.frames;
  framesCb_.MakeCallback(Value(), {buf, fds});
  FatalIfThrown();
}

// writev(chunks: Uint8Array[], quiet = false) -> backlog bytes; quiet: on a queue pair, publish
// without waking the Controller (frames nobody waits for: acknowledgements)
Napi::Value Sock::Writev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    Napi::TypeError::New(env, "writev(chunks)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array a = info[0].As<Napi::Array>();
  if (state_ == St::Open) {
    uint32_t n = a.Length();
    iov_.resize(n);
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
      Napi::Value c = a.Get(i);
      if (!c.IsTypedArray()) {
        Napi::TypeError::New(env, "writev: chunks must be Uint8Arrays").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      Napi::TypedArray t = c.As<Napi::TypedArray>();
      iov_[i].iov_base = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
      iov_[i].iov_len = t.ByteLength();
      total += t.ByteLength();
    }
    bool quiet = info.Length() > 1 && info[1].ToBoolean();
    if (map_.base) PushFrames(iov_.data(), int(n), total, quiet);
    else Write(iov_.data(), int(n), total, nullptr, 0);
  }
  return Napi::Number::New(env, double(out_.size() + qout_.size()));
}

// sendWithFds(frame, fds: number[]) -> backlog bytes
Napi::Value Sock::SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsArray()) {
    Napi::TypeError::New(env, "sendWithFds(frame, fds)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array a = info[1].As<Napi::Array>();
  if (a.Length() < 1 || a.Length() > uint32_t(fdstream::kMaxFds)) {
    Napi::Error e = Napi::Error::New(env, "sendWithFds: 1..8 fds");
    e.Set("code", Napi::String::New(env, "EINVAL"));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fds[fdstream::kMaxFds];
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value v = a.Get(i);
    if (!v.IsNumber()) {
      Napi::TypeError::New(env, "sendWithFds: fds must be numbers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    fds[i] = v.As<Napi::Number>().Int32Value();
  }
  Napi::TypedArray t = info[0].As<Napi::TypedArray>();
  if (state_ == St::Open) {
    struct iovec iov{static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset(), t.ByteLength()};
    Write(&iov, 1, t.ByteLength(), fds, int(a.Length()));
  }
  return Napi::Number::New(env, double(out_.size()));
}

void Sock::Write(const struct iovec* iov, int iovcnt, size_t total, const int* fds, int nfds) {
  size_t done = 0;
  if (out_.size() == 0) {
    // iovcnt may exceed IOV_MAX (1024): write in slices while the kernel takes everything
    int i = 0;
    bool fdsSent = nfds == 0;
    while (i < iovcnt) {
      int k = std::min(iovcnt - i, 1024);
      ssize_t w = fdstream::sendWithFds(fd_, iov + i, k, fdsSent ? nullptr : fds, fdsSent ? 0 : nfds);
      if (w < 0) {
        if (w != -EAGAIN) {
          WriteFailed();
          return;
        }
        break;
      }
      if (w > 0) fdsSent = true;
      done += size_t(w);
      size_t slice = 0;
      for (int j = i; j < i + k; j++) slice += iov[j].iov_len;
      if (size_t(w) < slice) break;
      i += k;
    }
    counters_.bytesOut += total;
    if (done == total) return;
    if (fdsSent) nfds = 0;
  } else {
    counters_.bytesOut += total;
  }
  if (nfds > 0) {
    if (int e = out_.mark(total, fds, nfds)) {
      Fail(-e, "fds to send: more than 64 waiting, or dup failed");
      return;
    }
  }
  out_.append(iov, iovcnt, done);
  UpdatePoll();
}

void Sock::Flush() {
  if (out_.flush(fd_) < 0) {
    WriteFailed();
    return;
  }
  if (out_.size() == 0 && state_ == St::Closing && !finSent_) {
    ::shutdown(fd_, SHUT_WR);
    finSent_ = true;
  }
  UpdatePoll();
  if (state_ == St::Open && out_.size() == 0 && drainWanted_) {
    drainWanted_ = false;
    Napi::HandleScope scope(env_);
    closeCb_.MakeCallback(Value(), {Napi::String::New(env_, "drain"), env_.Null()});
    FatalIfThrown();
  }
}

// backlog(wantDrain) -> bytes queued; with wantDrain, onClose('drain') runs once it is empty
Napi::Value Sock::Backlog(const Napi::CallbackInfo& info) {
  size_t b = out_.size() + qout_.size();
  if (info.Length() > 0 && info[0].ToBoolean() && b > 0) drainWanted_ = true;
  return Napi::Number::New(info.Env(), double(b));
}

// setReading(on)
Napi::Value Sock::SetReading(const Napi::CallbackInfo& info) {
  bool on = info.Length() > 0 && info[0].ToBoolean();
  bool resumed = on && !reading_;
  // Ring 1 too: a paused Process does not read it (its Controller sees ring 1 fill up); the
  // doorbell stays watched for space in ring 0 (a paused Process still sends).
  reading_ = on;
  if (resumed && qpoll_ && state_ == St::Open) Kick();  // frames may have come while paused
  UpdatePoll();
  return info.Env().Undefined();
}

// close(): queued output is still written (up to the linger), then FIN; input is read and
// dropped until the Controller closes too (our last frames are not lost to a reset), at
// most kLingerMs; onClose is not called (the JS side closed).
Napi::Value Sock::Close(const Napi::CallbackInfo& info) {
  if (state_ == St::Open) {
    state_ = St::Closing;
    {
      std::lock_guard<std::mutex> g(txMu_);
      txOpen_ = false;  // other threads' sends go through the channel's thread (which refuses them) from now on
    }
    reading_ = false;
    if (qpoll_) uv_poll_stop(qpoll_);  // the rings are done; the socket lingers
    Flush();
    if (state_ == St::Closing) {
      uv_timer_start(timer_, [](uv_timer_t* t) { static_cast<Sock*>(t->data)->Finish(); }, kLingerMs, 0);
      if (!poll_) Finish();
      else UpdatePoll();
    }
  } else if (state_ == St::Connecting) {
    connectErr_ = ECONNABORTED;
    connectDone_ = true;
    uv_timer_start(timer_, OnConnectTimer, 0, 0);
  }
  return info.Env().Undefined();
}

void Sock::Linger() {
  char buf[4096];
  ssize_t r;
  while ((r = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
  }
  if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) Finish();
}

// A write error is reported from the loop, never inside the JS call that wrote.
void Sock::WriteFailed() {
  out_.clear();
  if (state_ == St::Closing) {
    uv_timer_start(timer_, [](uv_timer_t* t) { static_cast<Sock*>(t->data)->Finish(); }, 0, 0);
  } else if (state_ == St::Open) {
    uv_timer_start(timer_, [](uv_timer_t* t) { static_cast<Sock*>(t->data)->Fail(EDISCONNECTED_ERR, "write failed: the controller closed the channel"); }, 0, 0);
  }
  UpdatePoll();
}

void Sock::Fail(int e, const std::string& msg) {
  if (state_ != St::Open) return;
  state_ = St::Dead;  // no "done" from Finish: the close is reported here
  Finish();
  Napi::HandleScope scope(env_);
  closeCb_.MakeCallback(Value(), {Napi::String::New(env_, e == EDISCONNECTED_ERR ? "EDISCONNECTED" : codeOf(e)), Napi::String::New(env_, msg)});
  FatalIfThrown();
}

void Sock::Finish() {
  if (released_) return;
  bool closing = state_ == St::Closing;
  state_ = St::Dead;
  if (fd_ >= 0) {
    if (poll_) uv_poll_stop(poll_);
    ::close(fd_);
    fd_ = -1;
  }
  rx_.closeAll();
  out_.clear();
  DetachHook();
  ReleaseQueue();
  if (closing && !closeCb_.IsEmpty()) {  // a close() asked by JS is over: the fd is closed
    Napi::HandleScope scope(env_);
    closeCb_.MakeCallback(Value(), {Napi::String::New(env_, "done"), env_.Null()});
    FatalIfThrown();
  }
  ReleaseHandles();
}

void Sock::ReleaseHandles() {
  if (poll_) {
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), deletePoll);
    poll_ = nullptr;
  }
  if (timer_) {
    uv_timer_stop(timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(timer_), deleteTimer);
    timer_ = nullptr;
  }
  if (!released_) {
    released_ = true;
    Unref();
  }
}

// ---- queue mode (docs/queues.md "The Process's side") -------------------------------------

// attachQueue(memfd, ownEfd, peerEfd, ringBytes): from now on writev() pushes to ring 0 and
// ring 1's frames arrive through onFrames like the socket's. The fds stay the caller's (the
// pair is mapped, the doorbells duplicated). Errors: EPROTO (not a sealed pair of that size).
Napi::Value Sock::AttachQueue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto fail = [&](const std::string& what, int e) {
    Napi::Error err = Napi::Error::New(env, "attachQueue: " + what + ": " + strerror(e));
    err.Set("code", Napi::String::New(env, codeOf(e)));
    err.ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber())
    return fail("(memfd, ownEfd, peerEfd, ringBytes)", EINVAL);
  if (state_ != St::Open || !poll_ || map_.base) return fail("not an open, started Sock without a queue", EINVAL);
  int fd = info[0].As<Napi::Number>().Int32Value();
  int own = info[1].As<Napi::Number>().Int32Value();
  int peer = info[2].As<Napi::Number>().Int32Value();
  uint32_t rb = info[3].As<Napi::Number>().Uint32Value();
  if (int e = map_.map(fd, rb)) return fail("map", -e);
  ownEfd_ = fcntl(own, F_DUPFD_CLOEXEC, 0);
  peerEfd_ = fcntl(peer, F_DUPFD_CLOEXEC, 0);
  if (ownEfd_ < 0 || peerEfd_ < 0) {
    int e = errno;
    ReleaseQueue();
    return fail("dup", e);
  }
  maxEntry_ = default_max_entry(map_.ring_bytes);
  {
    std::lock_guard<std::mutex> g(txMu_);
    ep_ = Endpoint(map_.base, map_.ring_bytes, SIDE_PROCESS, maxEntry_, ownEfd_, peerEfd_);
  }
  if (ep_.rx.error() || ep_.tx.error()) {
    ReleaseQueue();
    return fail("indices", EPROTO);
  }
  // the host's spinner budget page (docs/queues.md "Spinner budget"), when the Controller sent one
  int bfd = info.Length() > 4 && info[4].IsNumber() ? info[4].As<Napi::Number>().Int32Value() : -1;
  if (bfd >= 0) {
    int e = 0;
    budgetMap_ = map_budget_fd(bfd, &e);
    if (!budgetMap_) {
      ReleaseQueue();
      return fail("spinner budget page", -e);
    }
    uint32_t slots = reinterpret_cast<const std::atomic<uint32_t>*>(budgetMap_ + 8)->load(std::memory_order_relaxed);
    budget_ = SpinBudget(budgetMap_, slots, uint32_t(getpid()));
  }
  // our poll spin (µs), read by the Controller to spin after our activity (0: we do not poll)
  double pollNs = info.Length() > 5 && info[5].IsNumber() ? info[5].As<Napi::Number>().DoubleValue() : 0;
  uint32_t pollUs = pollNs > 0 ? uint32_t(std::min(pollNs, 1e6) / 1000) : 0;
  reinterpret_cast<std::atomic<uint32_t>*>(map_.base + consumer_line(RING_COMPLETION) + 12)->store(pollUs, std::memory_order_relaxed);
  entry_.resize(maxEntry_);
  qpoll_ = new uv_poll_t;
  if (int e = uv_poll_init(loop_, qpoll_, ownEfd_)) {
    delete qpoll_;
    qpoll_ = nullptr;
    ReleaseQueue();
    return fail("uv_poll_init", -e);
  }
  qpoll_->data = this;
  uv_poll_start(qpoll_, UV_READABLE, OnDoorbell);
  {
    std::lock_guard<std::mutex> g(txMu_);
    txOpen_ = state_ == St::Open;
  }
  if (ep_.rx.arm(wakeAll_)) Kick();  // frames already there (sent right after the HELLO reply)
  return env.Undefined();
}

void Sock::Kick() {
  uint64_t one = 1;
  ssize_t r = ::write(ownEfd_, &one, sizeof one);
  (void)r;
}

// Frames (whole, in order) into ring 0 as entries of at most maxEntry bytes: a frame larger
// than that is split over several (the Controller appends payloads to one stream). Published
// once per call (JS calls once per tick). What does not fit waits in qout_ with space-wanted
// armed: the Controller's commit rings our doorbell.
void Sock::PushFrames(const struct iovec* iov, int iovcnt, size_t total, bool quiet) {
  int r = 0;
  {
    std::lock_guard<std::mutex> g(txMu_);
    r = PushFramesLocked(iov, iovcnt, total, quiet);
  }
  if (r < 0) Fail(EPROTO, "the controller broke the request ring");
  else if (r == 1) DrainDone();
}

// Under txMu_: -EPROTO (the ring is broken), 0 (all sent, or some wait in qout_), 1 (qout_ was
// flushed empty: DrainDone).
int Sock::PushFramesLocked(const struct iovec* iov, int iovcnt, size_t total, bool quiet) {
  counters_.bytesOut += total;
  size_t done = 0;
  if (qout_.size() == 0) {
    while (done < total) {
      uint32_t n = uint32_t(std::min<size_t>(total - done, maxEntry_));
      int r = ep_.tx.push_gather(iov, iovcnt, done, n);
      if (r == -EAGAIN) break;
      if (r < 0) {
        ep_.tx.publish();
        return -EPROTO;
      }
      done += n;
    }
    if (quiet) ep_.tx.publish_quiet();
    else ep_.tx.publish();
    if (done == total) return 0;
  }
  qout_.append(iov, iovcnt, done);
  return FlushQLocked();
}

void Sock::FlushQ() {
  int r;
  {
    std::lock_guard<std::mutex> g(txMu_);
    r = FlushQLocked();
  }
  if (r < 0) Fail(EPROTO, "the controller broke the request ring");
  else if (r == 1) DrainDone();
}

int Sock::FlushQLocked() {
  while (qout_.size() > 0) {
    uint32_t n = uint32_t(std::min<size_t>(qout_.size(), maxEntry_));
    int r = ep_.tx.push(qout_.data(), n);
    if (r == -EAGAIN) {
      ep_.tx.publish();
      if (spaceArmed_) return 0;
      if (ep_.tx.arm_space(n)) continue;  // freed meanwhile
      spaceArmed_ = true;
      return 0;
    }
    if (r < 0) return -EPROTO;
    qout_.consume(n);
  }
  ep_.tx.publish();
  qout_.clear(1u << 20);
  return 1;
}

void Sock::DrainDone() {
  if (state_ == St::Open && drainWanted_ && out_.size() == 0) {
    drainWanted_ = false;
    Napi::HandleScope scope(env_);
    closeCb_.MakeCallback(Value(), {Napi::String::New(env_, "drain"), env_.Null()});
    FatalIfThrown();
  }
}

// Ring 1 entries into the second stream; whole frames into `b`. Acknowledges what it read
// (commit: wakes the Controller only if it waits for space). 0 or -EPROTO.
int Sock::DrainQ(FrameBatch& b) {
  int n = 0;
  int err = 0;
  for (; n < 1024; n++) {
    uint32_t len = 0;
    int r = ep_.rx.pop(entry_.data(), maxEntry_, &len);
    if (r == 0) break;
    if (r < 0) {
      err = r;
      break;
    }
    counters_.bytesIn += len;
    qin_.append(entry_.data(), len);
    if (int e = qin_.split(b, nullptr)) {
      err = e;
      break;
    }
    if (b.size() >= (4u << 20)) break;  // a batch of about 4 MiB at most
  }
  ep_.rx.commit();
  return err;
}

void Sock::OnDoorbell(uv_poll_t* h, int status, int) {
  auto* self = static_cast<Sock*>(h->data);
  if (status < 0 || self->state_ != St::Open) return;
  self->OnQueueWake();
}

void Sock::OnQueueWake() {
  uint64_t v;
  ssize_t rd = ::read(ownEfd_, &v, sizeof v);  // clear the doorbell
  (void)rd;
  wakes_++;
  if (spaceArmed_) {
    {
      std::lock_guard<std::mutex> g(txMu_);
      spaceArmed_ = false;
      ep_.tx.disarm_space();
    }
    FlushQ();
    if (state_ != St::Open) return;
  }
  if (!reading_) {  // paused: ring 1 waits (no wake-up asked for it) until setReading(true)
    ep_.rx.disarm();
    return;
  }
  for (int round = 0; round < 16; round++) {
    ep_.rx.disarm();
    FrameBatch b;
    int err = DrainQ(b);
    if (b.hooked) HookFlush(b.hooked);
    if (b.frames && state_ == St::Open) Deliver(b);
    delete b.bytes;
    if (state_ != St::Open || !map_.base) return;
    if (err) {
      Fail(EPROTO, "the controller broke the completion ring");
      return;
    }
    if (!ep_.rx.arm(wakeAll_)) return;  // asleep in the event loop: the Controller rings the doorbell
  }
  Kick();  // still busy after 16 batches: let the loop run other work first
}

// poll(spinNs) -> Buffer | null: spin (bounded, within the host's spinner budget) until
// ring 1 holds frames, then hand the whole ones to JS synchronously (fio's hipri). null when
// none came in time (the doorbell watch still delivers them later).
Napi::Value Sock::Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!map_.base || state_ != St::Open || !reading_) return env.Null();
  uint64_t ns = info.Length() > 0 && info[0].IsNumber() ? uint64_t(std::max(0.0, info[0].As<Napi::Number>().DoubleValue())) : 0;
  if (ns > 1'000'000) ns = 1'000'000;  // at most 1 ms per call
  polls_++;
  if (!budget_spin(budget_.valid() ? &budget_ : nullptr, [this] { return ep_.rx.readable(); }, ns)) return env.Null();
  pollHits_++;
  FrameBatch b;
  int err = DrainQ(b);
  if (b.hooked) HookFlush(b.hooked);
  if (err) {
    uv_timer_start(timer_, [](uv_timer_t* t) { static_cast<Sock*>(t->data)->Fail(EPROTO, "the controller broke the completion ring"); }, 0, 0);
  }
  if (!b.frames) {
    delete b.bytes;
    return env.Null();
  }
  counters_.framesIn += b.frames;
  return BatchBuffer(env, b.bytes);
}

// setWakeAll(all): which publishes of ring 1 wake us (docs/queues.md "No wake-up for nothing")
Napi::Value Sock::SetWakeAll(const Napi::CallbackInfo& info) {
  wakeAll_ = info.Length() < 1 || info[0].ToBoolean();
  return info.Env().Undefined();
}

Napi::Value Sock::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("queue", Napi::Boolean::New(env, map_.base != nullptr));
  o.Set("ringBytes", Napi::Number::New(env, map_.ring_bytes));
  o.Set("maxEntry", Napi::Number::New(env, maxEntry_));
  o.Set("wakes", Napi::Number::New(env, double(wakes_)));
  o.Set("polls", Napi::Number::New(env, double(polls_)));
  o.Set("pollHits", Napi::Number::New(env, double(pollHits_)));
  o.Set("queuedBytes", Napi::Number::New(env, double(qout_.size())));
  o.Set("hooked", Napi::Number::New(env, double(hooked_)));
  return o;
}

void Sock::ReleaseQueue() {
  if (qpoll_) {
    uv_poll_stop(qpoll_);
    uv_close(reinterpret_cast<uv_handle_t*>(qpoll_), deletePoll);
    qpoll_ = nullptr;
  }
  {
    std::lock_guard<std::mutex> g(txMu_);
    txOpen_ = false;
    ep_ = Endpoint();
    map_.unmap();
    qout_.clear();
  }
  budget_.release();
  budget_ = SpinBudget();
  if (budgetMap_) munmap(budgetMap_, BUDGET_BYTES);
  budgetMap_ = nullptr;
  if (ownEfd_ >= 0) ::close(ownEfd_);
  if (peerEfd_ >= 0) ::close(peerEfd_);
  ownEfd_ = peerEfd_ = -1;
}

// ---- native I/O loop (native/include/frame_hook.h; docs/blockdev-backend.md) -----------------

// setFrameHook(hook: External | null, owner?: object): offer every later whole frame (but
// those with fds) to a native loop before JS, on the socket and the rings; `owner` (the loop's
// JS object) is kept alive while attached. null detaches. Errors: EINVAL (not a hook of this
// ABI, or the Sock is not open), EBUSY (the hook serves another channel).
Napi::Value Sock::SetFrameHook(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto fail = [&](const std::string& what, const char* code) {
    Napi::Error err = Napi::Error::New(env, "setFrameHook: " + what);
    err.Set("code", Napi::String::New(env, code));
    err.ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (info.Length() < 1) return fail("(hook, owner)", "EINVAL");
  if (info[0].IsNull() || info[0].IsUndefined()) {
    DetachHook();
    return env.Undefined();
  }
  if (!info[0].IsExternal()) return fail("not an External", "EINVAL");
  if (state_ != St::Open) return fail("the channel is not open", "EINVAL");
  auto* h = info[0].As<Napi::External<fractos_frame_hook>>().Data();
  if (!h || h->magic != FRACTOS_FRAME_HOOK_MAGIC || h->abi != FRACTOS_FRAME_HOOK_ABI || h->size < sizeof(fractos_frame_hook) ||
      !h->attach || !h->detach || !h->on_frame || !h->flush)
    return fail("not a frame hook of ABI " + std::to_string(FRACTOS_FRAME_HOOK_ABI), "EINVAL");
  DetachHook();
  chanOps_ = fractos_chan_ops{FRACTOS_FRAME_HOOK_ABI, sizeof(fractos_chan_ops), this, &Sock::ChanSend, &Sock::ChanSendAnyThread, &Sock::ChanSpin};
  if (int e = h->attach(h->ctx, &chanOps_)) return fail(std::string("attach: ") + strerror(-e), codeOf(-e));
  hook_ = h;
  hookRef_ = Napi::Persistent(info[0]);
  if (info.Length() > 1 && info[1].IsObject()) hookOwner_ = Napi::Persistent(info[1]);
  in_.setHook(h);
  qin_.setHook(h);
  return env.Undefined();
}

void Sock::DetachHook() {
  if (!hook_) return;
  const fractos_frame_hook* h = hook_;
  hook_ = nullptr;
  in_.setHook(nullptr);
  qin_.setHook(nullptr);
  h->detach(h->ctx);
  hookRef_.Reset();
  hookOwner_.Reset();
}

void Sock::HookFlush(uint32_t hooked) {
  hooked_ += hooked;
  if (hook_) hook_->flush(hook_->ctx);
}

int Sock::ChanSpin(void* chan, int (*ready)(void*), void* arg, uint64_t ns) {
  auto* s = static_cast<Sock*>(chan);
  if (s->state_ != St::Open || !ready) return 0;
  if (ns > 1'000'000) ns = 1'000'000;
  // frames for us (new deliveries) end the spin too: the loop serves them first
  return budget_spin(s->budget_.valid() ? &s->budget_ : nullptr, [&] { return ready(arg) != 0 || (s->map_.base && s->ep_.rx.readable()); }, ns) ? 1 : 0;
}

int Sock::ChanSend(void* chan, const struct iovec* iov, int iovcnt, uint32_t flags) {
  auto* s = static_cast<Sock*>(chan);
  if (s->state_ != St::Open || iovcnt <= 0) return -EPIPE;
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
  if (s->map_.base) s->PushFrames(iov, iovcnt, total, (flags & FRACTOS_SEND_QUIET) != 0);
  else s->Write(iov, iovcnt, total, nullptr, 0);
  return s->state_ == St::Open ? 0 : -EPIPE;
}

// frame_hook.h's send_any_thread: one ring entry straight into ring 0 under txMu_, or -EAGAIN.
int Sock::ChanSendAnyThread(void* chan, const struct iovec* iov, int iovcnt, uint32_t flags) {
  auto* s = static_cast<Sock*>(chan);
  if (iovcnt <= 0) return -EAGAIN;
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
  std::lock_guard<std::mutex> g(s->txMu_);
  if (!s->txOpen_ || s->qout_.size() != 0 || total == 0 || total > s->maxEntry_) return -EAGAIN;
  // -EAGAIN (full) or a broken ring (sticky: the channel's thread fails the channel on its next push)
  if (s->ep_.tx.push_gather(iov, iovcnt, 0, uint32_t(total)) < 0) return -EAGAIN;
  if (flags & FRACTOS_SEND_QUIET) s->ep_.tx.publish_quiet();
  else s->ep_.tx.publish();
  s->counters_.bytesOut += total;
  return 0;
}

}  // namespace fractos::queue

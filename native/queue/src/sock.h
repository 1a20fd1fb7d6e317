// The client's unix socket owned natively (sock.cc; docs/queues.md "The socket").
#pragma once

#include <napi.h>
#include <uv.h>
#include <sys/uio.h>

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "fd_stream.h"
#include "frames.h"

namespace fractos::queue {

/** Sentinel errno for "the channel is gone" (reported to JS as EDISCONNECTED). */
constexpr int EDISCONNECTED_ERR = 100000;

class Sock : public Napi::ObjectWrap<Sock> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit Sock(const Napi::CallbackInfo& info);
  ~Sock() override;

 private:
  enum class St : uint8_t { Idle, Connecting, Open, Closing, Dead };

  Napi::Value Connect(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Writev(const Napi::CallbackInfo& info);
  Napi::Value SendFds(const Napi::CallbackInfo& info);
  Napi::Value Backlog(const Napi::CallbackInfo& info);
  Napi::Value SetReading(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Fd(const Napi::CallbackInfo& info);

  void TryConnect();
  static void OnConnectTimer(uv_timer_t* t);
  static void OnPoll(uv_poll_t* h, int status, int events);
  void UpdatePoll();
  void Read();
  void Deliver(FrameBatch& b);
  void Write(const struct iovec* iov, int iovcnt, size_t total, const int* fds, int nfds);
  void WriteFailed();
  void Flush();
  void Linger();
  void Fail(int e, const std::string& msg);
  void Finish();
  void ReleaseHandles();
  void FatalIfThrown();

  uv_loop_t* loop_ = nullptr;
  Napi::Env env_ = nullptr;
  St state_ = St::Idle;
  int fd_ = -1;
  std::string sa_;
  uint64_t deadline_ = 0;
  int connectErr_ = 0;
  bool connectDone_ = false;
  uv_timer_t* timer_ = nullptr;
  uv_poll_t* poll_ = nullptr;
  int pollEv_ = 0;
  bool reading_ = true;
  bool released_ = false;
  bool finSent_ = false;
  bool drainWanted_ = false;
  Napi::FunctionReference connectCb_, framesCb_, closeCb_;
  // input
  FrameSplitter in_;
  fdstream::RxFds rx_;
  // output
  fdstream::OutQueue out_;
  std::vector<struct iovec> iov_;
  struct {
    uint64_t bytesIn = 0, bytesOut = 0, framesIn = 0;
  } counters_;
};

}  // namespace fractos::queue

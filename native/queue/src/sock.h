// The client's unix socket owned natively (sock.cc; docs/queues.md "The socket").
#pragma once

#include <napi.h>
#include <uv.h>
#include <sys/uio.h>

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "fd_stream.h"
#include "frames.h"
#include "memfd.h"
#include "ring.h"
#include "spin_budget.h"
#include "wake.h"

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
  Napi::Value AttachQueue(const Napi::CallbackInfo& info);
  Napi::Value Poll(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value SetFrameHook(const Napi::CallbackInfo& info);
  Napi::Value SetWakeAll(const Napi::CallbackInfo& info);

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
  // queue mode (docs/queues.md "The Process's side")
  void PushFrames(const struct iovec* iov, int iovcnt, size_t total, bool quiet);
  void FlushQ();
  int PushFramesLocked(const struct iovec* iov, int iovcnt, size_t total, bool quiet);
  int FlushQLocked();
  void DrainDone();
  static void OnDoorbell(uv_poll_t* h, int status, int events);
  int DrainQ(FrameBatch& b);
  void OnQueueWake();
  void Kick();
  void ReleaseQueue();
  // native I/O loop (native/include/frame_hook.h)
  static int ChanSend(void* chan, const struct iovec* iov, int iovcnt, uint32_t flags);
  static int ChanSendAnyThread(void* chan, const struct iovec* iov, int iovcnt, uint32_t flags);
  static int ChanSpin(void* chan, int (*ready)(void*), void* arg, uint64_t ns);
  void HookFlush(uint32_t hooked);
  void DetachHook();

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
  // queue mode
  PairMap map_;
  /** The host's spinner budget page (spin_budget.h), when the Controller sent one. */
  uint8_t* budgetMap_ = nullptr;
  SpinBudget budget_;
  Endpoint ep_;
  int ownEfd_ = -1, peerEfd_ = -1;
  uint32_t maxEntry_ = 0;
  uv_poll_t* qpoll_ = nullptr;
  FrameSplitter qin_;
  fdstream::ByteQueue qout_;  // bytes that did not fit ring 0
  bool spaceArmed_ = false;
  // ep_.tx, qout_ and the pair's mapping are also used by ChanSendAnyThread from other
  // threads: every use of them takes txMu_ (never held while JS or a hook is called).
  std::mutex txMu_;
  bool txOpen_ = false;  // under txMu_: ring 0 may be written (attached, Open)
  bool wakeAll_ = true;  // ring 1 sleep: WAKE_SLEEPING_ALL (any frame) or WAKE_SLEEPING (loud frames only)
  std::vector<uint8_t> entry_;
  uint64_t wakes_ = 0, polls_ = 0, pollHits_ = 0;
  std::vector<struct iovec> iov_;
  const fractos_frame_hook* hook_ = nullptr;
  fractos_chan_ops chanOps_{};
  Napi::Reference<Napi::Value> hookRef_, hookOwner_;
  uint64_t hooked_ = 0;
  struct {
    uint64_t bytesIn = 0, bytesOut = 0, framesIn = 0;
  } counters_;
};

}  // namespace fractos::queue

// The loop thread of the native Controller: epoll over listeners, connections and the
// eventfd of commands posted by the JS thread; one-shot timers in a min-heap whose first
// deadline bounds epoll_wait. See host_impl.h for where the other concerns live.
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "host_impl.h"

namespace fractos {

namespace {
/** epoll data of the eventfd and of listener i (connections use their ConnId < 2^62). */
constexpr uint64_t kEvTag = 1ull << 63;
constexpr uint64_t kListenerTag = 1ull << 62;

uint64_t monoMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}
}  // namespace

HostImpl::HostImpl(HostOptions opts, std::function<void(LogLevel, std::string, std::string)> logSink)
    : opts_(std::move(opts)), logSink_(std::move(logSink)) {
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  evfd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (ep_ >= 0 && evfd_ >= 0) {
    struct epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kEvTag;
    epoll_ctl(ep_, EPOLL_CTL_ADD, evfd_, &ev);
  }
}

HostImpl::~HostImpl() {
  stop();
  for (auto& l : listeners_) ::close(l.fd);
  listeners_.clear();
  if (evfd_ >= 0) ::close(evfd_);
  if (ep_ >= 0) ::close(ep_);
  if (budgetMap_) munmap(budgetMap_, queue::BUDGET_BYTES);
  if (budgetFd_ >= 0) ::close(budgetFd_);
}

uint64_t HostImpl::nowMs() const { return monoMs(); }

bool HostImpl::mayIntrospect(ConnId c) const {
  auto it = conns_.find(c);
  if (it == conns_.end() || !it->second->unixSock || it->second->kernelUid < 0) return false;
  int64_t uid = it->second->kernelUid;
  return uid == 0 || uid == int64_t(geteuid());
}

bool HostImpl::start(uint32_t epoch, std::string* err) {
  if (ep_ < 0 || evfd_ < 0) {
    *err = std::string("epoll/eventfd: ") + strerror(errno);
    return false;
  }
  epoch_ = epoch;
  CoreConfig cfg = opts_.core;
  cfg.epoch = epoch;
  core_ = newCore(this, cfg);
  for (size_t i = 0; i < listeners_.size(); i++) {
    struct epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenerTag | i;
    epoll_ctl(ep_, EPOLL_CTL_ADD, listeners_[i].fd, &ev);
  }
  // the host's spinner budget page (docs/queues.md "Spinner budget"); without it, spins use
  // the process-local budget
  if (opts_.spinSlots > 0 && budgetFd_ < 0) {
    int fd = queue::create_budget_fd(opts_.spinSlots);
    int e = fd;
    uint8_t* m = fd >= 0 ? queue::map_budget_fd(fd, &e) : nullptr;
    if (m) {
      budgetFd_ = fd;
      budgetMap_ = m;
      budget_ = queue::SpinBudget(m, opts_.spinSlots, uint32_t(getpid()));
    } else {
      if (fd >= 0) ::close(fd);
      log(LogLevel::Warn, std::string("spinner budget page: ") + strerror(-e) + " (spins use the process-local budget)", "{}");
    }
  }
  running_ = true;
  thread_ = std::thread([this] { run(); });
  call([this] { startPeers(); });
  return true;
}

void HostImpl::call(const std::function<void()>& fn) {
  if (!running_) {
    fn();
    return;
  }
  std::unique_lock<std::mutex> lk(cmdMu_);
  bool done = false;
  cmds_.push_back([&] {
    fn();
    std::lock_guard<std::mutex> g(cmdMu_);
    done = true;
    cmdCv_.notify_all();
  });
  uint64_t one = 1;
  if (::write(evfd_, &one, 8) < 0) { /* the counter is > 0 already */ }
  cmdCv_.wait(lk, [&] { return done; });
}

void HostImpl::drainCommands() {
  uint64_t n;
  if (::read(evfd_, &n, 8) < 0) { /* EAGAIN: nothing */ }
  std::vector<std::function<void()>> run;
  {
    std::lock_guard<std::mutex> g(cmdMu_);
    run.swap(cmds_);
  }
  for (auto& f : run) f();
}

void HostImpl::stop() {
  if (stopped_) return;
  stopped_ = true;
  auto shut = [this] {
    stopping_ = true;
    if (core_) core_->shutdown();
    std::vector<ConnId> ids;
    for (auto& [id, c] : conns_) ids.push_back(id);
    for (ConnId id : ids) {
      auto it = conns_.find(id);
      if (it == conns_.end()) continue;
      Conn* c = it->second.get();
      if (c->state != ConnState::Lingering && c->fd >= 0) {
        // one last try to hand queued frames to the kernel, then FIN
        flushConn(c);
        ::shutdown(c->fd, SHUT_WR);
      }
      ::close(c->fd);
      c->fd = -1;
    }
    conns_.clear();
    livePeers_.clear();
    deferred_.clear();
    timers_.clear();
    while (!timerHeap_.empty()) timerHeap_.pop();
    for (auto& l : listeners_) {
      epoll_ctl(ep_, EPOLL_CTL_DEL, l.fd, nullptr);
      ::close(l.fd);
    }
    listeners_.clear();
  };
  call(shut);
  if (running_) {
    thread_.join();
    running_ = false;
  }
  delete core_;
  core_ = nullptr;
}

uint64_t HostImpl::setTimer(uint32_t ms, std::function<void()> fn) {
  uint64_t id = nextTimer_++;
  timers_.emplace(id, std::move(fn));
  timerHeap_.push({monoMs() + ms, id});
  return id;
}

void HostImpl::cancelTimer(uint64_t id) { timers_.erase(id); }

int HostImpl::nextTimeoutMs() const {
  if (timerHeap_.empty()) return -1;
  uint64_t now = monoMs();
  uint64_t at = timerHeap_.top().at;
  if (at <= now) return 0;
  uint64_t d = at - now;
  return d > 60000 ? 60000 : int(d);
}

void HostImpl::runTimers() {
  uint64_t now = monoMs();
  while (!timerHeap_.empty() && timerHeap_.top().at <= now) {
    uint64_t id = timerHeap_.top().id;
    timerHeap_.pop();
    auto it = timers_.find(id);
    if (it == timers_.end()) continue;  // cancelled
    std::function<void()> fn = std::move(it->second);
    timers_.erase(it);
    fn();
    runDeferred();
    if (stopping_) return;
  }
  // cancelled timers at the top cost nothing but a pop: drop them now
  while (!timerHeap_.empty() && !timers_.count(timerHeap_.top().id)) timerHeap_.pop();
}

void HostImpl::run() {
  constexpr int kMaxEvents = 64;
  struct epoll_event evs[kMaxEvents];
  while (!stopping_) {
    // rings: read what came while we were busy, publish what we pushed (host_queue.cc); the
    // loop sleeps only when nothing is left of either
    runReadyQueues();
    publishRings();
    if (readyQueues_.empty() && touched_.empty()) {
      spinRings();
      runReadyQueues();
      publishRings();
    }
    int n = epoll_wait(ep_, evs, kMaxEvents, readyQueues_.empty() && touched_.empty() ? nextTimeoutMs() : 0);
    loopNow_ = monoMs();
    if (n < 0) {
      if (errno == EINTR) continue;
      log(LogLevel::Warn, std::string("epoll_wait failed: ") + strerror(errno), "{}");
      break;
    }
    for (int i = 0; i < n && !stopping_; i++) {
      uint64_t tag = evs[i].data.u64;
      if (tag == kEvTag) drainCommands();
      else if (tag & kListenerTag) onListener(size_t(tag & ~kListenerTag));
      else if (tag & kQueueTag) onQueueEvent(tag & ~kQueueTag);
      else onConnEvent(tag, evs[i].events);
      runDeferred();
    }
    if (!stopping_) runTimers();
  }
}

void HostImpl::log(LogLevel level, const std::string& msg, const std::string& fieldsJson) {
  if (logSink_) logSink_(level, msg, fieldsJson);
}

std::string jsonStr(const std::string& s) {
  std::string o = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (ch < 0x20) {
          char b[8];
          snprintf(b, sizeof b, "\\u%04x", ch);
          o += b;
        } else {
          o += char(ch);
        }
    }
  }
  return o + "\"";
}

}  // namespace fractos

// Queue pairs of unix Process conns (docs/queues.md "The Controller's side"; issue #8 item 2).
//
// A Process that asks for HELLO feature QUEUE on a unix socket gets, with the HELLO reply,
// a sealed pair memfd and two eventfds (attachQueue). From then on:
//   - ring 0 (Process -> Controller) is a second input stream of the conn: entry payloads are
//     appended to `q->in` and split into frames by the same code as socket bytes (takeFrames:
//     same length bounds, same EPROTO handling); a ring that breaks the rules (ring.h) closes
//     that conn only;
//   - every frame `send` passes goes on ring 1 as entries of at most maxEntry bytes, without a
//     system call; ring 1 is published once per loop iteration (publishRings), which rings
//     the Process's doorbell only if it announced sleep (wake.h's Dekker fences);
//   - ring 1 full: the rest waits in `q->out` (the conn's backlog: above maxOutboundBytes the
//     conn is paused, neither ring 0 nor the socket is read) and the host arms space-wanted;
//     the Process's consumer rings our doorbell when it frees space;
//   - the Controller's doorbell (eventfd) is in the epoll set. The Controller's wait word on
//     ring 0 is SLEEPING whenever it is not reading that ring: after each drain it announces
//     sleep and re-checks (Consumer::arm); entries that arrived meanwhile are read before the
//     loop sleeps (readyQueues_), so no wake-up is lost and an idle conn costs nothing.
//   - frames with fds stay on the socket (sendWithFds), both ways.
#include <sys/epoll.h>
#include <unistd.h>

#include <cstring>

#include "host_impl.h"

namespace fractos {

namespace {
/** Entries read from one ring 0 per turn (then the others get theirs; the rest waits in readyQueues_). */
constexpr int kEntriesPerTurn = 256;
}  // namespace

int HostImpl::attachQueue(ConnId id, int fds[4], uint32_t* ringBytes) {
  auto it = conns_.find(id);
  if (it == conns_.end() || id != helloConn_) return 0;
  Conn* c = it->second.get();
  if (!c->unixSock || c->q || c->state != ConnState::Process) return 0;
  const uint32_t rb = opts_.core.limits.queueRingBytes;
  auto q = std::make_unique<ConnQueue>();
  q->memfd = queue::create_pair_fd(rb);
  q->procEfd = queue::make_doorbell();
  q->ctlEfd = queue::make_doorbell();
  int e = q->memfd < 0 ? q->memfd : q->procEfd < 0 ? q->procEfd : q->ctlEfd < 0 ? q->ctlEfd : q->map.map(q->memfd, rb);
  if (e < 0) {
    for (int* fd : {&q->memfd, &q->procEfd, &q->ctlEfd}) if (*fd < 0) *fd = -1;
    log(LogLevel::Warn, std::string("queue pair: ") + strerror(-e) + " (the Process stays on its socket)",
        "{\"conn\":" + std::to_string(id) + "}");
    return 0;
  }
  q->maxEntry = queue::default_max_entry(rb);
  q->ep = queue::Endpoint(q->map.base, rb, queue::SIDE_CONTROLLER, q->maxEntry, q->ctlEfd, q->procEfd);
  struct epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kQueueTag | id;
  if (epoll_ctl(ep_, EPOLL_CTL_ADD, q->ctlEfd, &ev) != 0) {
    log(LogLevel::Warn, std::string("queue pair: epoll: ") + strerror(errno), "{\"conn\":" + std::to_string(id) + "}");
    return 0;
  }
  q->ep.rx.arm();  // asleep on ring 0 until the Process rings
  fds[0] = q->memfd;
  fds[1] = q->procEfd;
  fds[2] = q->ctlEfd;
  fds[3] = budgetFd_;
  *ringBytes = rb;
  c->q = std::move(q);
  return budgetFd_ >= 0 ? 4 : 3;
}

void HostImpl::waitingForCredits(ConnId id, bool waiting) {
  auto it = conns_.find(id);
  if (it == conns_.end() || !it->second->q || it->second->q->wantAll == waiting) return;
  Conn* c = it->second.get();
  c->q->wantAll = waiting;
  // read what it published quietly (its acknowledgements) before the loop sleeps; drainRing
  // re-arms with the new kind of sleep
  if (c->state == ConnState::Process && !c->q->ready) {
    c->q->ready = true;
    readyQueues_.push_back(id);
  }
}

void HostImpl::sendQuiet(ConnId id, const struct iovec* iov, int iovcnt) {
  auto it = conns_.find(id);
  if (it == conns_.end() || !it->second->q || it->second->state != ConnState::Process) return send(id, iov, iovcnt);
  Conn* c = it->second.get();
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
  c->st.framesOut++;
  c->st.bytesOut += total;
  queueSend(c, iov, iovcnt, total, true);
}

void HostImpl::queueSend(Conn* c, const struct iovec* iov, int iovcnt, size_t total, bool quiet) {
  ConnQueue& q = *c->q;
  if (!quiet) q.loud = true;
  size_t done = 0;
  if (q.backlog() == 0) {
    while (done < total) {
      uint32_t n = uint32_t(std::min<size_t>(total - done, q.maxEntry));
      int r = q.ep.tx.push_gather(iov, iovcnt, done, n);
      if (r == -EAGAIN) break;
      if (r < 0) {
        closeConn(c, "EPROTO: the Process broke its completion ring (head)", LogLevel::Info);
        return;
      }
      done += n;
    }
    if (done && !q.touched) {
      q.touched = true;
      touched_.push_back(c->id);
    }
    if (done == total) return;
  }
  // ring 1 full: the rest waits (copied) in the conn's backlog until the Process frees space
  q.out.append(iov, iovcnt, done);
  if (!q.touched) {  // arm space-wanted at the end of the iteration (publishRings)
    q.touched = true;
    touched_.push_back(c->id);
  }
  afterBacklogChange(c);
}

// Move what waits in q->out into ring 1 while it fits.
void HostImpl::flushRing(Conn* c) {
  ConnQueue& q = *c->q;
  if (q.backlog() == 0) return;
  size_t pushed = 0;
  while (q.backlog() > 0) {
    uint32_t n = uint32_t(std::min<uint64_t>(q.backlog(), q.maxEntry));
    int r = q.ep.tx.push(q.out.data(), n);
    if (r == -EAGAIN) break;
    if (r < 0) {
      closeConn(c, "EPROTO: the Process broke its completion ring (head)", LogLevel::Info);
      return;
    }
    q.out.consume(n);
    pushed += n;
  }
  if (q.backlog() == 0) {
    q.out.clear(1u << 20);
  }
  if (pushed) q.loud = true;  // what waited may hold loud frames
  if (!q.touched) {
    q.touched = true;
    touched_.push_back(c->id);
  }
  if (pushed) afterBacklogChange(c);
}

void HostImpl::onQueueEvent(ConnId id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn* c = it->second.get();
  if (!c->q || c->state != ConnState::Process) return;
  uint64_t v;
  if (::read(c->q->ctlEfd, &v, sizeof v) < 0) { /* EAGAIN: a spurious wake */ }
  // space freed in ring 1?
  if (c->q->spaceArmed) {
    c->q->spaceArmed = false;
    c->q->ep.tx.disarm_space();
  }
  flushRing(c);
  if (c->state != ConnState::Process || !c->q) return;
  drainRing(c);
}

// Read up to kEntriesPerTurn entries of ring 0 into the conn's second input stream.
void HostImpl::drainRing(Conn* c) {
  ConnQueue& q = *c->q;
  if (c->paused) return;  // resumed by afterBacklogChange (readyQueues_)
  q.ep.rx.disarm();
  int n = 0;
  for (; n < kEntriesPerTurn; n++) {
    if (q.in.size() < q.inLen + q.maxEntry) q.in.resize(q.inLen + q.maxEntry);
    uint32_t len = 0;
    int r = q.ep.rx.pop(q.in.data() + q.inLen, q.maxEntry, &len);
    if (r == 0) break;
    if (r < 0) {
      closeConn(c, "EPROTO: the Process broke its request ring", LogLevel::Info);
      return;
    }
    q.inLen += len;
    c->st.bytesIn += len;
    if (!takeFrames(c, q.in, q.inLen, 0, false)) return;  // closed (EPROTO or by the core)
    if (c->paused) break;
  }
  q.ep.rx.commit();  // the acknowledgement; wakes the Process iff it waits for space
  if (n > 0 && !q.recent) {
    q.recent = true;
    recentQueues_.push_back(c->id);
  }
  if (q.inLen == 0 && q.in.size() > 2 * size_t(q.maxEntry)) {
    q.in.resize(q.maxEntry);
    q.in.shrink_to_fit();
  }
  if (c->paused) return;
  // announce sleep and re-check: what came meanwhile is read before the loop sleeps
  if (n == kEntriesPerTurn || q.ep.rx.arm(q.wantAll)) {
    q.ep.rx.disarm();
    if (!q.ready) {
      q.ready = true;
      readyQueues_.push_back(c->id);
    }
  }
}

void HostImpl::runReadyQueues() {
  std::vector<ConnId> ids;
  ids.swap(readyQueues_);
  for (ConnId id : ids) {
    auto it = conns_.find(id);
    if (it == conns_.end() || !it->second->q) continue;
    Conn* c = it->second.get();
    c->q->ready = false;
    if (c->state == ConnState::Process) drainRing(c);
    runDeferred();
  }
}

// Once per loop iteration: make the entries pushed to each ring 1 visible (one release store
// and, only if the Process sleeps, one eventfd write), and arm space-wanted where bytes wait.
void HostImpl::publishRings() {
  std::vector<ConnId> ids;
  ids.swap(touched_);
  for (ConnId id : ids) {
    auto it = conns_.find(id);
    if (it == conns_.end() || !it->second->q) continue;
    Conn* c = it->second.get();
    ConnQueue& q = *c->q;
    q.touched = false;
    if (c->state != ConnState::Process) continue;
    // quiet frames only: visible, but a Process sleeping for loud frames is not woken
    if (q.loud) q.ep.tx.publish();
    else q.ep.tx.publish_quiet();
    q.loud = false;
    if (q.backlog() > 0 && !q.spaceArmed) {
      uint32_t want = uint32_t(std::min<uint64_t>(q.backlog(), q.maxEntry));
      if (q.ep.tx.arm_space(want)) {
        flushRing(c);  // freed meanwhile: push now, publish at the next iteration
      } else {
        q.spaceArmed = true;
      }
    }
  }
}

// Before the loop sleeps (docs/queues.md "Spinner budget"): when a poll-mode Process (its
// pair's poll word > 0) or, with queueSpinNs, any Process had entries read recently, the loop
// watches every request ring until spinUntilNs_ (that activity + min(its poll spin,
// pollSpinMaxNs), or + queueSpinNs): their wait words say awake, so their Processes publish
// without a system call, and what comes is read at once (readyQueues_). It spins only while
// it holds a slot of the host's budget (else it yields between checks), and ignores (and
// clears) slots held by tags that are not its live queued Processes or that hold more than
// one. Then each ring announces sleep and is re-checked (Consumer::arm). The window runs on
// the Controller's clock: a Process extends it only by sending entries; an idle stack does
// not spin.
void HostImpl::spinRings() {
  const uint64_t now = queue::now_ns();
  for (ConnId id : recentQueues_) {
    auto it = conns_.find(id);
    if (it == conns_.end() || !it->second->q) continue;
    ConnQueue& q = *it->second->q;
    q.recent = false;
    uint64_t w = std::max<uint64_t>(std::min<uint64_t>(uint64_t(q.pollUs()) * 1000u, opts_.pollSpinMaxNs), opts_.queueSpinNs);
    if (w && now + w > spinUntilNs_) spinUntilNs_ = now + w;
  }
  recentQueues_.clear();
  if (spinUntilNs_ <= now) return;
  std::vector<Conn*> watch;
  for (auto& [id, cp] : conns_) {
    Conn* c = cp.get();
    if (c->q && c->state == ConnState::Process && !c->paused && !c->q->ready) watch.push_back(c);
  }
  if (watch.empty()) {
    spinUntilNs_ = 0;
    return;
  }
  spins_++;
  const uint32_t self = uint32_t(getpid());
  // a slot's holder must be one of our live queued Processes holding no other slot
  auto ignore = [&](uint32_t tag) {
    if (tag == self) return false;
    bool live = false;
    for (Conn* c : watch) live |= c->kernelPid == tag;
    if (!live) {
      for (auto& [id, cp] : conns_) live |= cp->q && cp->kernelPid == tag;
      if (!live) return true;
    }
    uint32_t mine = 0;
    budget_.busy(queue::now_us32(), tag, &mine);
    return mine > 1;
  };
  queue::SpinBudget* b = nullptr;
  if (budget_.valid()) {
    b = &budget_;
    spinReclaims_ += budget_.reclaim(ignore);
  }
  for (Conn* c : watch) c->q->ep.rx.disarm();
  auto any = [&] {
    for (Conn* c : watch)
      if (c->q->ep.rx.readable()) return true;
    return false;
  };
  if (queue::budget_spin(b, any, spinUntilNs_ - now, ignore)) spinHits_++;
  for (Conn* c : watch) {
    if (c->q->ep.rx.arm(c->q->wantAll)) {
      c->q->ep.rx.disarm();
      c->q->ready = true;
      readyQueues_.push_back(c->id);
    }
  }
}

}  // namespace fractos

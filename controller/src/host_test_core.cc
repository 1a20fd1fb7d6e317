// A minimal fractos::Core used ONLY to test the host (loop, framing, backpressure, hello
// timeout, peer handshake) while the real core (core.cc, branch ccore) is not in the tree:
// controller/sources.mjs compiles it into the addon only when src/core.cc does not exist.
// It answers HELLO like the Controller does (REPLY: u32 controller id, epoch, process id,
// maxFrameBytes, maxImmBytes, maxCapSlots, maxOutstandingDeliveries) and NULL with an
// empty REPLY; any other Process op is answered ENOTSUP. Peer links: accepted when no live
// link of that id has a newer epoch (the old one is closed), frames ignored.
#include <cstring>
#include <map>
#include <string>

#include "host.h"

namespace fractos {
namespace {

constexpr uint16_t kReply = 0x7f, kNull = 0x02;
constexpr uint16_t kEnosys = 19;  // libfractos/errors.ts wire code of ENOTSUP

void hdr(uint8_t* f, uint32_t len, uint16_t op, uint32_t seq, uint16_t code) {
  memset(f, 0, 16);
  memcpy(f, &len, 4);
  memcpy(f + 4, &op, 2);
  memcpy(f + 8, &seq, 4);
  memcpy(f + 12, &code, 2);
}

class TestCore final : public Core {
 public:
  TestCore(Host* h, const CoreConfig& c) : h_(h), cfg_(c) {}

  void processHello(ConnId c, uint32_t, bool, const uint8_t* f, size_t len) override {
    if (len < 24) {
      h_->close(c, "short HELLO");
      return;
    }
    uint32_t id = nextProc_++;
    procs_[c] = id;
    h_->setLinkInfo(c, false, id, std::string(reinterpret_cast<const char*>(f + 24), std::min<size_t>(len - 24, 64)));
    uint8_t r[16 + 28];
    uint32_t seq;
    memcpy(&seq, f + 8, 4);
    hdr(r, sizeof r, kReply, seq, 0);
    uint32_t v[7] = {cfg_.id, cfg_.epoch, id, cfg_.limits.maxFrameBytes, cfg_.limits.maxImmBytes,
                     cfg_.limits.maxCapSlots, cfg_.limits.maxOutstandingDeliveries};
    memcpy(r + 16, v, sizeof v);
    struct iovec iov{r, sizeof r};
    h_->send(c, &iov, 1);
  }
  void processFrame(ConnId c, const uint8_t* f, size_t) override {
    uint16_t op;
    uint32_t seq;
    memcpy(&op, f + 4, 2);
    memcpy(&seq, f + 8, 4);
    if (op == kReply) return;
    uint8_t r[16];
    hdr(r, 16, kReply, seq, op == kNull ? 0 : kEnosys);
    struct iovec iov{r, 16};
    h_->send(c, &iov, 1);
  }
  void processClosed(ConnId c) override { procs_.erase(c); }
  bool peerUp(ConnId c, uint32_t id, uint32_t epoch) override {
    auto it = peers_.find(id);
    if (it != peers_.end()) {
      if (epoch < it->second.second) return false;
      h_->close(it->second.first, "replaced by a new link");
    }
    peers_[id] = {c, epoch};
    return true;
  }
  void peerFrame(ConnId, const uint8_t*, size_t) override {}
  void peerClosed(ConnId c) override {
    for (auto it = peers_.begin(); it != peers_.end(); ++it) {
      if (it->second.first == c) {
        peers_.erase(it);
        return;
      }
    }
  }
  void drained(ConnId) override {}
  std::string tableSizesJson() const override {
    return "{\"objects\":0,\"procs\":" + std::to_string(procs_.size()) + ",\"peers\":" + std::to_string(peers_.size()) + "}";
  }
  uint64_t objectCount() const override { return 0; }
  void queuedDeliveryBytes(uint32_t, uint64_t* p, uint64_t* i) const override { *p = *i = 0; }
  std::vector<uint32_t> connectedPeers() const override {
    std::vector<uint32_t> v;
    for (auto& [id, e] : peers_) v.push_back(id);
    return v;
  }
  void shutdown() override {
    procs_.clear();
    peers_.clear();
  }

 private:
  Host* h_;
  CoreConfig cfg_;
  uint32_t nextProc_ = 1;
  std::map<ConnId, uint32_t> procs_;
  std::map<uint32_t, std::pair<ConnId, uint32_t>> peers_;
};

}  // namespace

Core* newCore(Host* host, const CoreConfig& cfg) { return new TestCore(host, cfg); }

}  // namespace fractos

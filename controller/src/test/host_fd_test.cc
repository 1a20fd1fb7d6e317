// Tests of the host's file descriptors beside frames (docs/protocol.md "Frames with file
// descriptors"; host.h takeFd / sendWithFds; native/include/fd_stream.h), built with the
// real host (host_loop.cc, host_conns.cc, host_peers.cc) around a small test core, run by
// test/controller-core-unit.test.ts under ASan/UBSan. A raw client on a unix socket checks:
// fds reach the frame they came with (and no other), fds a frame's handler did not take are
// closed, more than 8 fds close only that conn, frames with fds queued behind a backlog
// leave with their frame's first byte, and queued fds are closed with the conn.
// Exit status 0 when every check holds; each failed check prints file:line.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "../../../native/queue/src/frames.h"
#include "../host_impl.h"

using namespace fractos;

// atomic: the test core checks on the loop thread
static std::atomic<int> failures{0};
static std::atomic<int> checks{0};
#define CHECK(cond)                                                                 \
  do {                                                                              \
    checks++;                                                                       \
    if (!(cond)) {                                                                  \
      failures++;                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                               \
  } while (0)

namespace {

constexpr uint16_t kReply = 0x7f, kEcho = 0x02, kIgnore = 0x03, kFlood = 0x04, kFloodThenClose = 0x05, kFdFrame = 0x7e;

void hdr(uint8_t* f, uint32_t len, uint16_t op, uint32_t seq) {
  memset(f, 0, 16);
  memcpy(f, &len, 4);
  memcpy(f + 4, &op, 2);
  memcpy(f + 8, &seq, 4);
}

// The test core: HELLO -> REPLY; ECHO takes every fd of its frame and sends them back with
// a REPLY whose body is their count; IGNORE takes none; FLOOD sends 4 MiB of frames then one
// FD_FRAME carrying a pipe's write end, then a REPLY; FLOOD_THEN_CLOSE the same without the
// REPLY, handing the pipe's read end to the test through `pipeRead`.
class FdCore final : public Core {
 public:
  explicit FdCore(Host* h) : h_(h) {}
  void processHello(ConnId c, uint32_t, bool, const uint8_t* f, size_t) override { reply(c, f, 0, nullptr, 0); }
  void processFrame(ConnId c, const uint8_t* f, size_t) override {
    uint16_t op;
    memcpy(&op, f + 4, 2);
    if (op == kEcho) {
      int fds[8];
      int n = 0;
      for (int fd; n < 8 && (fd = h_->takeFd(c)) >= 0;) fds[n++] = fd;
      CHECK(h_->takeFd(c) == -1);
      reply(c, f, uint32_t(n), fds, n);
      for (int i = 0; i < n; i++) ::close(fds[i]);
    } else if (op == kIgnore) {
      reply(c, f, 0, nullptr, 0);
    } else if (op == kFlood || op == kFloodThenClose) {
      std::vector<uint8_t> big(64 * 1024);
      for (int i = 0; i < 64; i++) {
        hdr(big.data(), uint32_t(big.size()), kReply, 0xffff0000u + uint32_t(i));
        struct iovec iov{big.data(), big.size()};
        h_->send(c, &iov, 1);
      }
      CHECK(h_->backlog(c) > 0);
      int p[2];
      CHECK(pipe2(p, O_CLOEXEC) == 0);
      uint8_t ff[16 + 4];
      hdr(ff, sizeof ff, kFdFrame, 7);
      memcpy(ff + 16, "mark", 4);
      struct iovec iov{ff, sizeof ff};
      h_->sendWithFds(c, &iov, 1, &p[1], 1);
      ::close(p[1]);  // the host keeps its own duplicate while the frame waits
      if (op == kFlood) {
        ::close(p[0]);
        reply(c, f, 0, nullptr, 0);
      } else {
        pipeRead = p[0];
      }
    }
  }
  void processClosed(ConnId) override { closedConns++; }
  bool peerUp(ConnId, uint32_t, uint32_t) override { return false; }
  void peerFrame(ConnId, const uint8_t*, size_t) override {}
  void peerClosed(ConnId) override {}
  void drained(ConnId) override {}
  std::string tableSizesJson() const override { return "{}"; }
  uint64_t objectCount() const override { return 0; }
  void queuedDeliveryBytes(uint32_t, uint64_t* a, uint64_t* b) const override { *a = *b = 0; }
  std::vector<uint32_t> connectedPeers() const override { return {}; }
  void setPeerListed(uint32_t, bool) override {}
  void shutdown() override {}

  int pipeRead = -1;
  int closedConns = 0;

 private:
  void reply(ConnId c, const uint8_t* f, uint32_t count, const int* fds, int n) {
    uint32_t seq;
    memcpy(&seq, f + 8, 4);
    uint8_t r[20];
    hdr(r, sizeof r, kReply, seq);
    memcpy(r + 16, &count, 4);
    struct iovec iov{r, sizeof r};
    if (n) h_->sendWithFds(c, &iov, 1, fds, n);
    else h_->send(c, &iov, 1);
  }
  Host* h_;
};

FdCore* theCore = nullptr;

// A raw client: frames split with the addon's splitter, fds attributed by fd_stream.h.
struct Client {
  int fd = -1;
  queue::FrameSplitter in{1 << 24};
  fdstream::RxFds rx;
  std::vector<std::pair<std::string, std::vector<int>>> frames;  // frame bytes, fds

  explicit Client(const std::string& path) {
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path.data(), path.size());
    CHECK(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  }
  ~Client() {
    if (fd >= 0) ::close(fd);
    for (auto& f : frames)
      for (int x : f.second) ::close(x);
  }
  void send(uint16_t op, uint32_t seq, const int* fds, int n) {
    uint8_t f[16];
    hdr(f, 16, op, seq);
    struct iovec iov{f, 16};
    CHECK(fdstream::sendWithFds(fd, &iov, 1, fds, n) == 16);
  }
  /** Read until `want` frames are there (or EOF / 5 s); false on EOF or error. */
  bool read(size_t want) {
    while (frames.size() < want) {
      struct pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 5000) <= 0) return false;
      size_t room;
      uint8_t* s = in.space(&room);
      ssize_t r = fdstream::recvWithFds(fd, s, room, rx, in.pos());
      if (r <= 0) return false;
      queue::FrameBatch b;
      CHECK(in.commit(size_t(r), b, &rx) == 0);
      size_t off = 0, k = 0;
      while (b.bytes && off < b.bytes->size()) {
        uint32_t len;
        memcpy(&len, b.bytes->data() + off, 4);
        std::vector<int> mine;
        for (; k < b.fds.size() && b.fds[k].first == off; k++) mine.push_back(b.fds[k].second);
        frames.emplace_back(std::string(reinterpret_cast<char*>(b.bytes->data()) + off, len), mine);
        off += len;
      }
      delete b.bytes;
    }
    return true;
  }
  /** True when the peer closed (EOF or reset) within 5 s. */
  bool closedByPeer() {
    for (;;) {
      struct pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 5000) <= 0) return false;
      char buf[65536];
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r <= 0) return true;
    }
  }
};

/** True when every write end of the pipe is closed (read gives EOF within 5 s). */
bool pipeEof(int rd) {
  struct pollfd p{rd, POLLIN, 0};
  if (poll(&p, 1, 5000) <= 0) return false;
  char c;
  return ::read(rd, &c, 1) == 0;
}

uint16_t opOf(const std::string& f) {
  uint16_t v;
  memcpy(&v, f.data() + 4, 2);
  return v;
}
uint32_t u32(const std::string& f, size_t o) {
  uint32_t v;
  memcpy(&v, f.data() + o, 4);
  return v;
}

}  // namespace

namespace fractos {
Core* newCore(Host* host, const CoreConfig&) { return theCore = new FdCore(host); }
}  // namespace fractos

int main() {
  char dir[] = "/tmp/fdtestXXXXXX";
  if (!mkdtemp(dir)) return 2;
  std::string path = std::string(dir) + "/c.sock";
  HostOptions o;
  HostImpl host(o, [](LogLevel l, std::string m, std::string f) {
    if (l == LogLevel::Warn) std::fprintf(stderr, "host warn: %s %s\n", m.c_str(), f.c_str());
  });
  HostAddr a;
  a.unix = true;
  a.path = path;
  a.text = "unix:" + path;
  std::string bound, err;
  if (host.listen(a, &bound, &err) != 0 || !host.start(1, &err)) {
    std::fprintf(stderr, "host: %s\n", err.c_str());
    return 2;
  }

  {  // fds come back with the frame that carried them, and no other frame
    Client c(path);
    c.send(0x01, 1, nullptr, 0);  // HELLO
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int two[2] = {p[1], nul};
    c.send(kEcho, 2, nullptr, 0);
    c.send(kEcho, 3, two, 2);
    c.send(kEcho, 4, nullptr, 0);
    CHECK(c.read(4));
    CHECK(c.frames.size() == 4);
    if (c.frames.size() == 4) {
      CHECK(u32(c.frames[1].first, 16) == 0 && c.frames[1].second.empty());
      CHECK(u32(c.frames[2].first, 16) == 2 && c.frames[2].second.size() == 2);
      CHECK(u32(c.frames[3].first, 16) == 0 && c.frames[3].second.empty());
      if (c.frames[2].second.size() == 2) {  // the same pipe came back: write through it
        CHECK(::write(c.frames[2].second[0], "x", 1) == 1);
        char ch = 0;
        CHECK(::read(p[0], &ch, 1) == 1 && ch == 'x');
      }
    }
    ::close(p[1]);
    ::close(nul);
    // an fd its frame's handler did not take is closed by the host, and does not shift onto
    // the next frame
    int q[2];
    CHECK(pipe2(q, O_CLOEXEC) == 0);
    c.send(kIgnore, 5, &q[1], 1);
    ::close(q[1]);
    c.send(kEcho, 6, nullptr, 0);
    CHECK(c.read(6));
    if (c.frames.size() == 6) CHECK(u32(c.frames[5].first, 16) == 0 && c.frames[5].second.empty());
    CHECK(pipeEof(q[0]));
    ::close(q[0]);
    ::close(p[0]);
  }

  {  // 9 fds in one message: only that conn is closed, every fd closed; another conn works
    Client bad(path), good(path);
    bad.send(0x01, 1, nullptr, 0);
    good.send(0x01, 1, nullptr, 0);
    CHECK(bad.read(1) && good.read(1));
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    int nine[9];
    for (int i = 0; i < 9; i++) nine[i] = p[1];
    uint8_t f[16];
    hdr(f, 16, kEcho, 2);
    struct iovec iov{f, 16};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 9)];
    memset(ctl, 0, sizeof ctl);
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl;
    m.msg_controllen = sizeof ctl;
    cmsghdr* cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * 9);
    memcpy(CMSG_DATA(cm), nine, sizeof nine);
    CHECK(sendmsg(bad.fd, &m, MSG_NOSIGNAL) == 16);
    ::close(p[1]);
    CHECK(bad.closedByPeer());
    CHECK(pipeEof(p[0]));
    ::close(p[0]);
    good.send(kEcho, 2, nullptr, 0);
    CHECK(good.read(2));
  }

  {  // a frame with fds behind a 4 MiB backlog leaves with its first byte
    Client c(path);
    c.send(0x01, 1, nullptr, 0);
    CHECK(c.read(1));
    c.send(kFlood, 2, nullptr, 0);
    usleep(200 * 1000);  // let the host queue most of it before we read
    CHECK(c.read(1 + 64 + 1 + 1));
    int withFds = 0;
    for (size_t i = 1; i < c.frames.size(); i++) {
      if (opOf(c.frames[i].first) == kFdFrame) {
        CHECK(c.frames[i].second.size() == 1);
        CHECK(i == 65);
      } else {
        CHECK(c.frames[i].second.empty());
      }
      withFds += !c.frames[i].second.empty();
    }
    CHECK(withFds == 1);
  }

  {  // fds queued for a conn that closes are closed with it
    int before = theCore->closedConns;
    {
      Client c(path);
      c.send(0x01, 1, nullptr, 0);
      CHECK(c.read(1));
      c.send(kFloodThenClose, 2, nullptr, 0);
      usleep(200 * 1000);
    }  // closed without reading
    int rd = -1;
    for (int i = 0; i < 100 && (theCore->closedConns == before); i++) usleep(20 * 1000);
    host.call([&] { rd = theCore->pipeRead; });
    CHECK(rd >= 0);
    if (rd >= 0) {
      CHECK(pipeEof(rd));
      ::close(rd);
    }
  }

  host.stop();
  unlink(path.c_str());
  rmdir(dir);
  std::printf("host_fd_test: %d checks, %d failed\n", checks.load(), failures.load());
  return failures ? 1 : 0;
}

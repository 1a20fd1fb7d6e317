// Memory (paper §3.4): create (shared regions mapped here, served by their owner), diminish,
// stat, map (a region's fd handed to a holder), and copies: one guarded memcpy between two
// mappings of this Controller, otherwise chunked (one chunk up to 16 KiB, else size/4 within
// 16..256 KiB, 8 in flight) through mappings, MEM_READ/MEM_WRITE calls to a served owner, or
// P_MEM_WRITE to a peer.
// Port of the former TS Controller (controller.ts before this core): #memoryCreate, #diminish, #memoryStat, #execCopy, ...
// Shared regions are sealed memfds passed with SCM_RIGHTS (native/include/memfd_region.h,
// docs/core.md "Shared regions"); copies between mappings still go through the SIGBUS guard of
// native/include/sigbus_guard.h (docs/core.md "Truncated regions").
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "core.h"
#include "memfd_region.h"
#include "sigbus_guard.h"

namespace fractos {

// ---- create, diminish, stat, map -------------------------------------------------------------

namespace {
/**
 * Most fds all shared regions may hold in this OS process: half its RLIMIT_NOFILE (soft), so
 * that Processes registering regions never starve the Controller of fds for connections.
 */
int64_t regionFdLimit() {
  // Read at each registration (not a hot path): the limit may change at run time.
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return int64_t(1) << 20;
  return int64_t(rl.rlim_cur / 2);
}

Err regionFdsFull() {
  return Err(kNoSpc, "the Controller holds " + std::to_string(Region::openFds.load()) + " region fds (limit " + std::to_string(regionFdLimit()) +
                         ": half its RLIMIT_NOFILE)");
}

/** Closes an fd taken from the host unless released. */
struct TakenFd {
  int fd;
  explicit TakenFd(int f) : fd(f) {}
  TakenFd(const TakenFd&) = delete;
  TakenFd& operator=(const TakenFd&) = delete;
  ~TakenFd() {
    if (fd >= 0) close(fd);
  }
  int release() {
    int f = fd;
    fd = -1;
    return f;
  }
};
}  // namespace

Err CoreImpl::memoryCreate(const std::shared_ptr<Proc>& proc, uint32_t seq, const uint8_t* f, size_t len) {
  // u8 backing, u8 perms, u8 flags, u8 0, u32 region id, u64 offset, u64 size, u64 servedKey | regionSize
  if (len < kHeaderBytes + 32) return Err(kProto, "frame body shorter than 32 bytes");
  Reader r(f, len);
  uint8_t backing = r.u8();
  uint8_t perms = r.u8() & kRW;
  uint8_t flags = r.u8();
  r.skip(1);
  uint32_t regionId = r.u32();
  uint64_t offset = r.u64(), size = r.u64(), key = r.u64();
  if (Err e = r.err()) return e;
  // The fd that came with this frame, if it says one did: taken first, whatever else is wrong,
  // so that it is closed (and not left for the next frame) when the frame is refused.
  TakenFd fd((flags & kMemCreateFd) ? host_->takeFd(proc->conn) : -1);
  if (len != kHeaderBytes + 32) return Err(kProto, "MEMORY_CREATE body is 32 bytes, not " + std::to_string(len - kHeaderBytes));
  if (flags & ~uint8_t(kMemCreateFd | kMemCreateShareWhole)) return Err(kProto, "unknown MEMORY_CREATE flags " + std::to_string(flags));
  auto info = std::make_shared<MemInfo>();
  info->perms = perms;
  info->offset = offset;
  info->size = size;
  uint64_t regionKey = 0;
  if (backing == kShared) {
    // A Process registers only regions it passed the fd of; a tcp channel passes none.
    if (proc->pid == 0)
      return Err(kPerm, "shared Memory needs a unix-socket channel (it passes the region's fd); process " + std::to_string(proc->id) +
                            " is on tcp: use served Memory");
    if (regionId == 0) return Err(kInval, "region id 0");
    std::shared_ptr<Region> map;
    auto it = proc->regions.find(regionId);
    if (it != proc->regions.end()) map = it->second.lock();
    if (flags & kMemCreateFd) {
      if (fd.fd < 0) return Err(kProto, "MEMORY_CREATE says an fd is attached and none came with it");
      if (map) return Err(kExist, "region " + std::to_string(regionId) + " is registered already (name its id without an fd)");
      uint64_t fsize = 0;
      if (int rc = region::check(fd.fd, &fsize); rc < 0) {
        if (rc == -EBADF) return Err(kBadFd, "region " + std::to_string(regionId) + ": the fd is not a memfd open read-write");
        if (rc == -EINVAL) return Err(kInval, "region " + std::to_string(regionId) + ": the memfd is not sealed against shrinking (F_SEAL_SHRINK)");
        return Err(kIo, "region " + std::to_string(regionId) + ": " + strerror(-rc));
      }
      if (fsize != key)
        return Err(kInval, "region " + std::to_string(regionId) + " is " + std::to_string(fsize) + " bytes, not " + std::to_string(key) + " as said");
      if (fsize > SIZE_MAX / 2) return Err(kRange, "region of " + std::to_string(fsize) + " bytes");
      if (it == proc->regions.end() && proc->regions.size() >= kMaxRegionsPerProcess) {
        for (auto i = proc->regions.begin(); i != proc->regions.end();) i = i->second.expired() ? proc->regions.erase(i) : std::next(i);
        if (proc->regions.size() >= kMaxRegionsPerProcess)
          return Err(kNoSpc, "process " + std::to_string(proc->id) + " has " + std::to_string(kMaxRegionsPerProcess) + " shared regions registered");
      }
      if (Region::openFds.load() >= regionFdLimit()) return regionFdsFull();
      map = std::make_shared<Region>();
      map->len = size_t(fsize);
      if (map->len > 0) {
        // MAP_NORESERVE: a sparse region costs the pages touched, not its size.
        void* p = mmap(nullptr, map->len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd.fd, 0);
        if (p == MAP_FAILED) {
          int err = errno;
          map->len = 0;
          return Err(err == ENOMEM ? kNoSpc : kIo, "mmap of region " + std::to_string(regionId) + ": " + strerror(err));
        }
        map->base = static_cast<uint8_t*>(p);
      }
      map->fd = fd.release();
      Region::openFds++;
      map->key = nextRegionKey_++;
      map->shareWhole = (flags & kMemCreateShareWhole) != 0;
      proc->regions[regionId] = map;
    } else if (!map) {
      if (it != proc->regions.end()) proc->regions.erase(it);
      return Err(kNoEnt, "region " + std::to_string(regionId) +
                             " is not registered (its first MEMORY_CREATE passes its fd; a region whose Memory objects are all gone is forgotten)");
    }
    if (offset > map->len || size > map->len - offset)
      return Err(kRange, std::to_string(offset) + "+" + std::to_string(size) + " beyond region of " + std::to_string(map->len) + " bytes");
    info->backing = kShared;
    info->map = map;
    regionKey = map->key;
  } else if (backing == kServed) {
    if (flags) return Err(kProto, "MEMORY_CREATE flags are for shared Memory");
    info->backing = kServed;
    info->servedKey = key;
  } else {
    return Err(kInval, "unknown backing " + std::to_string(backing));
  }
  auto obj = objects_.create(Kind::Memory, proc, nullptr, info, nullptr);
  proc->owned.insert(obj.get());
  uint32_t cid;
  if (Err e = install(*proc, obj, &cid)) {
    objects_.revoke(obj.get(), kReasonRevoked);
    return e;
  }
  encodeMemCreateReply(out_, seq, cid, regionKey);
  send(proc->conn, out_);
  return Err();
}

Err CoreImpl::diminish(const std::shared_ptr<Obj>& obj, uint8_t drop, uint64_t off, uint64_t size, std::shared_ptr<Obj>* out) {
  if (!obj->mem) return Err(kType, "memory_diminish needs a Memory cap");
  const MemInfo& m = *obj->mem;
  if (off + size > m.size)
    return Err(kRange, "view " + std::to_string(off) + "+" + std::to_string(size) + " beyond " + std::to_string(m.size) + " bytes");
  auto info = std::make_shared<MemInfo>(m);
  info->offset = m.offset + off;
  info->size = size;
  info->perms = uint8_t(m.perms & ~drop & kRW);
  *out = objects_.create(Kind::Memory, obj->owner, obj, info, nullptr);
  return Err();
}

uint8_t CoreImpl::memFlags(const Obj& o, const Proc& to) const {
  const MemInfo& m = *o.mem;
  uint8_t fl = kMemLocal;
  if (o.owner.get() == &to) fl |= kMemSelf;
  // MEMORY_MAP would hand `to` the region's fd (memoryMap's rule).
  if (m.map && to.pid != 0 && (m.perms & kRead) && (m.map->shareWhole || (m.offset == 0 && m.size == m.map->len))) fl |= kMemMappable;
  return fl;
}

void CoreImpl::memoryStat(const std::shared_ptr<Proc>& proc, uint32_t seq, const std::shared_ptr<Target>& t) {
  if (t->isProxy) {
    learnMem(std::static_pointer_cast<Proxy>(t), [this, proc, seq](const Err& e, const RemoteMem* m) {
      if (!proc->alive) return;
      if (e) return replyErr(proc->conn, seq, e);
      encodeMemStatReply(out_, seq, m->size, m->perms, m->backing, 0, 0, 0, 0);
      send(proc->conn, out_);
    });
    return;
  }
  auto* o = static_cast<Obj*>(t.get());
  if (!o->mem) return replyErr(proc->conn, seq, Err(kType, "memory_stat needs a Memory cap"));
  const MemInfo& m = *o->mem;
  uint8_t fl = memFlags(*o, *proc);
  // Offset and region key are told only on this Controller; the served key only to the owner.
  encodeMemStatReply(out_, seq, m.size, m.perms, m.backing, fl, m.offset, (fl & kMemSelf) ? m.servedKey : 0, m.map ? m.map->key : 0);
  send(proc->conn, out_);
}

Err CoreImpl::memoryMap(const std::shared_ptr<Proc>& proc, uint32_t seq, const std::shared_ptr<Target>& t) {
  // Rule (docs/core.md "Shared regions"): the fd of a shared region on this Controller goes to
  // a holder on a unix socket whose cap may read, and covers the whole region or a region its
  // owner registered with "share whole"; a cap without WRITE gets a read-only fd.
  if (t->isProxy) return Err(kNotLocal, "memory_map of Memory on another Controller");
  auto* o = static_cast<Obj*>(t.get());
  if (!o->mem) return Err(kType, "memory_map needs a Memory cap");
  const MemInfo& m = *o->mem;
  if (!m.map) return Err(kPerm, "memory_map of served Memory (its owner serves the bytes; nothing to map)");
  if (proc->pid == 0) return Err(kPerm, "memory_map needs a unix-socket channel (fds cannot travel over tcp)");
  if (!(m.perms & kRead)) return Err(kPerm, "memory_map of a Memory cap without READ");
  if (!m.map->shareWhole && !(m.offset == 0 && m.size == m.map->len))
    return Err(kPerm, "memory_map of a view of " + std::to_string(m.size) + " bytes at " + std::to_string(m.offset) + " of a region of " +
                          std::to_string(m.map->len) + " bytes: the fd would expose the rest (its owner did not share it whole)");
  Region& g = *m.map;
  int fd = g.fd;
  uint8_t perms = m.perms & kRW;
  if (!(perms & kWrite)) {
    if (g.roFd < 0) {
      if (Region::openFds.load() >= regionFdLimit()) return regionFdsFull();
      int ro = region::reopenReadOnly(g.fd);
      if (ro < 0) return Err(kPerm, std::string("no read-only fd of the region: ") + strerror(-ro));
      g.roFd = ro;
      Region::openFds++;
    }
    fd = g.roFd;
  }
  encodeMemMapReply(out_, seq, g.key, g.len, m.offset, m.size, perms);
  struct iovec iov{out_.b.data(), out_.size()};
  host_->sendWithFds(proc->conn, &iov, 1, &fd, 1);
  return Err();
}

void CoreImpl::learnMem(const std::shared_ptr<Proxy>& t, std::function<void(const Err&, const RemoteMem*)> cb) {
  if (t->mem) return cb(Err(), &*t->mem);
  Frame f;
  f.start(op::P_STAT, 0).ref(t->ref);
  peerCall(t, f, [t, cb = std::move(cb)](const Err& e, const uint8_t* rf, size_t len) {
    if (e) return cb(e, nullptr);
    // REPLY: u64 size, u8 perms, u8 backing
    Reader r(rf, len);
    uint64_t size = r.u64();
    uint8_t perms = r.u8(), backing = r.u8();
    if (r.bad) return cb(Err(kProto, "short P_STAT reply"), nullptr);
    if (!t->mem) t->mem = RemoteMem{size, perms, uint8_t(backing == 1 ? 1 : 0)};
    cb(Err(), &*t->mem);
  });
}

// ---- copies -----------------------------------------------------------------------------------

struct CoreImpl::CopyJob {
  std::shared_ptr<Obj> src;
  std::shared_ptr<Target> dst;
  Done done;
  uint64_t size = 0, chunk = 0, next = 0;
  int inflight = 0;
  bool failed = false;
};

void CoreImpl::execCopy(const std::shared_ptr<Obj>& src, const std::shared_ptr<Target>& dst, Done done) {
  if (!src->mem) return done(Err(kType, "memory_copy source is not Memory"));
  const Obj* dobj = dst->isProxy ? nullptr : static_cast<const Obj*>(dst.get());
  if (dobj && !dobj->mem) return done(Err(kType, "memory_copy destination is not Memory"));
  const MemInfo& sm = *src->mem;
  auto dproxy = dst->isProxy ? std::static_pointer_cast<Proxy>(dst) : nullptr;
  if (!(sm.perms & kRead)) {
    // A remote destination's type comes first (ETYPE before EPERM): learn it on this error path.
    if (dproxy && !dproxy->mem) {
      return learnMem(dproxy, [this, src, dst, done](const Err& e, const RemoteMem*) {
        if (e) return done(e);
        execCopy(src, dst, done);
      });
    }
    return done(Err(kPerm, "memory_copy source is not readable"));
  }
  std::optional<RemoteMem> known = memOf(dst.get());  // local, or the cached description of a remote Memory
  if (known) {
    if (!(known->perms & kWrite)) return done(Err(kPerm, "memory_copy destination is not writable"));
    if (sm.size > known->size)
      return done(Err(kRange, "memory_copy of " + std::to_string(sm.size) + " bytes into " + std::to_string(known->size)));
  }
  uint64_t size = sm.size;
  // Nothing to move; a remote destination still checks its type, rights and size.
  if (size == 0) {
    if (dproxy) return writeChunk(dst, 0, 0, nullptr, 0, done);
    return done(Err());
  }
  if (sm.map && dobj && dobj->mem->map) {
    const MemInfo& dm = *dobj->mem;
    void* fault = guardedMove(dm.map->base + dm.offset, sm.map->base + sm.offset, size);
    if (!fault) return done(Err());
    bool inDst = inRange(fault, dm.map->base + dm.offset, size);
    bool inSrc = inRange(fault, sm.map->base + sm.offset, size);
    return done(regionFault(inDst ? dm : sm, !inDst && !inSrc));
  }
  auto job = std::make_shared<CopyJob>();
  job->src = src;
  job->dst = dst;
  job->done = std::move(done);
  job->size = size;
  job->chunk = size <= 16384 ? size : std::min<uint64_t>(kCopyChunkBytes, std::max<uint64_t>(16384, (size + 3) / 4));
  copyPump(job);
}

void CoreImpl::copyPump(const std::shared_ptr<CopyJob>& job) {
  while (!job->failed && job->inflight < kCopyWindow && job->next < job->size) {
    uint64_t off = job->next;
    uint32_t len = uint32_t(std::min(job->chunk, job->size - off));
    job->next += len;
    job->inflight++;
    readChunk(job->src, off, len, [this, job, off](const Err& e, std::shared_ptr<std::vector<uint8_t>> bytes) {
      if (e || job->failed) return copyFinish(job, e);
      writeChunk(job->dst, off, job->size, bytes->data(), bytes->size(), [this, job, bytes](const Err& we) { copyFinish(job, we); });
    });
  }
}

void CoreImpl::copyFinish(const std::shared_ptr<CopyJob>& job, const Err& e) {
  job->inflight--;
  if (job->failed) return;
  if (e) {
    job->failed = true;
    return job->done(e);
  }
  if (job->next >= job->size && job->inflight == 0) return job->done(Err());
  copyPump(job);
}

void CoreImpl::readChunk(const std::shared_ptr<Obj>& obj, uint64_t off, uint32_t len,
                         std::function<void(const Err&, std::shared_ptr<std::vector<uint8_t>>)> cb) {
  const MemInfo& m = *obj->mem;
  if (m.map) {
    // Into bytes of our own (never a view of a mapping: a truncated region must fail here).
    auto out = std::make_shared<std::vector<uint8_t>>(len);
    const uint8_t* from = m.map->base + m.offset + off;
    void* fault = guardedMove(out->data(), from, len);
    if (!fault) return cb(Err(), out);
    return cb(regionFault(m, !inRange(fault, from, len)), nullptr);
  }
  std::shared_ptr<Proc> owner = obj->owner;
  if (!owner->alive) return cb(Err(kFault, "process " + std::to_string(owner->id) + " is gone"), nullptr);
  // MEM_READ: u64 servedKey, u64 offset, u32 length -> REPLY data
  uint32_t seq = owner->calls.addWithDeadline(
      host_,
      [len, cb](const Err& e, const uint8_t* f, size_t flen) {
        if (e) return cb(e, nullptr);
        if (flen - kHeaderBytes != len)
          return cb(Err(kFault, "served read returned " + std::to_string(flen - kHeaderBytes) + " of " + std::to_string(len) + " bytes"),
                    nullptr);
        cb(Err(), std::make_shared<std::vector<uint8_t>>(f + kHeaderBytes, f + flen));
      },
      servedTimeoutMs_, "served read of " + std::to_string(len) + " bytes by process " + std::to_string(owner->id) + " (" + owner->name + ")");
  encodeMemRead(out_, seq, m.servedKey, m.offset + off, len);
  send(owner->conn, out_);
}

Err CoreImpl::regionFault(const MemInfo& m, bool other) {
  // Logged once per region: a sealed region cannot shrink, so this is a second line only.
  if (m.map && !m.map->faulted) {
    m.map->faulted = true;
    log(LogLevel::Warn, "copy faulted on a shared region (its file shrank?)",
        "{\"region\":" + std::to_string(m.map->key) + ",\"other\":" + (other ? "true" : "false") + "}");
  }
  return Err(kFault, "shared region " + std::to_string(m.map ? m.map->key : 0) + " faulted at access");
}

void CoreImpl::writeChunk(const std::shared_ptr<Target>& t, uint64_t off, uint64_t total, const uint8_t* data, size_t len, Done cb) {
  if (t->isProxy) {
    // P_MEM_WRITE: ref, u64 offset, u64 total, data (sent from `data` without a copy of ours)
    const Ref ref = static_cast<Proxy*>(t.get())->ref;
    Peer* owner = peerOf(ref.controller);
    if (!owner) return cb(Err(kRevoked, "controller " + std::to_string(ref.controller) + " is not connected"));
    uint32_t seq = owner->calls.add([cb](const Err& e, const uint8_t*, size_t) { cb(e); });
    Frame head;
    encodePMemWriteHead(head, seq, ref, off, total, len);
    sendv(owner->conn, head, data, len);
    return;
  }
  writeLocal(std::static_pointer_cast<Obj>(t), off, data, len, std::move(cb));
}

void CoreImpl::writeLocal(const std::shared_ptr<Obj>& obj, uint64_t off, const uint8_t* data, size_t len, Done cb) {
  const MemInfo& m = *obj->mem;
  if (off + len > m.size)
    return cb(Err(kRange, "write " + std::to_string(off) + "+" + std::to_string(len) + " beyond " + std::to_string(m.size)));
  if (len == 0) return cb(Err());
  if (m.map) {
    uint8_t* to = m.map->base + m.offset + off;
    void* fault = guardedMove(to, data, len);
    return cb(fault ? regionFault(m, !inRange(fault, to, len)) : Err());
  }
  std::shared_ptr<Proc> owner = obj->owner;
  if (!owner->alive) return cb(Err(kFault, "process " + std::to_string(owner->id) + " is gone"));
  // An owner that does not read what it is sent is not sent more: its backlog stays
  // within maxOutboundBytes plus one chunk, however many copies target it.
  uint64_t backlog = host_->backlog(owner->conn);
  if (backlog > limits_.maxOutboundBytes)
    return cb(Err(kAgain, "the owner of a served Memory has " + std::to_string(backlog) + " bytes unread (limit " +
                              std::to_string(limits_.maxOutboundBytes) + ")"));
  // MEM_WRITE: u64 servedKey, u64 offset, data -> REPLY
  uint32_t seq = owner->calls.addWithDeadline(
      host_, [cb](const Err& e, const uint8_t*, size_t) { cb(e); }, servedTimeoutMs_,
      "served write of " + std::to_string(len) + " bytes by process " + std::to_string(owner->id) + " (" + owner->name + ")");
  Frame head;
  encodeMemWriteHead(head, seq, m.servedKey, m.offset + off, len);
  sendv(owner->conn, head, data, len);
}

}  // namespace fractos

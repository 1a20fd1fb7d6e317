#include "backend.h"

#include <limits>

namespace fractos_gpu {

using namespace fractos_lbp;

namespace {
constexpr uint64_t kMaxAlloc = uint64_t(1) << 40;  // 1 TiB: rejects nonsense sizes early

// Appended piece by piece: `"[" + std::to_string(...)` trips GCC 12's -Wrestrict false
// positive (GCC bug 105329) once inlined at -O3.
std::string range(uint64_t off, uint64_t len, uint64_t size) {
  std::string s("[");
  s.append(std::to_string(off)).append(", +").append(std::to_string(len));
  s.append(") outside buffer of ").append(std::to_string(size)).append(" bytes");
  return s;
}
}  // namespace

Backend::Buffer& Backend::lookup(uint32_t handle) {
  if (closed_) fail("EINVAL", "backend closed");
  auto it = buffers_.find(handle);
  if (it == buffers_.end()) fail("ENOENT", "unknown buffer handle " + std::to_string(handle));
  return it->second;
}

uint32_t Backend::alloc(uint64_t size) {
  if (size == 0 || size > kMaxAlloc) fail("EINVAL", "alloc size " + std::to_string(size) + " not in 1..2^40 bytes");
  {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_) fail("EINVAL", "backend closed");
  }
  uint64_t addr = deviceAlloc(size);
  std::lock_guard<std::mutex> g(mu_);
  uint32_t h = next_++;
  buffers_[h] = Buffer{addr, size, 0, false};
  return h;
}

uint32_t Backend::allocExternal(uint64_t addr, uint64_t size) {
  if (!hostAddressable()) fail("ENOTSUP", std::string(kind()) + " backend cannot use host memory as device memory");
  if (size == 0 || size > kMaxAlloc) fail("EINVAL", "external size " + std::to_string(size) + " not in 1..2^40 bytes");
  if (addr == 0 || addr % 64) fail("EINVAL", "external memory must be 64-byte aligned");
  std::lock_guard<std::mutex> g(mu_);
  if (closed_) fail("EINVAL", "backend closed");
  uint32_t h = next_++;
  buffers_[h] = Buffer{addr, size, 0, true};
  return h;
}

void Backend::free(uint32_t handle) {
  uint64_t addr;
  bool external;
  {
    std::lock_guard<std::mutex> g(mu_);
    Buffer& b = lookup(handle);
    if (b.inflight) fail("EBUSY", "buffer " + std::to_string(handle) + " has operations in flight");
    addr = b.addr;
    external = b.external;
    buffers_.erase(handle);
  }
  if (!external) deviceFree(addr);
}

uint64_t Backend::size(uint32_t handle) {
  std::lock_guard<std::mutex> g(mu_);
  return lookup(handle).size;
}

uint64_t Backend::pin(uint32_t handle, uint64_t offset, uint64_t length) {
  std::lock_guard<std::mutex> g(mu_);
  Buffer& b = lookup(handle);
  if (offset > b.size || length > b.size - offset) fail("ERANGE", range(offset, length, b.size));
  b.inflight++;
  return b.addr + offset;
}

void Backend::unpin(uint32_t handle) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = buffers_.find(handle);
  if (it != buffers_.end() && it->second.inflight) it->second.inflight--;
}

bool Backend::busy() {
  std::lock_guard<std::mutex> g(mu_);
  for (auto& [h, b] : buffers_)
    if (b.inflight) return true;
  return false;
}

LaunchPlan Backend::plan(KernelId kernel, const std::vector<BufferRef>& bufs, uint32_t n, uint32_t gridX,
                         uint32_t gridY, std::vector<uint32_t>& pinned) {
  LaunchPlan p;
  p.kernel = kernel;
  p.n = n;
  p.gridX = gridX;
  p.gridY = gridY;
  if (gridX < 1 || gridX > kInteriorWidth || gridY < 1 || gridY > kInteriorHeight)
    fail("EINVAL", "grid " + std::to_string(gridX) + "x" + std::to_string(gridY) + " not in 1..90 x 1..110");
  const uint64_t imgBytes = uint64_t(n) * kImageBytes;
  const uint64_t histBytes = uint64_t(n) * p.histLen() * 4;
  struct Need {
    uint64_t* slot;
    uint64_t bytes;
    uint64_t align;
    const char* what;
  };
  std::vector<Need> needs;
  if (kernel == KernelId::LbpHistBatch) {
    if (bufs.size() != 2) fail("EINVAL", "lbp_hist_batch takes 2 buffers (images, hists), got " + std::to_string(bufs.size()));
    needs = {{&p.images, imgBytes, 1, "images"}, {&p.hists, histBytes, 4, "hists"}};
  } else if (kernel == KernelId::LbpChi2Batch) {
    if (bufs.size() != 3 && bufs.size() != 5)
      fail("EINVAL", "lbp_chi2_batch takes 3 or 5 buffers (probes, enrolled, scores[, probeHists, enrolledHists]), got " +
                         std::to_string(bufs.size()));
    needs = {{&p.probes, imgBytes, 1, "probes"}, {&p.enrolled, imgBytes, 1, "enrolled"}, {&p.scores, uint64_t(n) * 8, 8, "scores"}};
    if (bufs.size() == 5) {
      needs.push_back({&p.probeHists, histBytes, 4, "probeHists"});
      needs.push_back({&p.enrolledHists, histBytes, 4, "enrolledHists"});
    }
  } else {
    fail("ENOENT", "unknown kernel id " + std::to_string(uint32_t(kernel)));
  }
  try {
    for (size_t i = 0; i < needs.size(); i++) {
      if (bufs[i].offset % needs[i].align)
        fail("EINVAL", std::string(needs[i].what) + " offset " + std::to_string(bufs[i].offset) + " not a multiple of " +
                           std::to_string(needs[i].align));
      try {
        *needs[i].slot = pin(bufs[i].handle, bufs[i].offset, needs[i].bytes);
      } catch (const GpuError& e) {
        fail(e.code(), std::string(needs[i].what) + " (n=" + std::to_string(n) + "): " + e.what());
      }
      pinned.push_back(bufs[i].handle);
    }
  } catch (...) {
    for (uint32_t h : pinned) unpin(h);
    pinned.clear();
    throw;
  }
  return p;
}

void Backend::close() {
  std::vector<uint64_t> addrs;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_) return;
    for (auto& [h, b] : buffers_)
      if (b.inflight) fail("EBUSY", "operations in flight");
    for (auto& [h, b] : buffers_)
      if (!b.external) addrs.push_back(b.addr);
    buffers_.clear();
    closed_ = true;
  }
  for (uint64_t a : addrs) deviceFree(a);
  closeDevice();
}

}  // namespace fractos_gpu

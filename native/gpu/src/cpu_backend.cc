// cpu backend: "device memory" is 64-byte aligned host memory (ours, or the caller's through
// allocExternal: e.g. a POSIX shm region the FractOS Controller also maps); the kernels are plain C++
// (256-entry uniform lookup table, row-wise loops, the batch split over std::thread when
// large). Results are bit-identical to facever-app/lbp.ts and to the cuda backend.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "backend.h"

namespace fractos_gpu {

using namespace fractos_lbp;

void lbpHistogramCpu(const uint8_t* img, uint32_t* hist, uint32_t gridX, uint32_t gridY) {
  uint32_t colOff[kInteriorWidth];   // cell column * 59
  uint32_t rowOff[kInteriorHeight];  // cell row * gridX * 59
  for (uint32_t ix = 0; ix < kInteriorWidth; ix++) colOff[ix] = (ix * gridX / kInteriorWidth) * kNumBins;
  for (uint32_t iy = 0; iy < kInteriorHeight; iy++) rowOff[iy] = (iy * gridY / kInteriorHeight) * gridX * kNumBins;
  std::memset(hist, 0, size_t(gridX) * gridY * kNumBins * sizeof(uint32_t));
  const uint8_t* lut = kUniformTable.bin;
  for (uint32_t y = 1; y <= kInteriorHeight; y++) {
    const uint8_t* up = img + (y - 1) * kImageWidth;
    const uint8_t* cur = img + y * kImageWidth;
    const uint8_t* dn = img + (y + 1) * kImageWidth;
    uint32_t* h = hist + rowOff[y - 1];
    for (uint32_t x = 1; x <= kInteriorWidth; x++) {
      const uint8_t c = cur[x];
      const uint32_t code = uint32_t(up[x - 1] >= c) | uint32_t(up[x] >= c) << 1 | uint32_t(up[x + 1] >= c) << 2 |
                            uint32_t(cur[x + 1] >= c) << 3 | uint32_t(dn[x + 1] >= c) << 4 | uint32_t(dn[x] >= c) << 5 |
                            uint32_t(dn[x - 1] >= c) << 6 | uint32_t(cur[x - 1] >= c) << 7;
      h[colOff[x - 1] + lut[code]]++;
    }
  }
}

// Same operations, same order as chiSquare() in facever-app/lbp.ts and chi2 in kernels/lbp.cu
// (built with -ffp-contract=off: no FMA).
double chiSquareCpu(const uint32_t* a, const uint32_t* b, uint32_t len) {
  double sum = 0.0;
  for (uint32_t k = 0; k < len; k++) {
    const uint32_t s = a[k] + b[k];
    if (s) {
      const double d = double(a[k]) - double(b[k]);
      sum += (d * d) / double(s);
    }
  }
  return sum;
}

namespace {

void runRange(const LaunchPlan& p, uint32_t begin, uint32_t end) {
  const uint32_t len = p.histLen();
  if (p.kernel == KernelId::LbpHistBatch) {
    auto* images = reinterpret_cast<const uint8_t*>(p.images);
    auto* hists = reinterpret_cast<uint32_t*>(p.hists);
    for (uint32_t i = begin; i < end; i++) lbpHistogramCpu(images + size_t(i) * kImageBytes, hists + size_t(i) * len, p.gridX, p.gridY);
    return;
  }
  auto* probes = reinterpret_cast<const uint8_t*>(p.probes);
  auto* enrolled = reinterpret_cast<const uint8_t*>(p.enrolled);
  auto* scores = reinterpret_cast<double*>(p.scores);
  std::vector<uint32_t> scratch;
  if (!p.probeHists) scratch.resize(size_t(2) * len);
  for (uint32_t i = begin; i < end; i++) {
    uint32_t* ha = p.probeHists ? reinterpret_cast<uint32_t*>(p.probeHists) + size_t(i) * len : scratch.data();
    uint32_t* hb = p.enrolledHists ? reinterpret_cast<uint32_t*>(p.enrolledHists) + size_t(i) * len : scratch.data() + len;
    lbpHistogramCpu(probes + size_t(i) * kImageBytes, ha, p.gridX, p.gridY);
    lbpHistogramCpu(enrolled + size_t(i) * kImageBytes, hb, p.gridX, p.gridY);
    scores[i] = chiSquareCpu(ha, hb, len);
  }
}

class CpuBackend final : public Backend {
 public:
  ~CpuBackend() override = default;
  const char* kind() const override { return "cpu"; }
  std::string deviceName() const override {
    return "host CPU (" + std::to_string(std::max(1u, std::thread::hardware_concurrency())) + " threads)";
  }
  bool hostAddressable() const override { return true; }
  void copyIn(uint64_t addr, const void* src, size_t n) override { std::memcpy(reinterpret_cast<void*>(addr), src, n); }
  void copyOut(void* dst, uint64_t addr, size_t n) override { std::memcpy(dst, reinterpret_cast<const void*>(addr), n); }

  // Batches of >= 2*kMinPerThread items are split over up to hardware_concurrency threads
  // (at most 16), each taking a contiguous range: results do not depend on the split.
  void run(const LaunchPlan& p) override {
    constexpr uint32_t kMinPerThread = 16;
    const uint32_t hw = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
    const uint32_t t = std::max(1u, std::min(hw, p.n / kMinPerThread));
    if (t == 1) {
      runRange(p, 0, p.n);
      return;
    }
    std::vector<std::thread> threads;
    threads.reserve(t);
    for (uint32_t k = 0; k < t; k++) {
      const uint32_t b = uint32_t(uint64_t(p.n) * k / t), e = uint32_t(uint64_t(p.n) * (k + 1) / t);
      threads.emplace_back(runRange, std::cref(p), b, e);
    }
    for (auto& th : threads) th.join();
  }

 protected:
  uint64_t deviceAlloc(uint64_t size) override {
    void* ptr = nullptr;
    const size_t rounded = (size + 63) & ~uint64_t(63);
    ptr = std::aligned_alloc(64, rounded);
    if (!ptr) fail("ENOSPC", "aligned_alloc of " + std::to_string(size) + " bytes failed");
    std::memset(ptr, 0, rounded);
    return reinterpret_cast<uint64_t>(ptr);
  }
  void deviceFree(uint64_t addr) override { std::free(reinterpret_cast<void*>(addr)); }
  void closeDevice() override {}
};

}  // namespace

std::shared_ptr<Backend> openCpuBackend() { return std::make_shared<CpuBackend>(); }

}  // namespace fractos_gpu

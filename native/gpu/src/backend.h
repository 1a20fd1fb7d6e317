// The one C++ interface behind both backends of fractos_gpu (cpu, cuda).
//
// Threading: alloc/free/pin/unpin/close run on the JS thread; copyIn/copyOut/run run on
// libuv worker threads (napi AsyncWorker), several at once. The buffer table is guarded by
// a mutex; a buffer used by an operation in flight is "pinned" (inflight > 0) and cannot
// be freed (EBUSY), so workers use raw addresses without the lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../kernels/lbp_params.h"
#include "gpu_error.h"

namespace fractos_gpu {

enum class KernelId : uint32_t { LbpHistBatch = 0, LbpChi2Batch = 1 };

// A validated launch, addresses already resolved (host pointers or CUdeviceptr).
struct LaunchPlan {
  KernelId kernel;
  uint32_t n = 0;        // images (hist) or pairs (chi2)
  uint32_t gridX = 1;    // cells across, 1..90
  uint32_t gridY = 1;    // cells down, 1..110
  uint64_t images = 0;   // hist: n*10304 u8
  uint64_t probes = 0;   // chi2: n*10304 u8
  uint64_t enrolled = 0; // chi2: n*10304 u8
  uint64_t scores = 0;   // chi2: n f64
  uint64_t hists = 0;    // hist: n*len u32 (out)
  uint64_t probeHists = 0;     // chi2: optional n*len u32 (out), 0 = none
  uint64_t enrolledHists = 0;  // chi2: optional n*len u32 (out), 0 = none
  uint32_t histLen() const { return gridX * gridY * fractos_lbp::kNumBins; }
};

struct BufferRef {
  uint32_t handle;
  uint64_t offset;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* kind() const = 0;
  virtual std::string deviceName() const = 0;

  // JS thread. Returns a handle (> 0). Throws EINVAL (size 0 or > 2^40), ENOSPC (out of memory).
  uint32_t alloc(uint64_t size);
  // JS thread. Wrap `size` bytes of caller-owned host memory at `addr` as a buffer (cpu
  // backend only: its "device memory" is host memory). The caller keeps the memory alive
  // until free/close; free never releases it. Throws ENOTSUP (backend cannot address host
  // memory), EINVAL (size 0 or > 2^40, addr null or not 64-byte aligned).
  uint32_t allocExternal(uint64_t addr, uint64_t size);
  // JS thread. Throws ENOENT (unknown handle), EBUSY (operation in flight).
  void free(uint32_t handle);
  uint64_t size(uint32_t handle);
  // JS thread: check [offset, offset+length) lies in the buffer and pin it. Returns the address.
  // Throws ENOENT (unknown handle), ERANGE (out of range).
  uint64_t pin(uint32_t handle, uint64_t offset, uint64_t length);
  void unpin(uint32_t handle);
  // JS thread: validate a launch (ENOENT, ERANGE, EINVAL: grid, alignment, buffer count) and
  // pin its buffers; `pinned` receives the handles to unpin afterwards.
  LaunchPlan plan(KernelId kernel, const std::vector<BufferRef>& bufs, uint32_t n, uint32_t gridX, uint32_t gridY,
                  std::vector<uint32_t>& pinned);
  // JS thread: free every buffer and the device. Throws EBUSY while operations are in flight.
  void close();
  bool closed() const { return closed_; }
  bool busy();

  // Whether allocExternal works (the kernels run on host memory).
  virtual bool hostAddressable() const { return false; }

  // Worker threads.
  virtual void copyIn(uint64_t addr, const void* src, size_t n) = 0;
  virtual void copyOut(void* dst, uint64_t addr, size_t n) = 0;
  virtual void run(const LaunchPlan& plan) = 0;

 protected:
  virtual uint64_t deviceAlloc(uint64_t size) = 0;  // throws ENOSPC
  virtual void deviceFree(uint64_t addr) = 0;
  virtual void closeDevice() = 0;

 private:
  struct Buffer {
    uint64_t addr;
    uint64_t size;
    uint32_t inflight;
    bool external;  // allocExternal: not ours to free
  };
  std::mutex mu_;
  std::unordered_map<uint32_t, Buffer> buffers_;
  uint32_t next_ = 1;
  bool closed_ = false;
  Buffer& lookup(uint32_t handle);  // mu_ held
};

// kind: "cpu" or "cuda". ptxPath: the PTX of kernels/lbp.cu (cuda only).
// Throws ENODEV when the backend has no device (cuda: no libcuda.so.1, no GPU, no PTX).
std::shared_ptr<Backend> openCpuBackend();
std::shared_ptr<Backend> openCudaBackend(const std::string& ptxPath);

// The cpu kernels (cpu_backend.cc): histogram of one 92x112 image, chi-square of two histograms.
void lbpHistogramCpu(const uint8_t* image, uint32_t* hist, uint32_t gridX, uint32_t gridY);
double chiSquareCpu(const uint32_t* a, const uint32_t* b, uint32_t len);

}  // namespace fractos_gpu

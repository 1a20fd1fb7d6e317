// cuda backend: the CUDA Driver API, loaded at run time with dlopen("libcuda.so.1") (the
// addon never links against libcuda, so it loads on hosts without a driver and reports
// ENODEV). Types and the versioned symbol names come from the toolkit's cuda.h at build time
// (CUDA 13: cuMemAlloc_v2, cuMemFree_v2, cuMemcpyHtoD_v2, cuMemcpyDtoH_v2, cuStreamDestroy_v2,
// cuDevicePrimaryCtxRelease_v2; cuCtxCreate is cuCtxCreate_v4 there, with a params struct:
// this backend uses the device's primary context instead, cuDevicePrimaryCtxRetain, the
// documented choice for libraries sharing a device). Kernels: the PTX of kernels/lbp.cu,
// passed to cuModuleLoadData (the driver JIT-compiles it for the device).
#include <dlfcn.h>

#include <fstream>
#include <iterator>
#include <sstream>

#include "backend.h"

#ifdef FRACTOS_HAVE_CUDA_H
#include <cuda.h>
#endif

namespace fractos_gpu {

#ifndef FRACTOS_HAVE_CUDA_H

std::shared_ptr<Backend> openCudaBackend(const std::string&) {
  fail("ENODEV", "cuda backend unavailable: addon built without cuda.h (set CUDA_HOME and rebuild)");
}

#else

using namespace fractos_lbp;

namespace {

struct Driver {
  void* lib = nullptr;
  decltype(&::cuInit) init = nullptr;
  decltype(&::cuDeviceGetCount) deviceGetCount = nullptr;
  decltype(&::cuDeviceGet) deviceGet = nullptr;
  decltype(&::cuDeviceGetName) deviceGetName = nullptr;
  decltype(&::cuDevicePrimaryCtxRetain) primaryCtxRetain = nullptr;
  decltype(&::cuDevicePrimaryCtxRelease) primaryCtxRelease = nullptr;
  decltype(&::cuCtxSetCurrent) ctxSetCurrent = nullptr;
  decltype(&::cuStreamCreate) streamCreate = nullptr;
  decltype(&::cuStreamDestroy) streamDestroy = nullptr;
  decltype(&::cuStreamSynchronize) streamSynchronize = nullptr;
  decltype(&::cuModuleLoadData) moduleLoadData = nullptr;
  decltype(&::cuModuleUnload) moduleUnload = nullptr;
  decltype(&::cuModuleGetFunction) moduleGetFunction = nullptr;
  decltype(&::cuLaunchKernel) launchKernel = nullptr;
  decltype(&::cuMemAlloc) memAlloc = nullptr;
  decltype(&::cuMemFree) memFree = nullptr;
  decltype(&::cuMemcpyHtoD) memcpyHtoD = nullptr;
  decltype(&::cuMemcpyDtoH) memcpyDtoH = nullptr;
  decltype(&::cuGetErrorName) getErrorName = nullptr;
};

// Exported symbol names (see cuda.h's #define cuXxx cuXxx_vN table).
template <typename F>
void sym(Driver& d, F& slot, const char* name) {
  slot = reinterpret_cast<F>(dlsym(d.lib, name));
  if (!slot) fail("ENODEV", std::string("libcuda.so.1 lacks ") + name + " (driver too old)");
}

// Loaded once per process; never dlclose'd (the driver does not support unloading well).
Driver& driver() {
  static Driver d;
  static std::string error;
  static bool tried = false;
  static std::mutex mu;
  std::lock_guard<std::mutex> g(mu);
  if (!tried) {
    tried = true;
    try {
      d.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
      if (!d.lib) {
        const char* e = dlerror();
        fail("ENODEV", std::string("no CUDA driver: dlopen(libcuda.so.1): ") + (e ? e : "failed"));
      }
      sym(d, d.init, "cuInit");
      sym(d, d.deviceGetCount, "cuDeviceGetCount");
      sym(d, d.deviceGet, "cuDeviceGet");
      sym(d, d.deviceGetName, "cuDeviceGetName");
      sym(d, d.primaryCtxRetain, "cuDevicePrimaryCtxRetain");
      sym(d, d.primaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
      sym(d, d.ctxSetCurrent, "cuCtxSetCurrent");
      sym(d, d.streamCreate, "cuStreamCreate");
      sym(d, d.streamDestroy, "cuStreamDestroy_v2");
      sym(d, d.streamSynchronize, "cuStreamSynchronize");
      sym(d, d.moduleLoadData, "cuModuleLoadData");
      sym(d, d.moduleUnload, "cuModuleUnload");
      sym(d, d.moduleGetFunction, "cuModuleGetFunction");
      sym(d, d.launchKernel, "cuLaunchKernel");
      sym(d, d.memAlloc, "cuMemAlloc_v2");
      sym(d, d.memFree, "cuMemFree_v2");
      sym(d, d.memcpyHtoD, "cuMemcpyHtoD_v2");
      sym(d, d.memcpyDtoH, "cuMemcpyDtoH_v2");
      sym(d, d.getErrorName, "cuGetErrorName");
    } catch (const GpuError& e) {
      error = e.what();
      d.lib = nullptr;
    }
  }
  if (!d.lib) fail("ENODEV", error);
  return d;
}

void check(CUresult r, const char* what) {
  if (r == CUDA_SUCCESS) return;
  const char* name = nullptr;
  Driver& d = driver();
  if (d.getErrorName) d.getErrorName(r, &name);
  fail(codeFromCuResult(int(r)), std::string(what) + ": " + (name ? name : "CUresult " + std::to_string(int(r))));
}

constexpr uint32_t kThreads = 256;
constexpr uint32_t kMaxShared = 48 * 1024;  // default dynamic shared memory limit per block

class CudaBackend final : public Backend {
 public:
  CudaBackend(const std::string& ptxPath) : d_(driver()) {
    std::ifstream f(ptxPath, std::ios::binary);
    std::string ptx((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    check(d_.init(0), "cuInit");
    int count = 0;
    check(d_.deviceGetCount(&count), "cuDeviceGetCount");
    if (count < 1) fail("ENODEV", "no CUDA device");
    if (ptx.empty()) fail("ENODEV", "no PTX: " + ptxPath + " missing or empty (nvcc absent at build time)");
    check(d_.deviceGet(&dev_, 0), "cuDeviceGet");
    char name[256] = {0};
    check(d_.deviceGetName(name, sizeof name - 1, dev_), "cuDeviceGetName");
    name_ = name;
    check(d_.primaryCtxRetain(&ctx_, dev_), "cuDevicePrimaryCtxRetain");
    try {
      check(d_.ctxSetCurrent(ctx_), "cuCtxSetCurrent");
      check(d_.streamCreate(&stream_, CU_STREAM_DEFAULT), "cuStreamCreate");
      check(d_.moduleLoadData(&module_, ptx.c_str()), "cuModuleLoadData(lbp.ptx)");
      check(d_.moduleGetFunction(&hist_, module_, "lbp_hist"), "cuModuleGetFunction(lbp_hist)");
      check(d_.moduleGetFunction(&chi2_, module_, "chi2"), "cuModuleGetFunction(chi2)");
    } catch (...) {
      closeDevice();
      throw;
    }
  }
  ~CudaBackend() override = default;

  const char* kind() const override { return "cuda"; }
  std::string deviceName() const override { return name_; }

  void copyIn(uint64_t addr, const void* src, size_t n) override {
    current();
    check(d_.memcpyHtoD(CUdeviceptr(addr), src, n), "cuMemcpyHtoD");
  }
  void copyOut(void* dst, uint64_t addr, size_t n) override {
    current();
    check(d_.memcpyDtoH(dst, CUdeviceptr(addr), n), "cuMemcpyDtoH");
  }

  // All kernels of one launch go on the backend's stream; one cuStreamSynchronize at the end
  // (on a libuv worker thread, never the JS thread).
  void run(const LaunchPlan& p) override {
    if (p.n == 0) return;
    current();
    const uint32_t len = p.histLen();
    const uint64_t histBytes = uint64_t(p.n) * len * 4;
    if (p.kernel == KernelId::LbpHistBatch) {
      launchHist(p.images, p.hists, p);
    } else {
      CUdeviceptr scratch = 0;
      uint64_t ha = p.probeHists, hb = p.enrolledHists;
      if (!ha) {
        check(d_.memAlloc(&scratch, 2 * histBytes), "cuMemAlloc(scratch)");
        ha = scratch;
        hb = scratch + histBytes;
      }
      try {
        launchHist(p.probes, ha, p);
        launchHist(p.enrolled, hb, p);
        CUdeviceptr a = ha, b = hb, s = p.scores;
        uint32_t n = p.n, l = len;
        void* args[] = {&a, &b, &s, &n, &l};
        check(d_.launchKernel(chi2_, (p.n + kThreads - 1) / kThreads, 1, 1, kThreads, 1, 1, 0, stream_, args, nullptr),
              "cuLaunchKernel(chi2)");
        check(d_.streamSynchronize(stream_), "cuStreamSynchronize");
      } catch (...) {
        d_.streamSynchronize(stream_);
        if (scratch) d_.memFree(scratch);
        throw;
      }
      if (scratch) check(d_.memFree(scratch), "cuMemFree(scratch)");
      return;
    }
    check(d_.streamSynchronize(stream_), "cuStreamSynchronize");
  }

 protected:
  uint64_t deviceAlloc(uint64_t size) override {
    current();
    CUdeviceptr p = 0;
    check(d_.memAlloc(&p, size), "cuMemAlloc");
    return uint64_t(p);
  }
  void deviceFree(uint64_t addr) override {
    current();
    d_.memFree(CUdeviceptr(addr));
  }
  void closeDevice() override {
    if (!ctx_) return;
    d_.ctxSetCurrent(ctx_);
    if (module_) d_.moduleUnload(module_);
    if (stream_) d_.streamDestroy(stream_);
    d_.primaryCtxRelease(dev_);
    module_ = nullptr;
    stream_ = nullptr;
    ctx_ = nullptr;
  }

 private:
  void current() { check(d_.ctxSetCurrent(ctx_), "cuCtxSetCurrent"); }

  void launchHist(uint64_t images, uint64_t hists, const LaunchPlan& p) {
    const uint32_t shared = p.histLen() * 4;
    CUdeviceptr im = images, h = hists;
    uint32_t n = p.n, gx = p.gridX, gy = p.gridY, useShared = shared <= kMaxShared ? 1 : 0;
    void* args[] = {&im, &h, &n, &gx, &gy, &useShared};
    check(d_.launchKernel(hist_, p.n, 1, 1, kThreads, 1, 1, useShared ? shared : 0, stream_, args, nullptr),
          "cuLaunchKernel(lbp_hist)");
  }

  Driver& d_;
  CUdevice dev_ = 0;
  CUcontext ctx_ = nullptr;
  CUstream stream_ = nullptr;
  CUmodule module_ = nullptr;
  CUfunction hist_ = nullptr;
  CUfunction chi2_ = nullptr;
  std::string name_;
};

}  // namespace

std::shared_ptr<Backend> openCudaBackend(const std::string& ptxPath) { return std::make_shared<CudaBackend>(ptxPath); }

#endif

}  // namespace fractos_gpu

// CUDA kernels of the face-verification pipeline: uniform LBP_{8,1} histograms over a grid
// of cells, and chi-square distances between pairs of histograms.
// Source: T. Ahonen, A. Hadid, M. Pietikainen, "Face Description with Local Binary Patterns:
// Application to Face Recognition", IEEE TPAMI 28(12), 2006.
// Compiled to PTX (compute_90, -fmad=false) by scripts/build-ptx.mjs and loaded with
// cuModuleLoadData by src/cuda_backend.cc. Semantics are those of facever-app/lbp.ts; the
// results are bit-identical to the cpu backend:
//  - histograms are integer counts (order of atomic increments does not matter);
//  - chi-square: one thread per pair sums the terms in ascending bin index in float64, with
//    explicitly rounded __dsub_rn/__dmul_rn/__ddiv_rn/__dadd_rn (no FMA contraction), the
//    same operations in the same order as the C++ and TypeScript code; every numerator and
//    denominator is an exact integer, so IEEE-754 double gives the identical result.
#include "lbp_params.h"

using namespace fractos_lbp;

__constant__ UniformTable c_uniform = kUniformTable;

// lbp_hist: blockIdx.x = image index (0..n-1). images: n * 10304 u8, contiguous, row-major
// 92x112. hists: n * gx*gy*59 u32, written in full (zeroed first). useShared != 0: the block
// accumulates in dynamic shared memory (gx*gy*59*4 bytes, caller checks the limit) and
// copies out; else it zeroes its output and increments it with global atomics.
extern "C" __global__ void lbp_hist(const uint8_t* __restrict__ images, uint32_t* __restrict__ hists, uint32_t n,
                                    uint32_t gx, uint32_t gy, uint32_t useShared) {
  extern __shared__ uint32_t sh[];
  const uint32_t img = blockIdx.x;
  if (img >= n) return;
  const uint32_t len = gx * gy * kNumBins;
  const uint8_t* p = images + static_cast<size_t>(img) * kImageBytes;
  uint32_t* out = hists + static_cast<size_t>(img) * len;
  uint32_t* h = useShared ? sh : out;
  for (uint32_t i = threadIdx.x; i < len; i += blockDim.x) h[i] = 0;
  __syncthreads();
  for (uint32_t q = threadIdx.x; q < kInteriorWidth * kInteriorHeight; q += blockDim.x) {
    const uint32_t ix = q % kInteriorWidth, iy = q / kInteriorWidth;
    const uint32_t x = ix + 1, y = iy + 1;
    const uint8_t* up = p + (y - 1) * kImageWidth;
    const uint8_t* cur = p + y * kImageWidth;
    const uint8_t* dn = p + (y + 1) * kImageWidth;
    const uint8_t c = cur[x];
    const uint32_t code = (up[x - 1] >= c ? 1u : 0u) | (up[x] >= c ? 2u : 0u) | (up[x + 1] >= c ? 4u : 0u) |
                          (cur[x + 1] >= c ? 8u : 0u) | (dn[x + 1] >= c ? 16u : 0u) | (dn[x] >= c ? 32u : 0u) |
                          (dn[x - 1] >= c ? 64u : 0u) | (cur[x - 1] >= c ? 128u : 0u);
    const uint32_t cell = (iy * gy / kInteriorHeight) * gx + ix * gx / kInteriorWidth;
    atomicAdd(&h[cell * kNumBins + c_uniform.bin[code]], 1u);
  }
  if (useShared) {
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < len; i += blockDim.x) out[i] = sh[i];
  }
}

// chi2: thread i (0..n-1) writes scores[i] = chi2(a + i*len, b + i*len) over len u32 bins.
extern "C" __global__ void chi2(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b,
                                double* __restrict__ scores, uint32_t n, uint32_t len) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint32_t* pa = a + static_cast<size_t>(i) * len;
  const uint32_t* pb = b + static_cast<size_t>(i) * len;
  double sum = 0.0;
  for (uint32_t k = 0; k < len; k++) {
    const uint32_t va = pa[k], vb = pb[k];
    const uint32_t s = va + vb;
    if (s) {
      const double d = __dsub_rn(static_cast<double>(va), static_cast<double>(vb));
      sum = __dadd_rn(sum, __ddiv_rn(__dmul_rn(d, d), static_cast<double>(s)));
    }
  }
  scores[i] = sum;
}

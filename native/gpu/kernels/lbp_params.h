// Parameters of the LBP^{u2}_{8,1} face-verification kernels, shared by the C++ (cpu backend)
// and CUDA (kernels/lbp.cu) sources so both compute exactly the same thing.
// Source: T. Ahonen, A. Hadid, M. Pietikainen, "Face Description with Local Binary Patterns:
// Application to Face Recognition", IEEE TPAMI 28(12), 2006. Exact semantics (bit order, bin
// order, cell partition, chi-square summation order): facever-app/lbp.ts and
// docs/facever-kernel.md.
#pragma once

#include <stdint.h>

namespace fractos_lbp {

constexpr uint32_t kImageWidth = 92;    // ORL photo, pixels
constexpr uint32_t kImageHeight = 112;  // ORL photo, pixels
constexpr uint32_t kImageBytes = kImageWidth * kImageHeight;  // 10304, u8 row-major
constexpr uint32_t kInteriorWidth = kImageWidth - 2;    // 90: border pixels get no code
constexpr uint32_t kInteriorHeight = kImageHeight - 2;  // 110
constexpr uint32_t kNumBins = 59;        // 58 uniform codes (ascending) + 1 non-uniform (last)
constexpr uint32_t kNonUniformBin = 58;

// Circular 0/1 transitions of an 8-bit code.
constexpr int transitions(uint32_t c) {
  uint32_t rot = ((c >> 1) | ((c & 1u) << 7)) & 0xffu;
  uint32_t x = c ^ rot;
  int n = 0;
  while (x) {
    n += static_cast<int>(x & 1u);
    x >>= 1;
  }
  return n;
}

struct UniformTable {
  uint8_t bin[256];
};

// code -> bin: uniform codes (<= 2 transitions) numbered 0..57 in ascending code value,
// every other code -> 58.
constexpr UniformTable makeUniformTable() {
  UniformTable t{};
  uint8_t next = 0;
  for (uint32_t c = 0; c < 256; c++) t.bin[c] = transitions(c) <= 2 ? next++ : static_cast<uint8_t>(kNonUniformBin);
  return t;
}

constexpr UniformTable kUniformTable = makeUniformTable();
static_assert(kUniformTable.bin[255] == 57, "58 uniform codes");
static_assert(kUniformTable.bin[120] == 25 && kUniformTable.bin[192] == 36 && kUniformTable.bin[85] == 58, "bin order");

}  // namespace fractos_lbp

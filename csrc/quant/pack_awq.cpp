#include "quant/pack_awq.h"

#include <atomic>
#include <string>

#include "common/errors.h"

namespace awqkit {

void pack_awq_transposed(const uint8_t* src, int64_t N, int64_t R, int32_t* out) {
  require(N % 8 == 0, "the AWQ layout packs 8 output channels per int32: N = " + std::to_string(N) +
                          " is not a multiple of 8");
  const int64_t W = N / 8;
  std::atomic<bool> too_big{false};
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    uint8_t any = 0;
    for (int64_t j = 0; j < W; ++j) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) {
        const uint8_t c = src[(8 * j + kAwqOrder[i]) * R + r];
        any |= c;
        word |= static_cast<uint32_t>(c & 0xf) << (4 * i);
      }
      out[r * W + j] = static_cast<int32_t>(word);
    }
    if (any > 15) too_big = true;
  }
  require(!too_big, "AWQ packing holds 4-bit codes: found a code or zero point above 15");
}

void unpack_awq_transposed(const int32_t* words, int64_t N, int64_t R, uint8_t* out) {
  require(N % 8 == 0, "N = " + std::to_string(N) + " is not a multiple of 8");
  const int64_t W = N / 8;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < W; ++j) {
      const uint32_t word = static_cast<uint32_t>(words[r * W + j]);
      for (int i = 0; i < 8; ++i) out[(8 * j + kAwqOrder[i]) * R + r] = (word >> (4 * i)) & 0xf;
    }
}

}  // namespace awqkit

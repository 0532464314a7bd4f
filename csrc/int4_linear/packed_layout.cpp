#include "int4_linear/packed_layout.h"

#include <cstring>
#include <string>

#include "common/errors.h"
#include "common/half.h"
#include "quant/pack_awq.h"

namespace awqkit::int4_linear {
namespace {

inline uint8_t awq_code(const int32_t* row, int64_t n) {
  const uint32_t word = static_cast<uint32_t>(row[n / 8]);
  return static_cast<uint8_t>((word >> (4 * kAwqNibbleOf[n % 8])) & 0xFu);
}

inline void set_awq_code(int32_t* row, int64_t n, uint32_t code) {
  uint32_t word = static_cast<uint32_t>(row[n / 8]);
  word |= code << (4 * kAwqNibbleOf[n % 8]);
  row[n / 8] = static_cast<int32_t>(word);
}

}  // namespace

void check_packed_shape(int64_t N, int64_t K, int64_t group_size) {
  require(N > 0 && K > 0, "the weight is empty (N = ", N, ", K = ", K, ")");
  require(N % 8 == 0, "out_features N = ", N, " is not a multiple of 8 (the AWQ gemm layout packs 8 channels per int32)");
  require(group_size > 0 && K % group_size == 0, "group_size = ", group_size, " does not divide in_features K = ", K);
  require(group_size % 8 == 0, "the fused kernels need group_size to be a multiple of 8, got ", group_size);
  // packed_nbytes in checked arithmetic: blocks * G * (header + 8 * group_size) + tail.
  int64_t group_bytes = 0, block_bytes = 0, nbytes = 0;
  const bool overflow = __builtin_mul_overflow(group_size, int64_t{8}, &group_bytes) ||
                        __builtin_add_overflow(group_bytes, kGroupHeader, &group_bytes) ||
                        __builtin_mul_overflow(K / group_size, group_bytes, &block_bytes) ||
                        __builtin_mul_overflow(packed_blocks(N), block_bytes, &nbytes) ||
                        __builtin_add_overflow(nbytes, kTailPad, &nbytes);
  require(!overflow, "the packed weight of N = ", N, ", K = ", K, ", group_size = ", group_size,
          " would take more than 2^63 bytes; no machine holds it (check the shape)");
}

void pack_from_awq(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, int64_t N,
                   int64_t K, int64_t group_size, uint8_t* out) {
  check_packed_shape(N, K, group_size);
  const PackedView w = make_view(out, N, K, group_size);
  const int64_t N8 = N / 8;
  std::memset(out, 0, static_cast<size_t>(packed_nbytes(N, K, group_size)));  // padding: all zero
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < w.blocks; ++b) {
    const int64_t nc = (N - b * kBlock) < kBlock ? (N - b * kBlock) : kBlock;
    for (int64_t g = 0; g < w.G; ++g) {
      uint8_t* dst = out + b * w.block_bytes + g * w.group_bytes;
      uint16_t* hs = reinterpret_cast<uint16_t*>(dst);
      uint16_t* hz = reinterpret_cast<uint16_t*>(dst + 32);
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t n = b * kBlock + c;
        hs[c] = scales[g * N + n];
        hz[c] = float_to_half(static_cast<float>(awq_code(qzeros + g * N8, n)));
      }
      uint8_t* codes = dst + kGroupHeader;
      for (int64_t j = 0; j < group_size; ++j) {
        const int64_t k = g * group_size + j;
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t n = b * kBlock + c;
          codes[(j / kRun) * 64 + c * 4 + (j % kRun) / 2] |=
              static_cast<uint8_t>(awq_code(qweight + k * N8, n) << (4 * (j % 2)));
        }
      }
    }
  }
}

void unpack_to_awq(const PackedView& w, int32_t* qweight, int32_t* qzeros, uint16_t* scales) {
  const int64_t N = w.N, N8 = N / 8, gs = w.group_size;
  std::memset(qweight, 0, static_cast<size_t>(w.K * N8) * sizeof(int32_t));
  std::memset(qzeros, 0, static_cast<size_t>(w.G * N8) * sizeof(int32_t));
  for (int64_t b = 0; b < w.blocks; ++b) {
    const int64_t nc = (N - b * kBlock) < kBlock ? (N - b * kBlock) : kBlock;
    for (int64_t g = 0; g < w.G; ++g) {
      const uint8_t* src = block_group(w, b, g);
      const uint16_t* hs = reinterpret_cast<const uint16_t*>(src);
      const uint16_t* hz = reinterpret_cast<const uint16_t*>(src + 32);
      const uint8_t* codes = src + kGroupHeader;
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t n = b * kBlock + c;
        scales[g * N + n] = hs[c];
        set_awq_code(qzeros + g * N8, n, static_cast<uint32_t>(half_to_float(hz[c])));
        for (int64_t j = 0; j < gs; ++j) set_awq_code(qweight + (g * gs + j) * N8, n, packed_code(codes, j, c));
      }
    }
  }
}

}  // namespace awqkit::int4_linear

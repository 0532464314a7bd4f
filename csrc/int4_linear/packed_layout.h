// The kernel-friendly INT4 layout that PackedLinear keeps (repacked once from AutoAWQ).
//
// Output channels are grouped in blocks of 16 (one zmm of fp32 outputs; N is padded
// up to a multiple of 16 with all-zero channels). Each block is one contiguous run of
// bytes, group after group, so a GEMV streams every block exactly once, front to back:
//
//   block b, group g  (kGroupHeader + group_size * 8 bytes, 64-byte aligned):
//     [  0,  32)  scale[16]  fp16 bits, channel c = 16b + lane  (raw copy of AWQ scales)
//     [ 32,  64)  zero[16]   fp16 values 0..15 (exact), so -zero*scale is exact in fp32
//     [ 64, ...)  codes: for each run of 8 inputs k0..k0+7 of the group, 64 bytes =
//                 16 dwords; dword c holds channel c, nibble i (bits 4i..4i+3) = input
//                 k0+i. One aligned zmm load gives 8 inputs x 16 channels; input i is
//                 one shift away, and vpermps with the table 0..15 turns it into floats
//                 (it reads only the low 4 bits of each index, so no AND is needed).
//
// After the last block come kTailPad zero bytes: the GEMV reads 64-byte runs at byte
// offsets 0..3, so its last load may reach 3 bytes past the end of the codes.
//
// The weight is (code - zero) * scale; kernels split it as code*scale + (-zero*scale),
// so the inner loop is (shift,) permute and FMA, and the zero point costs one FMA per group.
#pragma once
#include <cstdint>

#include "common/half.h"

namespace awqkit::int4_linear {

inline constexpr int64_t kBlock = 16;         // output channels per block
inline constexpr int64_t kGroupHeader = 64;   // scales + zeros of one block-group
inline constexpr int64_t kRun = 8;            // inputs per 64-byte run of codes
inline constexpr int64_t kTailPad = 64;       // zero bytes after the last block (overlapping loads)

struct PackedView {
  const uint8_t* data;  // 64-byte aligned by PackedLinear (the kernels use unaligned loads)
  int64_t N;            // true output features (multiple of 8)
  int64_t K;            // input features
  int64_t group_size;   // divides K, multiple of 8
  int64_t G;            // K / group_size
  int64_t blocks;       // ceil(N / 16)
  int64_t group_bytes;  // kGroupHeader + group_size * 8
  int64_t block_bytes;  // G * group_bytes
};

// Sizes of a shape that passed check_packed_shape, which refuses any whose packed size does
// not fit int64 (these products would overflow for such shapes).
static inline int64_t packed_group_bytes(int64_t group_size) { return kGroupHeader + group_size * 8; }
static inline int64_t packed_blocks(int64_t N) { return N / kBlock + (N % kBlock != 0); }
static inline int64_t packed_nbytes(int64_t N, int64_t K, int64_t group_size) {
  return packed_blocks(N) * (K / group_size) * packed_group_bytes(group_size) + kTailPad;
}
static inline PackedView make_view(const uint8_t* data, int64_t N, int64_t K, int64_t group_size) {
  PackedView v;
  v.data = data;
  v.N = N;
  v.K = K;
  v.group_size = group_size;
  v.G = K / group_size;
  v.blocks = packed_blocks(N);
  v.group_bytes = packed_group_bytes(group_size);
  v.block_bytes = v.G * v.group_bytes;
  return v;
}
static inline const uint8_t* block_group(const PackedView& w, int64_t b, int64_t g) {
  return w.data + b * w.block_bytes + g * w.group_bytes;
}

// Checks shapes (N % 8, group_size | K, group_size % 8, a packed size that fits int64) and
// throws a clear ValueError.
void check_packed_shape(int64_t N, int64_t K, int64_t group_size);

// AutoAWQ gemm tensors -> packed bytes (out: packed_nbytes(N, K, group_size) bytes).
// qweight int32 [K, N/8], qzeros int32 [G, N/8], scales fp16 bits [G, N].
void pack_from_awq(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, int64_t N,
                   int64_t K, int64_t group_size, uint8_t* out);
// Exact inverse of pack_from_awq.
void unpack_to_awq(const PackedView& w, int32_t* qweight, int32_t* qzeros, uint16_t* scales);

}  // namespace awqkit::int4_linear

namespace awqkit::int4_linear {
// Code of channel c (0..15 in the block) at input j (0..group_size-1) of a group's codes.
static inline uint32_t packed_code(const uint8_t* codes, int64_t j, int64_t c) {
  const uint8_t* dw = codes + (j / kRun) * 64 + c * 4;
  const uint32_t word = static_cast<uint32_t>(dw[0]) | static_cast<uint32_t>(dw[1]) << 8 |
                        static_cast<uint32_t>(dw[2]) << 16 | static_cast<uint32_t>(dw[3]) << 24;
  return (word >> (4 * (j % kRun))) & 0xFu;
}
// Scale and zero point of channel c (0..15 in the block) from a block-group header.
static inline float packed_scale(const uint8_t* hdr, int64_t c) {
  return half_to_float(reinterpret_cast<const uint16_t*>(hdr)[c]);
}
static inline float packed_zero(const uint8_t* hdr, int64_t c) {
  return half_to_float(reinterpret_cast<const uint16_t*>(hdr + 32)[c]);
}
}  // namespace awqkit::int4_linear

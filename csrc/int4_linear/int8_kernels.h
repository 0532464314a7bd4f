// Opt-in int8-activation path (activation="int8"): x is quantized per row and per
// weight group to int8 (symmetric, scale = absmax / 127, round half to even), the
// 4-bit codes are the unsigned operand of AVX-512 VNNI vpdpbusd (u8 x s8 -> s32), and
// the zero point is removed exactly in int32 with the per-group sums of the int8 x:
//   y[m, n] = sum_g sx[m, g] * s[n, g] * (sum_k code * xq - zero * sum_k xq) + bias.
// The scalar functions are the specification; AVX-512 matches them bit for bit
// (integer sums are exact, and the float epilogue does the same operations in order).
#pragma once
#include <cmath>
#include <cstdint>

#include "int4_linear/packed_layout.h"

namespace awqkit::int4_linear {

// xq [M, K] int8 in run order: for each 8 inputs k0..k0+7, bytes are
// xq[k0, k0+2, k0+4, k0+6, k0+1, k0+3, k0+5, k0+7] (matching the even / odd nibbles of
// a packed dword). sx [M, G] float (NaN for a group holding NaN or Inf), qsum [M, G].
using QuantizeActFn = void (*)(const float* x, int64_t M, int64_t K, int64_t group_size, int8_t* xq, float* sx,
                               int32_t* qsum);
// y rows [0, M), output tiles of 32 channels [t0, t1).
using GemmInt8Fn = void (*)(const PackedView& w, const int8_t* xq, const float* sx, const int32_t* qsum, int64_t M,
                            const float* bias, float* y, int64_t t0, int64_t t1);

static inline int64_t int8_run_offset(int64_t i) { return (i & 1) ? 4 + i / 2 : i / 2; }  // i in 0..7

// Scale of one row's group from its absmax; both engines call this one function.
static inline float int8_act_scale(float absmax, bool nonfinite) {
  return nonfinite ? NAN : absmax > 0.0f ? absmax / 127.0f : 1.0f;
}

namespace scalar {
void quantize_act(const float* x, int64_t M, int64_t K, int64_t group_size, int8_t* xq, float* sx, int32_t* qsum);
void gemm_int8(const PackedView& w, const int8_t* xq, const float* sx, const int32_t* qsum, int64_t M,
               const float* bias, float* y, int64_t t0, int64_t t1);
}  // namespace scalar
namespace avx512_vnni {
void quantize_act(const float* x, int64_t M, int64_t K, int64_t group_size, int8_t* xq, float* sx, int32_t* qsum);
void gemm_int8(const PackedView& w, const int8_t* xq, const float* sx, const int32_t* qsum, int64_t M,
               const float* bias, float* y, int64_t t0, int64_t t1);
}  // namespace avx512_vnni

}  // namespace awqkit::int4_linear

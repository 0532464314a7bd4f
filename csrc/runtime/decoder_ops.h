// The element-wise and attention steps of a Llama-family decoder layer (llama_decoder.h),
// the parts between the INT4 linears. One scalar reference (decoder_ops_scalar.cpp, the
// specification) and an AVX-512 engine (decoder_ops_avx512_vnni.cpp) that agrees with it
// within float32 rounding: it sums in another order and its exp is a polynomial (a few ulp).
//
// They follow the float32 operations of transformers' eager Llama modules:
//   rms_norm:  y = w * (x * (1 / sqrt(mean(x^2) + eps)))
//   attend:    s_t = (q . k_t) * scale (t < T), p = softmax(s), y = sum_t p_t v_t
//   silu_mul:  y = g / (1 + exp(-g)) * u
#pragma once
#include <cstdint>

namespace awqkit::runtime {

// rms_norm: one row of n values.
using RmsNormFn = void (*)(const float* x, const float* w, int64_t n, float eps, float* y);
// attend: one query head q [d] against the first T positions of one KV head's cache:
//   k in blocks of kKeyBlock positions, each block [d][kKeyBlock] (position fastest), so
//     that one vector load holds one input of 16 keys and the scores need no horizontal sums;
//   v [T][d] row-major.
// scores: T rounded up to kKeyBlock floats of scratch.
inline constexpr int64_t kKeyBlock = 16;
using AttendFn = void (*)(const float* q, const float* k, const float* v, int64_t T, int64_t d, float scale,
                          float* scores, float* y);
// silu_mul: n values.
using SiluMulFn = void (*)(const float* g, const float* u, int64_t n, float* y);

#define AWQKIT_DECLARE_DECODER_OPS                                                                            \
  void rms_norm(const float* x, const float* w, int64_t n, float eps, float* y);                              \
  void attend(const float* q, const float* k, const float* v, int64_t T, int64_t d, float scale, float* scores, \
              float* y);                                                                                      \
  void silu_mul(const float* g, const float* u, int64_t n, float* y);
namespace scalar {
AWQKIT_DECLARE_DECODER_OPS
}  // namespace scalar
namespace avx512_vnni {
AWQKIT_DECLARE_DECODER_OPS
}  // namespace avx512_vnni
#undef AWQKIT_DECLARE_DECODER_OPS

}  // namespace awqkit::runtime

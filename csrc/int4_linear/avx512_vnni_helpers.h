// AVX-512 helpers of the int4_linear kernels. Include only from *_avx512_vnni.cpp / *_amx.cpp files (the
// ones compiled with AVX-512 flags); static inline, so no ISA-flagged copy can be shared.
#pragma once
#include <immintrin.h>

#include <cfloat>
#include <cstdint>

#include "int4_linear/packed_layout.h"

namespace awqkit::int4_linear::avx512_vnni {

// The first n of 16 lanes (none for n <= 0, all for n >= 16).
static inline __mmask16 lane_mask(int64_t n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// y[r * N + 16b ...] = yacc[r] (+ bias) for the R rows of output block b, masked to N: the
// last step of every GEMV-style block kernel.
template <int R>
static inline void store_block_rows(const __m512* yacc, const float* bias, float* y, int64_t N, int64_t b) {
  const int64_t n0 = b * kBlock;
  const __mmask16 mask = lane_mask(N - n0);
  for (int r = 0; r < R; ++r) {
    __m512 out = yacc[r];
    if (bias) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask, bias + n0));
    _mm512_mask_storeu_ps(y + r * N + n0, mask, out);
  }
}

// acc + dpbusd(u8, the 4 signed bytes at p broadcast to every lane), the broadcast folded
// into vpdpbusd's memory operand. Written in asm because GCC 12 keeps each accumulator of
// _mm512_dpbusd_epi32 in an array as a copy (a zmm move per vpdpbusd, spills with many rows)
// and issues every broadcast as its own load: the one-row decode loop took ~30 uops per 64-byte
// run instead of 15 (576x576 decode on 1 thread: ~6% less time per call). GNU asm, like the
// __builtin_memcpy and #pragma GCC used across csrc/.
static inline __m512i dpbusd_broadcast(__m512i acc, __m512i u8, const int8_t* p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u8), "m"(*reinterpret_cast<const int32_t*>(p)));
  return acc;
}

// 16 int32 lanes in run order (int8_run_offset): within each 8 inputs the even ones first,
// then the odd ones, as the low and high nibbles of a packed dword hold them.
static inline __m512i run_order() {
  return _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
}

// group_absmax (act_groups.h) 16 lanes at a time: the same value and the same *bad.
static inline float group_absmax(const float* p, int64_t n, bool* bad) {
  const __m512 fmax = _mm512_set1_ps(FLT_MAX);
  __m512 amax = _mm512_setzero_ps();
  __mmask16 nonfinite = 0;
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 mk = lane_mask(n - j);
    const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(mk, p + j));
    nonfinite |= _mm512_mask_cmp_ps_mask(mk, a, fmax, _CMP_NLE_UQ);
    amax = _mm512_max_ps(amax, a);
  }
  *bad = nonfinite != 0;
  return _mm512_reduce_max_ps(amax);
}

}  // namespace awqkit::int4_linear::avx512_vnni

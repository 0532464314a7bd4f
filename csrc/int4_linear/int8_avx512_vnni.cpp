// AVX-512 VNNI int8-activation path (see int8_kernels.h). Per 8 inputs x 16 channels
// one 64-byte load; AND / shift+AND split the nibbles into the even and odd inputs as
// unsigned bytes, and two vpdpbusd per row of x (broadcast dwords of 4 int8 inputs)
// accumulate 128 products. 8 rows x 32 channels per call: 16 int32 accumulators.
#include <immintrin.h>

#include <cfloat>
#include <cmath>

#include "int4_linear/act_groups.h"
#include "int4_linear/int8_kernels.h"
#include "int4_linear/avx512_vnni_helpers.h"
#include "int4_linear/row_tiles.h"

namespace awqkit::int4_linear::avx512_vnni {
namespace {

constexpr int MR = 8;


template <int R>
inline void tile_rows(const PackedView& w, const int8_t* xq, const float* sx, const int32_t* qs, const float* bias,
                      float* y, int64_t t) {
  const int64_t K = w.K, N = w.N, G = w.G, gs = w.group_size;
  const int64_t b0 = 2 * t, b1 = 2 * t + 1 < w.blocks ? 2 * t + 1 : 2 * t;  // a missing block is masked off
  const __m512i m0F = _mm512_set1_epi8(0x0F);
  __m512 yacc[R][2];
  for (int r = 0; r < R; ++r) yacc[r][0] = yacc[r][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* h0 = block_group(w, b0, g);
    const uint8_t* h1 = block_group(w, b1, g);
    __m512i acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    const int8_t* xg = xq + g * gs;
    for (int64_t run = 0; run < gs / kRun; ++run) {
      const __m512i v0 = _mm512_loadu_si512(h0 + kGroupHeader + run * 64);
      const __m512i v1 = _mm512_loadu_si512(h1 + kGroupHeader + run * 64);
      const __m512i e0 = _mm512_and_si512(v0, m0F), o0 = _mm512_and_si512(_mm512_srli_epi32(v0, 4), m0F);
      const __m512i e1 = _mm512_and_si512(v1, m0F), o1 = _mm512_and_si512(_mm512_srli_epi32(v1, 4), m0F);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int8_t* xr = xg + r * K + run * 8;
        acc[r][0] = dpbusd_broadcast(acc[r][0], e0, xr);
        acc[r][1] = dpbusd_broadcast(acc[r][1], e1, xr);
        acc[r][0] = dpbusd_broadcast(acc[r][0], o0, xr + 4);
        acc[r][1] = dpbusd_broadcast(acc[r][1], o1, xr + 4);
      }
    }
    const __m512 s0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h0)));
    const __m512 s1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h1)));
    const __m512i z0 = _mm512_cvttps_epi32(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h0 + 32))));
    const __m512i z1 = _mm512_cvttps_epi32(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h1 + 32))));
    for (int r = 0; r < R; ++r) {
      const __m512i q = _mm512_set1_epi32(qs[r * G + g]);
      const __m512 sxv = _mm512_set1_ps(sx[r * G + g]);
      const __m512 t0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][0], _mm512_mullo_epi32(z0, q)));
      const __m512 t1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][1], _mm512_mullo_epi32(z1, q)));
      yacc[r][0] = _mm512_add_ps(yacc[r][0], _mm512_mul_ps(t0, _mm512_mul_ps(s0, sxv)));
      yacc[r][1] = _mm512_add_ps(yacc[r][1], _mm512_mul_ps(t1, _mm512_mul_ps(s1, sxv)));
    }
  }
  const int64_t n0 = t * 32;
  const __mmask16 mk0 = lane_mask(N - n0), mk1 = lane_mask(N - n0 - 16);
  for (int r = 0; r < R; ++r) {
    __m512 a = yacc[r][0], b = yacc[r][1];
    if (bias) {
      a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(mk0, bias + n0));
      b = _mm512_add_ps(b, _mm512_maskz_loadu_ps(mk1, bias + n0 + 16));
    }
    _mm512_mask_storeu_ps(y + r * N + n0, mk0, a);
    _mm512_mask_storeu_ps(y + r * N + n0 + 16, mk1, b);
  }
}

}  // namespace

void quantize_act(const float* x, int64_t M, int64_t K, int64_t gs, int8_t* xq, float* sx, int32_t* qsum) {
  const int64_t G = K / gs;
  const __m512i perm = run_order();
  for_act_groups(x, M, K, gs, avx512_vnni::group_absmax, [&](int64_t m, int64_t g, const float* p, float amax, bool bad) {
    const float s = int8_act_scale(amax, bad);
    const __m512 sv = _mm512_set1_ps(s);
    __m512i sum = _mm512_setzero_si512();
    int8_t* q = xq + m * K + g * gs;
    for (int64_t j = 0; j < gs; j += 16) {
      const __mmask16 mk = lane_mask(gs - j);
      __m512i v = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(mk, p + j), sv),
                                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      if (bad) v = _mm512_setzero_si512();
      v = _mm512_maskz_mov_epi32(mk, v);
      sum = _mm512_add_epi32(sum, v);
      _mm512_mask_cvtepi32_storeu_epi8(q + j, mk, _mm512_permutexvar_epi32(perm, v));
    }
    sx[m * G + g] = s;
    qsum[m * G + g] = _mm512_reduce_add_epi32(sum);
  });
}

void gemm_int8(const PackedView& w, const int8_t* xq, const float* sx, const int32_t* qsum, int64_t M,
               const float* bias, float* y, int64_t t0, int64_t t1) {
  const int64_t K = w.K, N = w.N, G = w.G;
  for_block_row_tiles<MR>(t0, t1, M, [&](auto rows, int64_t t, int64_t m) {
    tile_rows<rows()>(w, xq + m * K, sx + m * G, qsum + m * G, bias, y + m * N, t);
  });
}

}  // namespace awqkit::int4_linear::avx512_vnni

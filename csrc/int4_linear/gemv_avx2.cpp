// AVX2 GEMV over the packed layout: the AVX-512 kernel's scheme on 8-lane halves of
// each 16-channel block (32 code bytes = 8 channels x 8 inputs; shift, AND, convert, FMA).
// Also serves larger M on AVX2-only CPUs (rows in chunks of 4, block reused from cache).
#include <immintrin.h>

#include "int4_linear/gemm_kernels.h"
#include "int4_linear/row_tiles.h"

namespace awqkit::int4_linear::avx2 {
namespace {

template <int R>
inline void gemv_half(const PackedView& w, const float* x, const float* xs, const float* bias, float* y,
                      int64_t b, int h) {
  const int64_t K = w.K, N = w.N, G = w.G, gs = w.group_size;
  constexpr int P = 2;  // same split for every R: a row's result does not depend on M
  const __m256i m15 = _mm256_set1_epi32(0xF);
  __m256 yacc[R];
  for (int r = 0; r < R; ++r) yacc[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* hdr = block_group(w, b, g);
    const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hdr + 16 * h)));
    const __m256 z = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hdr + 32 + 16 * h)));
    const __m256 zb = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, s));
    const uint8_t* codes = hdr + kGroupHeader + 32 * h;
    const float* xg = x + g * gs;
    __m256 acc[R][P];
    for (int r = 0; r < R; ++r)
      for (int p = 0; p < P; ++p) acc[r][p] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < gs; kk += kRun) {
      // 32 bytes: channels 8h..8h+7 x 8 inputs; nibble i of each dword = input kk+i.
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + kk * 8));
#pragma GCC unroll 8
      for (int i = 0; i < kRun; ++i) {
        const __m256 wf = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 4 * i), m15));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
          acc[r][i % P] = _mm256_fmadd_ps(_mm256_set1_ps(xg[r * K + kk + i]), wf, acc[r][i % P]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 sum = _mm256_add_ps(acc[r][0], acc[r][1]);
      yacc[r] = _mm256_fmadd_ps(sum, s, yacc[r]);
      yacc[r] = _mm256_fmadd_ps(_mm256_set1_ps(xs[r * G + g]), zb, yacc[r]);
    }
  }
  const int64_t n0 = b * kBlock + 8 * h;
  if (n0 >= N) return;  // N is a multiple of 8: a half is all in or all out
  for (int r = 0; r < R; ++r) {
    __m256 out = yacc[r];
    if (bias) out = _mm256_add_ps(out, _mm256_loadu_ps(bias + n0));
    _mm256_storeu_ps(y + r * N + n0, out);
  }
}

template <int R>
inline void gemv_block(const PackedView& w, const float* x, const float* xs, const float* bias, float* y,
                       int64_t b) {
  gemv_half<R>(w, x, xs, bias, y, b, 0);
  if (b * kBlock + 8 < w.N) gemv_half<R>(w, x, xs, bias, y, b, 1);
}

}  // namespace

void gemv(const PackedView& w, const float* x, int64_t M, const float* xsum, const float* bias, float* y,
          int64_t b0, int64_t b1) {
  const int64_t K = w.K, N = w.N, G = w.G;
  for_block_row_tiles<4>(b0, b1, M, [&](auto rows, int64_t b, int64_t m) {
    gemv_block<rows()>(w, x + m * K, xsum + m * G, bias, y + m * N, b);
  });
}

}  // namespace awqkit::int4_linear::avx2

// AVX2 tile kernels: 16 ymm registers hold a 6x16 sub-tile (12 accumulators), so the
// 12x32 tile is computed as four sub-tiles, each a full pass over k.
#include <immintrin.h>

#include "search/tile_kernels.h"

namespace awqkit::avx2 {
namespace {

// acc[6][2] = rows r0..r0+5, columns c0..c0+15 of the tile product.
static inline void sub_tile(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen,
                            int r0, int c0, __m256 acc[6][2]) {
  for (int r = 0; r < 6; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < klen; ++k) {
    const float* a = A + k * lda + r0;
    const __m256 b0 = _mm256_loadu_ps(B + k * ldb + c0);
    const __m256 b1 = _mm256_loadu_ps(B + k * ldb + c0 + 8);
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r);
      acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
    }
  }
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace

void gemm_tile(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen, float* C) {
  __m256 acc[6][2];
  for (int r0 = 0; r0 < 12; r0 += 6)
    for (int c0 = 0; c0 < 32; c0 += 16) {
      sub_tile(A, lda, B, ldb, klen, r0, c0, acc);
      for (int r = 0; r < 6; ++r) {
        _mm256_storeu_ps(C + (r0 + r) * 32 + c0, acc[r][0]);
        _mm256_storeu_ps(C + (r0 + r) * 32 + c0 + 8, acc[r][1]);
      }
    }
}

void gemm_dot_tile(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen,
                   const float* E, int64_t lde, float* out) {
  __m256 acc[6][2];
  __m256 dot[12];
  for (int r0 = 0; r0 < 12; r0 += 6)
    for (int c0 = 0; c0 < 32; c0 += 16) {
      sub_tile(A, lda, B, ldb, klen, r0, c0, acc);
      for (int r = 0; r < 6; ++r) {
        const float* e = E + (r0 + r) * lde + c0;
        __m256 d = _mm256_mul_ps(acc[r][0], _mm256_loadu_ps(e));
        d = _mm256_fmadd_ps(acc[r][1], _mm256_loadu_ps(e + 8), d);
        dot[r0 + r] = c0 == 0 ? d : _mm256_add_ps(dot[r0 + r], d);
      }
    }
  for (int r = 0; r < 12; ++r) out[r] = hsum(dot[r]);
}

}  // namespace awqkit::avx2

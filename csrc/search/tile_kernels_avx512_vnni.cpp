// AVX-512 tile kernels: the whole 12x32 tile lives in 24 zmm accumulators; per k, two
// loads of B and twelve broadcast FMAs (the broadcast folds into the FMA's memory operand).
#include <immintrin.h>

#include "search/tile_kernels.h"

namespace awqkit::avx512_vnni {
namespace {

struct Acc {
  __m512 v[12][2];
};

static inline void tile_product(const float* A, int64_t lda, const float* B, int64_t ldb,
                                int64_t klen, Acc& acc) {
  for (int r = 0; r < 12; ++r) acc.v[r][0] = acc.v[r][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < klen; ++k) {
    const float* a = A + k * lda;
    const __m512 b0 = _mm512_loadu_ps(B + k * ldb);
    const __m512 b1 = _mm512_loadu_ps(B + k * ldb + 16);
#pragma GCC unroll 12
    for (int r = 0; r < 12; ++r) {
      const __m512 ar = _mm512_set1_ps(a[r]);
      acc.v[r][0] = _mm512_fmadd_ps(ar, b0, acc.v[r][0]);
      acc.v[r][1] = _mm512_fmadd_ps(ar, b1, acc.v[r][1]);
    }
  }
}

}  // namespace

void gemm_tile(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen, float* C) {
  Acc acc;
  tile_product(A, lda, B, ldb, klen, acc);
  for (int r = 0; r < 12; ++r) {
    _mm512_storeu_ps(C + r * 32, acc.v[r][0]);
    _mm512_storeu_ps(C + r * 32 + 16, acc.v[r][1]);
  }
}

void gemm_dot_tile(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen,
                   const float* E, int64_t lde, float* out) {
  Acc acc;
  tile_product(A, lda, B, ldb, klen, acc);
  for (int r = 0; r < 12; ++r) {
    __m512 d = _mm512_mul_ps(acc.v[r][0], _mm512_loadu_ps(E + r * lde));
    d = _mm512_fmadd_ps(acc.v[r][1], _mm512_loadu_ps(E + r * lde + 16), d);
    out[r] = _mm512_reduce_add_ps(d);
  }
}

}  // namespace awqkit::avx512_vnni

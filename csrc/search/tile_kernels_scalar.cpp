// Scalar reference of the tile kernels: the specification the SIMD variants match
// (up to the rounding of fused multiply-adds).
#include "search/tile_kernels.h"

namespace awqkit::scalar {

void gemm_tile(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen, float* C) {
  for (int64_t i = 0; i < kTileRows * kTileCols; ++i) C[i] = 0.0f;
  for (int64_t k = 0; k < klen; ++k) {
    const float* a = A + k * lda;
    const float* b = B + k * ldb;
    for (int64_t r = 0; r < kTileRows; ++r) {
      const float ar = a[r];
      float* c = C + r * kTileCols;
      for (int64_t j = 0; j < kTileCols; ++j) c[j] += ar * b[j];
    }
  }
}

void gemm_dot_tile(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen,
                   const float* E, int64_t lde, float* out) {
  float C[kTileRows * kTileCols];
  gemm_tile(A, lda, B, ldb, klen, C);
  for (int64_t r = 0; r < kTileRows; ++r) {
    float s = 0.0f;
    for (int64_t j = 0; j < kTileCols; ++j) s += C[r * kTileCols + j] * E[r * lde + j];
    out[r] = s;
  }
}

}  // namespace awqkit::scalar

// Register-tile kernels of the search engine, one set per ISA (tile_kernels_{scalar,avx2,avx512_vnni}.cpp).
//
// Both the Gram accumulation (X^T X) and the loss quadratic forms (rows of E times G)
// are products of a 12-wide "A" operand and a 32-wide "B" operand over a run of k:
//   C[r][c] = sum_k A[k*lda + r] * B[k*ldb + c],   r < 12, c < 32.
// A is k-major (12 contiguous floats per k), B has 32 contiguous floats per k, so the
// same kernel serves X^T X (A and B are column slices of a token chunk) and E*G (A is
// a packed micro-panel of E rows, B a packed panel of the Gram matrix).
#pragma once
#include <cstdint>

namespace awqkit {

inline constexpr int64_t kTileRows = 12;  // MR: rows of A per tile
inline constexpr int64_t kTileCols = 32;  // NR: columns of B per tile

// C (12x32, row-major, overwritten) = the tile product above.
using GemmTileFn = void (*)(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen,
                            float* C);
// out[r] = sum_c C[r][c] * E[r*lde + c]: the tile product dotted with 32 entries of row r
// of E, without storing C (this is how e^T G e is formed).
using GemmDotTileFn = void (*)(const float* A, int64_t lda, const float* B, int64_t ldb,
                               int64_t klen, const float* E, int64_t lde, float* out);

#define AWQKIT_DECLARE_TILE_KERNELS                                                             \
  void gemm_tile(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen,        \
                 float* C);                                                                      \
  void gemm_dot_tile(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t klen,    \
                     const float* E, int64_t lde, float* out);

namespace scalar {
AWQKIT_DECLARE_TILE_KERNELS
}
namespace avx2 {
AWQKIT_DECLARE_TILE_KERNELS
}
namespace avx512_vnni {
AWQKIT_DECLARE_TILE_KERNELS
}
#undef AWQKIT_DECLARE_TILE_KERNELS

GemmTileFn gemm_tile_kernel();         // for the active ISA
GemmDotTileFn gemm_dot_tile_kernel();  // for the active ISA

}  // namespace awqkit

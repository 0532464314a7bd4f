// GPTQ (Frantar et al., ICLR 2023): rounding that compensates each column's error on the
// columns not yet rounded, through the inverse Hessian of the layer's squared output error.
//
// The Hessian is the Gram matrix X^T X of the layer's calibration inputs (what the scale and
// clip searches already accumulate); its scale does not matter, the dampening is relative to
// its mean diagonal. Every row of the weight is rounded independently given the factor, so
// rows are split among threads in fixed chunks and the result does not depend on the thread
// count. Arithmetic is double throughout; the group scales are the awq rule's (quant_math.h),
// rounded to float16 before the codes as everywhere else.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/quantize.h"

namespace awqkit {

// The factor GPTQ needs, shared by every weight that reads the same input (q, k and v).
struct GPTQFactor {
  int64_t K = 0;
  // Upper Cholesky factor U of (H + damp I)^-1 (H permuted to perm), [K, K] row-major:
  // H^-1 = U^T U. Row i of U spreads column i's error over the later columns.
  std::vector<double> U;
  std::vector<int64_t> perm;  // processing order: perm[i] is the original column (identity
                              // without act_order; by decreasing H_jj, ties by index, with it)
  std::vector<uint8_t> dead;  // [K] in original order: H_jj == 0 (no token reached the input)
  double damp = 0.0;          // the relative dampening that made H + damp I positive definite
};

// H: [K, K] symmetric, row-major with leading dimension ld (both triangles read; must agree).
// Columns with H_jj == 0 are "dead": their weights are zeroed and H_jj set to 1. damp:
// relative dampening (damp * mean(diag H) is added to the diagonal), doubled until the
// Cholesky factorisation succeeds, up to 1; throws beyond.
GPTQFactor gptq_factor(const double* H, int64_t K, int64_t ld, double damp, bool act_order);

struct GPTQSpec {
  QuantSpec quant;
  int64_t block_size = 128;     // lazy batch: columns rounded before the rest are updated
  bool static_groups = false;   // group scales from the weights before any update (implied
                                // by act_order and by given scales), else from the current
                                // weights when the group's first column is reached
};

struct GPTQOutput {
  std::vector<uint8_t> codes;   // [N, K] original column order
  std::vector<float> scales;    // [N, G] as stored
  std::vector<uint8_t> zeros;   // [N, G]
  std::vector<double> loss;     // [N] GPTQ's proxy: sum_i (w_i - q_i)^2 / (2 U_ii^2)
};

// w: [N, K] float32. fixed_scales / fixed_zeros ([N, G], both or neither): the groups'
// parameters, as the rounding of a clip or range search chose them. Throws on non-finite
// weights, a group scale that overflows the scale dtype, or a ggml rule (GPTQ rounds with the
// awq rule only).
GPTQOutput gptq_quantize(const MatrixView& w, const GPTQFactor& f, const GPTQSpec& spec,
                         const float* fixed_scales, const uint8_t* fixed_zeros);

// The block size actually used for a group size: whole groups per block (so a group's
// scale is taken from fully updated weights), at most `block_size` columns where possible.
int64_t gptq_block_columns(int64_t block_size, int64_t group_size);

}  // namespace awqkit

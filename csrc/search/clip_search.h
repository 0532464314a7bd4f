// AWQ clip search (AutoAWQ's _compute_best_clip / llm-awq's auto_clip).
//
// For each (row, group) of w: try max_val = absmax * (1 - i/n_grid), i < int(max_shrink*n_grid),
// clamp to [-max_val, max_val], quantize, and keep the shrink whose group partial dot
// products over the calibration tokens have the lowest mean squared error. The error of a
// group is e^T G_g e / n with e = Q(clamp(w)) - w and G_g that group's block of X^T X,
// so evaluating it costs gs^2 whatever the number of tokens.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/quantize.h"

namespace awqkit {

struct ClipSpec {
  QuantSpec quant;
  int n_grid = 20;
  int n_shrink = 10;        // int(max_shrink * n_grid)
  bool asymmetric = false;  // shrink the max and the min separately (n_shrink^2 candidates)
  // GGUF rules only: after rounding each clipped candidate, refit the block's stored scale d
  // (and Q4_1's minimum m) by least squares under the group's Gram block, d = a^T G w / a^T G a
  // with a the codes' integer levels, then round to float16; the block keeps its codes. The
  // plain (unclipped, unrefit) quantization is a candidate too, so the result is never worse
  // than it on this objective. llama.cpp's imatrix quantizer refits the same way with the
  // diagonal of G.
  bool refit = false;
  // With refit: also try the codes of the plain scale times 1 + k/80, k = 1..n_expand (no
  // clamping), each refit the same way.
  int n_expand = 0;
};

struct ClipOutput {
  std::vector<float> max_val, min_val;        // [N, G] clamp bounds (min = -max when symmetric)
  std::vector<double> err_before, err_after;  // [N, G] group objective without / with clipping
  // [N, G] chosen i (and j); with refit -1 is the plain candidate, -1 - k the expansion 1 + k/80
  std::vector<int32_t> shrink_max, shrink_min;
  std::vector<float> scale, offset;  // [N, G] with refit: the stored d (and m) chosen
  std::vector<uint8_t> codes;        // [N, K] with refit: the chosen codes, to store with them
};

// Per-group Gram blocks [G, gs, gs] (double) of tokens 0, stride, 2*stride, ... of x.
std::vector<double> group_gram_blocks(const MatrixView& x, int64_t stride, int64_t group_size);

// gblocks: [G, gs, gs] sums over n_tokens tokens.
ClipOutput search_clip(const MatrixView& w, const double* gblocks, int64_t n_tokens, const ClipSpec& spec);

}  // namespace awqkit

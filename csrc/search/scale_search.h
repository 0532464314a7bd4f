// AWQ scale search (AutoAWQ's _search_best_scale with the linears as the inspected module).
//
// For each candidate s [K]: E = W - Q(W diag(s)) diag(s)^-1 over every weight that shares
// the input, loss = sum_rows e^T G e / (T * N_total), G = X^T X. Lowest loss wins, ties
// keep the earlier candidate.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/quantize.h"
#include "search/gram.h"

namespace awqkit {

// Throws unless every weight is finite and they all have K columns.
void check_weights(const std::vector<MatrixView>& weights, int64_t K);

// w_mean [K]: rows of all weights stacked, each group of group_size inputs divided by its
// abs-max + 1e-6, then the mean over rows (double).
std::vector<double> weight_group_mean(const std::vector<MatrixView>& weights, int64_t group_size);

// One candidate: duo  s = max(sal^r / (w_mean^(1-r) + 1e-4), 1e-4), else s = max(sal^r, 1e-4);
// s /= sqrt(max(s) * min(s)); non-finite -> 1. Computed in double, stored as float.
void scale_candidate(const double* saliency, const double* w_mean, int64_t K, double ratio, bool duo,
                     float* out);

// Loss of each candidate (rows of S, [C, K] float); non-finite losses come back as +inf.
std::vector<double> scale_losses(const std::vector<MatrixView>& weights, const GramPanels& P,
                                 int64_t n_tokens, const QuantSpec& spec, const float* S, int64_t C);

struct ScaleSearchSpec {
  QuantSpec quant;
  int n_grid = 20;
  bool duo = true, plain = false;  // candidate families: duo first, then plain
  bool identity = true;            // s = 1 appended last
};

struct ScaleSearchOutput {
  std::vector<double> ratios, losses;
  std::vector<uint8_t> duo, identity;  // per candidate
  std::vector<float> candidates;       // [C, K]
  std::vector<double> w_mean;          // [K], as weight_group_mean()
  int64_t best = 0;
  double rtn_loss = 0;
};

ScaleSearchOutput search_scale(const std::vector<MatrixView>& weights, const GramPanels& P,
                               int64_t n_tokens, const double* saliency, const ScaleSearchSpec& spec);

}  // namespace awqkit

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

// Throws unless every weight is finite, they all have K columns and every group scale of
// every weight is finite in the scale dtype of spec (the rule quantize applies).
void check_weights(const std::vector<MatrixView>& weights, int64_t K, const QuantSpec& spec);

// w_mean [K]: rows of all weights stacked, each group of group_size inputs divided by its
// abs-max + 1e-6, then the mean over rows (double).
std::vector<double> weight_group_mean(const std::vector<MatrixView>& weights, int64_t group_size);

// One candidate: duo  s = max(sal^r / (w_mean^(1-r) + 1e-4), 1e-4), else s = max(sal^r, 1e-4);
// s /= sqrt(max(s) * min(s)); non-finite -> 1. Computed in double, stored as float.
void scale_candidate(const double* saliency, const double* w_mean, int64_t K, double ratio, bool duo,
                     float* out);

// Loss of each candidate (rows of S, [C, K] float). A candidate under which some group scale
// of W diag(s) is not finite in the scale dtype cannot be stored: it is excluded (flag set,
// loss +inf; AutoAWQ never picks such a candidate either). Any other non-finite loss means
// the quadratic form overflowed float32, and throws.
struct ScaleLosses {
  std::vector<double> losses;
  std::vector<uint8_t> excluded;
};
ScaleLosses scale_losses(const std::vector<MatrixView>& weights, const GramPanels& P, int64_t n_tokens,
                         const QuantSpec& spec, const float* S, int64_t C);

struct ScaleSearchSpec {
  QuantSpec quant;
  int n_grid = 20;
  bool duo = true, plain = false;  // candidate families: duo first, then plain
  bool identity = true;            // s = 1 appended last
  // Score only candidates c with c % parts == part (the others: NaN, not excluded, never
  // best): a search split among processes, whose losses are the whole search's.
  int64_t part = 0, parts = 1;
};

struct ScaleSearchOutput {
  std::vector<double> ratios, losses;
  std::vector<uint8_t> duo, identity;  // per candidate
  std::vector<uint8_t> excluded;       // per candidate, see scale_losses
  std::vector<float> candidates;       // [C, K]
  std::vector<double> w_mean;          // [K], as weight_group_mean()
  int64_t best = 0;
  double rtn_loss = 0;
};

// Throws if every candidate is excluded.
ScaleSearchOutput search_scale(const std::vector<MatrixView>& weights, const GramPanels& P,
                               int64_t n_tokens, const double* saliency, const ScaleSearchSpec& spec);

}  // namespace awqkit

#include "search/scale_search.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>

#include "common/errors.h"
#include "common/half.h"
#include "quant/quantize_kernels.h"
#include "search/quadratic_form_amx.h"
#include "search/tile_kernels.h"

namespace awqkit {

namespace {

constexpr int64_t kRowBlock = 2 * kQuadRowMultiple;  // rows of E per work item

// Columns [c0, c0 + n) of row r of a weight view as float32 (f16 converted into buf).
const float* weight_row(const MatrixView& w, int64_t r, float* buf, int64_t c0 = 0, int64_t n = -1) {
  if (n < 0) n = w.cols - c0;
  if (w.type == FloatType::f32) return static_cast<const float*>(w.data) + r * w.ld + c0;
  const uint16_t* h = static_cast<const uint16_t*>(w.data) + r * w.ld + c0;
  for (int64_t k = 0; k < n; ++k) buf[k] = half_to_float(h[k]);
  return buf;
}

// (view, row) of every stacked row.
struct RowIndex {
  std::vector<int32_t> view;
  std::vector<int64_t> row;
};

RowIndex index_rows(const std::vector<MatrixView>& weights) {
  RowIndex ix;
  for (size_t v = 0; v < weights.size(); ++v)
    for (int64_t r = 0; r < weights[v].rows; ++r) {
      ix.view.push_back(static_cast<int32_t>(v));
      ix.row.push_back(r);
    }
  return ix;
}

}  // namespace

void check_weights(const std::vector<MatrixView>& weights, int64_t K, const QuantSpec& spec) {
  require(!weights.empty(), "weights is empty: pass the list of linears that share this input");
  const QuantizeGroupFn quantize = quantize_group_kernel(spec);
  const int64_t gs = spec.group_size;
  for (size_t v = 0; v < weights.size(); ++v) {
    const MatrixView& w = weights[v];
    require(w.cols == K, "weight " + std::to_string(v) + " has " + std::to_string(w.cols) +
                             " input features but the activations have K = " + std::to_string(K));
    std::atomic<bool> ok{true};
    std::atomic<int64_t> overflow_row{w.rows};
#pragma omp parallel
    {
      std::vector<float> buf(static_cast<size_t>(K));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < w.rows; ++r) {
        const float* row = weight_row(w, r, buf.data());
        bool fin = true;
        for (int64_t k = 0; k < K; ++k) fin &= std::isfinite(row[k]);
        if (!fin) {
          ok = false;
          continue;
        }
        for (int64_t g = 0; g < K / gs; ++g) {
          float scale;
          uint8_t zero;
          quantize(row + g * gs, gs, spec, nullptr, nullptr, &scale, &zero);
          if (!std::isfinite(scale)) {
            int64_t cur = overflow_row.load();
            while (r < cur && !overflow_row.compare_exchange_weak(cur, r)) {}
            break;
          }
        }
      }
    }
    require(ok.load(), "weight " + std::to_string(v) + " contains NaN or Inf");
    if (overflow_row.load() < w.rows)
      fail(scale_overflow_message("weights[" + std::to_string(v) + "]", overflow_row.load(), spec.fp16_scale));
  }
}

std::vector<double> weight_group_mean(const std::vector<MatrixView>& weights, int64_t group_size) {
  const int64_t K = weights[0].cols, G = K / group_size;
  int64_t total = 0;
  for (const auto& w : weights) total += w.rows;
  std::vector<double> sum(static_cast<size_t>(K), 0.0);
  // Columns are owned by threads (blocks of whole groups); rows are summed in order.
#pragma omp parallel
  {
    std::vector<float> buf(static_cast<size_t>(group_size));
#pragma omp for schedule(static)
    for (int64_t g = 0; g < G; ++g) {
      for (const auto& w : weights)
        for (int64_t r = 0; r < w.rows; ++r) {
          const float* row = weight_row(w, r, buf.data(), g * group_size, group_size);
          double amax = 0.0;
          for (int64_t i = 0; i < group_size; ++i) amax = std::max(amax, std::fabs(double(row[i])));
          const double d = amax + 1e-6;
          for (int64_t i = 0; i < group_size; ++i) sum[g * group_size + i] += std::fabs(double(row[i])) / d;
        }
    }
  }
  for (auto& s : sum) s /= static_cast<double>(total);
  return sum;
}

void scale_candidate(const double* saliency, const double* w_mean, int64_t K, double ratio, bool duo,
                     float* out) {
  std::vector<double> s(static_cast<size_t>(K));
  // max/min propagate NaN, as torch's and numpy's reductions do.
  double smax = -std::numeric_limits<double>::infinity(), smin = std::numeric_limits<double>::infinity();
  bool any_nan = false;
  for (int64_t k = 0; k < K; ++k) {
    double v = std::pow(saliency[k], ratio);
    if (duo) v = v / (std::pow(w_mean[k], 1.0 - ratio) + 1e-4);
    v = std::max(v, 1e-4);  // keeps NaN (NaN < x is false), like torch.clamp
    s[k] = v;
    if (std::isnan(v)) any_nan = true;
    smax = std::max(smax, v);
    smin = std::min(smin, v);
  }
  if (any_nan) smax = smin = std::numeric_limits<double>::quiet_NaN();
  const double norm = std::sqrt(smax * smin);
  for (int64_t k = 0; k < K; ++k) {
    const double v = s[k] / norm;
    out[k] = std::isfinite(v) ? static_cast<float>(v) : 1.0f;
  }
}

ScaleLosses scale_losses(const std::vector<MatrixView>& weights, const GramPanels& P, int64_t n_tokens,
                         const QuantSpec& spec, const float* S, int64_t C) {
  const int64_t K = P.K, Kp = P.Kp, gs = spec.group_size, G = K / gs;
  const RowIndex ix = index_rows(weights);
  const int64_t N = static_cast<int64_t>(ix.row.size());
  const int64_t n_blocks = (N + kRowBlock - 1) / kRowBlock;
  const QuantizeGroupFn quantize = quantize_group_kernel(spec);
  // One parallel region for every (candidate, row block): a single barrier per search,
  // so a busy machine that deschedules a thread costs little. Each row's loss is written by
  // one work item and the rows are summed in order afterwards: thread-count independent.
  std::vector<double> row_loss(static_cast<size_t>(C * N));
  std::vector<uint8_t> row_excluded(static_cast<size_t>(C * N), 0);  // written like row_loss
#pragma omp parallel
  {
    std::vector<float> E(static_cast<size_t>(kRowBlock * Kp)), buf(K), ws(K), deq(K);
    QuadraticFormScratch scratch;
    std::vector<double> out(kRowBlock);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < C * n_blocks; ++item) {
      const int64_t c = item / n_blocks, b = item % n_blocks;
      const float* s = S + c * K;
      const int64_t r0 = b * kRowBlock, nr = std::min(kRowBlock, N - r0);
      std::fill(E.begin(), E.end(), 0.0f);
      for (int64_t i = 0; i < nr; ++i) {
        const float* w = weight_row(weights[ix.view[r0 + i]], ix.row[r0 + i], buf.data());
        for (int64_t k = 0; k < K; ++k) ws[k] = w[k] * s[k];
        float scale;
        uint8_t zero;
        bool stored = true;
        for (int64_t g = 0; g < G; ++g) {
          quantize(ws.data() + g * gs, gs, spec, nullptr, deq.data() + g * gs, &scale, &zero);
          stored &= std::isfinite(scale);
        }
        row_excluded[c * N + r0 + i] = !stored;
        float* e = E.data() + i * Kp;
        for (int64_t k = 0; k < K; ++k) e[k] = w[k] - deq[k] / s[k];
      }
      // Whole register tiles (12 rows), and whole AMX blocks (32) when the AMX panels exist.
      const int64_t rows = round_up(nr, P.hi.empty() ? kTileRows : kQuadRowMultiple);
      rowwise_quadratic_form(E.data(), rows, P, out.data(), scratch);
      for (int64_t i = 0; i < nr; ++i) row_loss[c * N + r0 + i] = out[i];
    }
  }
  ScaleLosses out;
  out.losses.resize(static_cast<size_t>(C));
  out.excluded.resize(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    double total = 0.0;
    bool excluded = false;
    for (int64_t r = 0; r < N; ++r) {
      total += row_loss[c * N + r];
      excluded |= row_excluded[c * N + r] != 0;
    }
    const double loss = total / (static_cast<double>(n_tokens) * static_cast<double>(N));
    out.excluded[c] = excluded;
    if (excluded) {
      out.losses[c] = std::numeric_limits<double>::infinity();
      continue;
    }
    require(std::isfinite(loss), "the loss of scale candidate ", c,
            " overflows the search's float32 arithmetic (weight errors times X^T X): the activations are too "
            "large; scale them down before collecting statistics (the losses all scale by the same factor, so "
            "the search's choice does not change)");
    out.losses[c] = loss;
  }
  return out;
}

ScaleSearchOutput search_scale(const std::vector<MatrixView>& weights, const GramPanels& P,
                               int64_t n_tokens, const double* saliency, const ScaleSearchSpec& spec) {
  const int64_t K = P.K;
  require(spec.n_grid >= 1, "n_grid must be >= 1, got " + std::to_string(spec.n_grid));
  require(spec.duo || spec.plain || spec.identity, "no candidates to search");
  ScaleSearchOutput out;
  out.w_mean = weight_group_mean(weights, spec.quant.group_size);
  const std::vector<double>& w_mean = out.w_mean;
  auto add = [&](double ratio, bool duo, bool identity) {
    const size_t at = out.candidates.size();
    out.candidates.resize(at + K);
    if (identity)
      std::fill(out.candidates.begin() + at, out.candidates.end(), 1.0f);
    else
      scale_candidate(saliency, w_mean.data(), K, ratio, duo, out.candidates.data() + at);
    out.ratios.push_back(ratio);
    out.duo.push_back(duo);
    out.identity.push_back(identity);
  };
  for (int fam = 0; fam < 2; ++fam) {
    const bool duo = fam == 0;
    if (duo ? !spec.duo : !spec.plain) continue;
    for (int k = 0; k < spec.n_grid; ++k) add(static_cast<double>(k) / spec.n_grid, duo, false);
  }
  // s = 1 is evaluated in any case: it is the plain-rounding loss reported as rtn_loss.
  add(0.0, false, true);
  const int64_t C = static_cast<int64_t>(out.ratios.size());
  require(spec.parts >= 1 && spec.part >= 0 && spec.part < spec.parts, "part must be in [0, parts)");
  if (spec.parts == 1) {
    ScaleLosses scored = scale_losses(weights, P, n_tokens, spec.quant, out.candidates.data(), C);
    out.losses = std::move(scored.losses);
    out.excluded = std::move(scored.excluded);
  } else {
    // Each candidate's loss depends on it alone: scoring a subset gives the same values.
    std::vector<float> mine;
    std::vector<int64_t> which;
    for (int64_t c = spec.part; c < C; c += spec.parts) {
      mine.insert(mine.end(), out.candidates.begin() + c * K, out.candidates.begin() + (c + 1) * K);
      which.push_back(c);
    }
    out.losses.assign(static_cast<size_t>(C), std::numeric_limits<double>::quiet_NaN());
    out.excluded.assign(static_cast<size_t>(C), 0);
    if (!which.empty()) {
      ScaleLosses scored = scale_losses(weights, P, n_tokens, spec.quant, mine.data(), static_cast<int64_t>(which.size()));
      for (size_t j = 0; j < which.size(); ++j) {
        out.losses[which[j]] = scored.losses[j];
        out.excluded[which[j]] = scored.excluded[j];
      }
    }
  }
  out.rtn_loss = out.losses.back();
  if (!spec.identity) {
    out.ratios.pop_back();
    out.duo.pop_back();
    out.identity.pop_back();
    out.losses.pop_back();
    out.excluded.pop_back();
    out.candidates.resize(out.candidates.size() - K);
  }
  // The first lowest loss among the candidates that can be stored (ties keep the earlier one).
  out.best = -1;
  for (int64_t c = 0; c < static_cast<int64_t>(out.losses.size()); ++c)
    if (!out.excluded[c] && !std::isnan(out.losses[c]) && (out.best < 0 || out.losses[c] < out.losses[out.best]))
      out.best = c;
  require(out.best >= 0 || spec.parts > 1, "every scale candidate makes a group scale of the scaled weights overflow ",
          spec.quant.fp16_scale ? "float16 (at most 65504)" : "float32",
          ", so none can be stored; include the identity candidate (include_identity=True)",
          spec.quant.fp16_scale ? " or use scale_dtype='float32'" : "");
  return out;
}

}  // namespace awqkit

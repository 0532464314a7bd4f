#include "search/gptq.h"

#include <omp.h>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>

#include "common/errors.h"
#include "quant/quant_math.h"

namespace awqkit {

namespace {

using RowMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Rows per work item: fixed, so that every row sees the same arithmetic (the same GEMM shapes)
// whatever the number of threads.
constexpr int64_t kRowChunk = 32;
// Columns of M^-1 per work item of the triangular inverse.
constexpr int64_t kInverseColumns = 64;

GroupParams params_of(const double* v, int64_t n, const QuantSpec& spec) {
  double lo = v[0], hi = v[0];
  for (int64_t t = 1; t < n; ++t) {
    lo = std::min(lo, v[t]);
    hi = std::max(hi, v[t]);
  }
  return group_params(static_cast<float>(lo), static_cast<float>(hi), spec);
}

}  // namespace

int64_t gptq_block_columns(int64_t block_size, int64_t group_size) {
  if (group_size <= block_size) return group_size * (block_size / group_size);
  for (int64_t b = block_size; b > 1; --b)
    if (group_size % b == 0) return b;
  return 1;
}

GPTQFactor gptq_factor(const double* H, int64_t K, int64_t ld, double damp, bool act_order) {
  require(K > 0, "the Hessian is empty");
  require(std::isfinite(damp) && damp > 0.0 && damp <= 1.0, "damp must be in (0, 1], got ", damp);
  GPTQFactor f;
  f.K = K;
  f.dead.assign(K, 0);
  std::vector<double> diag(K);
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = i; j < K; ++j) {
      const double a = H[i * ld + j], b = H[j * ld + i];
      require(std::isfinite(a), "the Hessian has a non-finite entry at (", i, ", ", j, ")");
      require(a == b, "the Hessian is not symmetric at (", i, ", ", j, "): ", a, " vs ", b);
    }
    require(H[i * ld + i] >= 0.0, "the Hessian has a negative diagonal entry at ", i, ": not a Gram matrix");
    f.dead[i] = H[i * ld + i] == 0.0;
    diag[i] = f.dead[i] ? 1.0 : H[i * ld + i];
  }
  f.perm.resize(K);
  std::iota(f.perm.begin(), f.perm.end(), int64_t{0});
  if (act_order)
    std::stable_sort(f.perm.begin(), f.perm.end(), [&](int64_t a, int64_t b) { return diag[a] > diag[b]; });
  double mean = 0.0;
  for (double d : diag) mean += d;
  mean /= static_cast<double>(K);

  // The reversed, permuted Hessian R = J P^T H P J: if R = M M^T (lower M), then
  // (P^T H P)^-1 = U^T U with U = J M^-1 J upper triangular, the factor GPTQ needs, at the
  // cost of one Cholesky and one triangular inverse (no explicit inverse, no second Cholesky).
  RowMatrix R(K, K);
  for (int64_t a = 0; a < K; ++a) {
    const int64_t i = f.perm[K - 1 - a];
    for (int64_t b = 0; b < K; ++b) {
      const int64_t j = f.perm[K - 1 - b];
      R(a, b) = (f.dead[i] || f.dead[j]) ? 0.0 : H[i * ld + j];
    }
    R(a, a) = diag[i];
  }
  for (double d = damp;; d = std::min(1.0, 2.0 * d)) {
    RowMatrix Rd = R;
    Rd.diagonal().array() += d * mean;
    Eigen::LLT<RowMatrix> llt(Rd);
    if (llt.info() == Eigen::Success) {
      f.damp = d;
      // M^-1 column block by column block: columns [c0, c1) are zero above row c0, so each
      // block solves only M[c0:, c0:] X = I[c0:, c0:c1]. Blocks are fixed (not per thread),
      // and independent, so threads share them without changing a bit.
      const Eigen::MatrixXd M = llt.matrixL();  // column-major: the solves read columns
      f.U.assign(static_cast<size_t>(K * K), 0.0);
      const int64_t n_blocks = (K + kInverseColumns - 1) / kInverseColumns;
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < n_blocks; ++blk) {
        const int64_t c0 = blk * kInverseColumns, w = std::min(kInverseColumns, K - c0), h = K - c0;
        Eigen::MatrixXd X = Eigen::MatrixXd::Identity(h, w);
        M.bottomRightCorner(h, h).triangularView<Eigen::Lower>().solveInPlace(X);
        // U = J M^-1 J: U(K-1-a, K-1-b) = Minv(a, b) for a >= b.
        for (int64_t b = 0; b < w; ++b)
          for (int64_t a = b; a < h; ++a) f.U[(K - 1 - (c0 + a)) * K + (K - 1 - (c0 + b))] = X(a, b);
      }
      return f;
    }
    require(d < 1.0, "the Hessian stays singular with dampening 1.0 (H + mean(diag H) I is not positive "
                     "definite): the calibration activations are degenerate");
  }
}

GPTQOutput gptq_quantize(const MatrixView& w, const GPTQFactor& f, const GPTQSpec& spec,
                         const float* fixed_scales, const uint8_t* fixed_zeros) {
  const QuantSpec& q = spec.quant;
  require(q.rule == GroupRule::awq, "GPTQ rounds with the awq rule (AWQ gemm, compressed-tensors); "
                                    "GGUF block types are not supported by GPTQ");
  const int64_t N = w.rows, K = w.cols, gs = q.group_size, G = K / gs;
  require(K == f.K, "the weight has K = ", K, " inputs but the Hessian factor ", f.K);
  require(spec.block_size >= 1, "block_size must be positive, got ", spec.block_size);
  require((fixed_scales == nullptr) == (fixed_zeros == nullptr), "give both scales and zeros, or neither");
  bool identity = true;
  for (int64_t i = 0; i < K; ++i) identity = identity && f.perm[i] == i;
  const bool fixed = fixed_scales != nullptr;
  const bool static_params = fixed || spec.static_groups || !identity;
  const float qmax = static_cast<float>(q.qmax());
  if (fixed) {
    for (int64_t i = 0; i < N * G; ++i) {
      require(std::isfinite(fixed_scales[i]) && fixed_scales[i] > 0.0f, "scales must be finite and positive (row ",
              i / G, ", group ", i % G, ": ", fixed_scales[i], ")");
      require(fixed_zeros[i] <= q.qmax(), "zeros must be at most ", q.qmax(), " (row ", i / G, ", group ", i % G,
              ": ", int(fixed_zeros[i]), ")");
    }
  }
  const int64_t B = gptq_block_columns(spec.block_size, gs);
  GPTQOutput out;
  out.codes.assign(static_cast<size_t>(N * K), 0);
  out.scales.assign(static_cast<size_t>(N * G), 0.0f);
  out.zeros.assign(static_cast<size_t>(N * G), 0);
  out.loss.assign(static_cast<size_t>(N), 0.0);
  Eigen::Map<const RowMatrix> U(f.U.data(), K, K);
  const int64_t n_chunks = (N + kRowChunk - 1) / kRowChunk;
  // Errors cannot leave the parallel region: the first bad row is recorded and reported after.
  std::atomic<int64_t> bad_row{N};
  std::atomic<int> bad_kind{0};  // 1: non-finite weight, 2: scale overflow
  // Records a failure of `row` (the lowest row wins, as a serial loop would report); returns false.
  auto flag = [&](int64_t row, int kind) {
    int64_t cur = bad_row.load();
    while (row < cur && !bad_row.compare_exchange_weak(cur, row)) {}
    if (bad_row.load() == row) bad_kind = kind;  // the kind of the row reported
    return false;
  };
  auto weight = [&](int64_t row, int64_t j) -> double {
    return w.type == FloatType::f32 ? static_cast<const float*>(w.data)[row * w.ld + j]
                                    : half_to_float(static_cast<const uint16_t*>(w.data)[row * w.ld + j]);
  };
#pragma omp parallel
  {
    RowMatrix Wc, E;
    std::vector<GroupParams> par;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t r0 = c * kRowChunk, R = std::min(kRowChunk, N - r0);
      Wc.resize(R, K);
      E.resize(R, B);
      par.assign(static_cast<size_t>(R * G), GroupParams{1.0f, 0.0f});
      bool ok = true;
      for (int64_t r = 0; r < R && ok; ++r) {
        const int64_t row = r0 + r;
        for (int64_t i = 0; i < K; ++i) {
          const int64_t j = f.perm[i];
          const double v = weight(row, j);
          if (!std::isfinite(v)) {
            ok = flag(row, 1);
            break;
          }
          Wc(r, i) = f.dead[j] ? 0.0 : v;
        }
        if (!ok) break;
        if (static_params) {
          for (int64_t g = 0; g < G; ++g) {
            GroupParams& p = par[r * G + g];
            if (fixed) {
              p = GroupParams{fixed_scales[row * G + g], static_cast<float>(fixed_zeros[row * G + g])};
              continue;
            }
            // The group's original values (original column order), dead columns as zero.
            double lo = 0.0, hi = 0.0;
            bool first = true;
            for (int64_t j = g * gs; j < (g + 1) * gs; ++j) {
              const double v = f.dead[j] ? 0.0 : weight(row, j);
              lo = first ? v : std::min(lo, v);
              hi = first ? v : std::max(hi, v);
              first = false;
            }
            p = group_params(static_cast<float>(lo), static_cast<float>(hi), q);
            if (!std::isfinite(p.scale)) {
              ok = flag(row, 2);
              break;
            }
          }
          if (!ok) break;
        }
      }
      if (!ok) continue;
      for (int64_t b0 = 0; b0 < K && ok; b0 += B) {
        const int64_t b1 = std::min(K, b0 + B), nb = b1 - b0;
        for (int64_t r = 0; r < R && ok; ++r) {
          const int64_t row = r0 + r;
          double* wr = &Wc(r, 0);
          for (int64_t i = b0; i < b1; ++i) {
            const int64_t j = f.perm[i], g = j / gs;
            GroupParams& p = par[r * G + g];
            if (!static_params && i % gs == 0) {
              // The group lies inside this block (gptq_block_columns): its columns hold every
              // update so far.
              p = params_of(wr + i, gs, q);
              if (!std::isfinite(p.scale)) {
                ok = flag(row, 2);
                break;
              }
            }
            const double s = p.scale, z = p.zero;
            const double code = std::fmin(std::fmax(std::nearbyint(wr[i] / s) + z, 0.0), static_cast<double>(qmax));
            const double dq = (code - z) * s;
            const double d = U(i, i);
            const double err = (wr[i] - dq) / d;
            out.loss[row] += (wr[i] - dq) * (wr[i] - dq) / (2.0 * d * d);
            out.codes[row * K + j] = static_cast<uint8_t>(code);
            const double* u = f.U.data() + i * K;
            for (int64_t t = i + 1; t < b1; ++t) wr[t] -= err * u[t];
            E(r, i - b0) = err;
          }
        }
        if (ok && b1 < K)
          Wc.rightCols(K - b1).noalias() -= E.leftCols(nb) * U.block(b0, b1, nb, K - b1);
      }
      if (!ok) continue;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t g = 0; g < G; ++g) {
          out.scales[(r0 + r) * G + g] = par[r * G + g].scale;
          out.zeros[(r0 + r) * G + g] = static_cast<uint8_t>(par[r * G + g].zero);
        }
    }
  }
  if (bad_row.load() < N) {
    if (bad_kind.load() == 1) fail_with("w contains NaN or Inf (row ", bad_row.load(), ")");
    fail(scale_overflow_message("w", bad_row.load(), q.fp16_scale) +
         " (after GPTQ's updates of the earlier columns)");
  }
  return out;
}

}  // namespace awqkit

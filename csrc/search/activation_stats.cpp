#include "search/activation_stats.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <sstream>
#include <string>

#include "common/errors.h"
#include "common/half.h"
#include "search/gram.h"
#include "search/tile_kernels.h"

namespace awqkit {

namespace {
constexpr int64_t kChunkTokens = 256;  // float partial sums over at most this many tokens
}

void load_token_chunk(const MatrixView& x, int64_t t0, int64_t T, int64_t stride, int64_t c0,
                      int64_t width, int64_t Kp, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const int64_t src = t0 + t * stride;
    float* o = out + t * Kp;
    if (x.type == FloatType::f32) {
      const float* row = static_cast<const float*>(x.data) + src * x.ld + c0;
      std::copy(row, row + width, o);
    } else {
      const uint16_t* row = static_cast<const uint16_t*>(x.data) + src * x.ld + c0;
      for (int64_t k = 0; k < width; ++k) o[k] = half_to_float(row[k]);
    }
    std::fill(o + width, o + Kp, 0.0f);
  }
}

double gram_activation_limit() { return std::sqrt(static_cast<double>(FLT_MAX) / 1024.0); }

void require_finite_activations(const MatrixView& x, double max_abs_limit) {
  const bool limited = max_abs_limit >= 0.0;
  std::atomic<int64_t> bad{x.rows}, too_large{x.rows};
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < x.rows; ++t) {
    bool ok = true;
    float amax = 0.0f;
    if (x.type == FloatType::f32) {
      const float* row = static_cast<const float*>(x.data) + t * x.ld;
      for (int64_t k = 0; k < x.cols; ++k) {
        ok &= std::isfinite(row[k]);
        amax = std::fmax(amax, std::fabs(row[k]));
      }
    } else {
      const uint16_t* row = static_cast<const uint16_t*>(x.data) + t * x.ld;
      for (int64_t k = 0; k < x.cols; ++k) ok &= (row[k] & 0x7c00u) != 0x7c00u;  // float16 stays below the limit
    }
    if (!ok) {
      int64_t cur = bad.load();
      while (t < cur && !bad.compare_exchange_weak(cur, t)) {}
    } else if (limited && static_cast<double>(amax) > max_abs_limit) {
      int64_t cur = too_large.load();
      while (t < cur && !too_large.compare_exchange_weak(cur, t)) {}
    }
  }
  if (bad.load() < x.rows)
    fail("activations contain NaN or Inf (first in token " + std::to_string(bad.load()) + ")");
  if (too_large.load() < x.rows) {
    const int64_t t = too_large.load();
    const float* row = static_cast<const float*>(x.data) + t * x.ld;
    float amax = 0.0f;
    for (int64_t k = 0; k < x.cols; ++k) amax = std::fmax(amax, std::fabs(row[k]));
    std::ostringstream os;
    os << "activations up to " << amax << " (first in token " << t
       << ") exceed the float32 range of the search's Gram matrix: X^T X is summed in float32 over "
          "chunks of up to 1024 tokens, so |x| must stay below "
       << max_abs_limit
       << "; scale the activations down (the losses all scale by the same factor, so the search's "
          "choice does not change)";
    fail(os.str());
  }
}

ActivationStats::ActivationStats(int64_t in_features, bool with_gram)
    : K_(in_features), Kp_(gram_padded_width(in_features)), with_gram_(with_gram) {
  require(in_features > 0, "in_features must be positive, got " + std::to_string(in_features));
  sum_abs_.assign(K_, 0.0);
  sum_sq_.assign(K_, 0.0);
  max_abs_.assign(K_, 0.0);
  if (with_gram_) gram_.assign(static_cast<size_t>(Kp_ * Kp_), 0.0);
}

namespace {

// Copies columns [c0, c0+width) of token rows [t0, t0+T) of x into a k-major panel of
// `width` floats per token (zero beyond K).
void pack_panel(const MatrixView& x, int64_t t0, int64_t T, int64_t c0, int64_t width, float* out) {
  const int64_t n = std::max<int64_t>(0, std::min(width, x.cols - c0));
  for (int64_t t = 0; t < T; ++t) {
    float* o = out + t * width;
    if (x.type == FloatType::f32) {
      const float* row = static_cast<const float*>(x.data) + (t0 + t) * x.ld + c0;
      for (int64_t k = 0; k < n; ++k) o[k] = row[k];
    } else {
      const uint16_t* row = static_cast<const uint16_t*>(x.data) + (t0 + t) * x.ld + c0;
      for (int64_t k = 0; k < n; ++k) o[k] = half_to_float(row[k]);
    }
    for (int64_t k = n; k < width; ++k) o[k] = 0.0f;
  }
}

}  // namespace

void ActivationStats::update(const MatrixView& x) {
  std::lock_guard<std::mutex> lock(mutex_);
  require(x.cols == K_, "activations have " + std::to_string(x.cols) +
                            " features but these statistics are for in_features = " +
                            std::to_string(K_));
  if (x.rows == 0) return;
  require_finite_activations(x, with_gram_ ? gram_activation_limit() : -1.0);
  if (bounded_) require_within_bounds(x);
  // Bounded accumulation: each channel's grid (see set_bounds). Padding channels (K..Kp) are
  // zero: any power of two serves them.
  std::vector<double> abs_down, abs_up, sq_down, sq_up, gdown, gup;
  double gram_pre = 1.0, gram_post = 1.0;
  if (bounded_) {
    abs_down.resize(K_), abs_up.resize(K_), sq_down.resize(K_), sq_up.resize(K_);
    gdown.assign(Kp_, 1.0), gup.assign(Kp_, 1.0);
    for (int64_t k = 0; k < K_; ++k) {
      abs_down[k] = std::ldexp(down_[k], 52 - tokens_exp_);
      abs_up[k] = std::ldexp(up_[k], tokens_exp_ - 52);
      sq_down[k] = std::ldexp(down_[k] * down_[k], 52 - tokens_exp_);
      sq_up[k] = std::ldexp(up_[k] * up_[k], tokens_exp_ - 52);
      gdown[k] = down_[k], gup[k] = up_[k];
    }
    gram_pre = std::ldexp(1.0, 51 - tokens_exp_), gram_post = std::ldexp(1.0, tokens_exp_ - 51);
  }
  // Tokens are processed in super-chunks of kSubChunks x kChunkTokens: one parallel region
  // (two barriers) per super-chunk, so a busy machine that deschedules a thread costs
  // little. A tile is computed per sub-chunk (its panels stay in L1/L2), summed in float
  // over the super-chunk (<= 1024 tokens) and added once to the double accumulator.
  constexpr int64_t kSubChunks = 4;
  constexpr int64_t kTilesPerBlock = 4;  // column tiles whose B panels (4 x 256 x 128 floats) stay in L2
  const int64_t n_col_blocks = (K_ + 63) / 64, nIB = Kp_ / kTileRows, NJ = Kp_ / kTileCols;
  std::vector<float> a_panels, b_panels;
  if (with_gram_) {
    a_panels.resize(static_cast<size_t>(kSubChunks * nIB * kChunkTokens * kTileRows));
    b_panels.resize(static_cast<size_t>(kSubChunks * NJ * kChunkTokens * kTileCols));
  }
  for (int64_t t0 = 0; t0 < x.rows; t0 += kSubChunks * kChunkTokens) {
    const int64_t T_all = std::min(kSubChunks * kChunkTokens, x.rows - t0);
    const int64_t n_sub = (T_all + kChunkTokens - 1) / kChunkTokens;
    auto sub_tokens = [&](int64_t sub) { return std::min(kChunkTokens, T_all - sub * kChunkTokens); };
#pragma omp parallel
    {
      // Per-channel sums: each thread owns a range of channels, tokens in order.
#pragma omp for schedule(static) nowait
      for (int64_t cb = 0; cb < n_col_blocks; ++cb) {
        const int64_t k0 = cb * 64, k_end = std::min(K_, k0 + 64);
        float buf[64];
        for (int64_t t = 0; t < T_all; ++t) {
          pack_panel(x, t0 + t, 1, k0, k_end - k0, buf);
          for (int64_t k = k0; k < k_end; ++k) {
            const double v = buf[k - k0], a = std::fabs(v);
            if (bounded_) {  // |x| and x^2 are exact in double; rounded to the channel's grid
              sum_abs_[k] += on_grid(a, abs_down[k], abs_up[k]);
              sum_sq_[k] += on_grid(v * v, sq_down[k], sq_up[k]);
            } else {
              sum_abs_[k] += a;
              sum_sq_[k] += v * v;
            }
            if (a > max_abs_[k]) max_abs_[k] = a;
          }
        }
      }
      if (with_gram_) {
        const int64_t n_panels = nIB + NJ;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < n_sub * n_panels; ++p) {
          const int64_t sub = p / n_panels, q = p % n_panels, ts = t0 + sub * kChunkTokens;
          if (q < nIB)
            pack_panel(x, ts, sub_tokens(sub), q * kTileRows, kTileRows,
                       a_panels.data() + (sub * nIB + q) * kChunkTokens * kTileRows);
          else
            pack_panel(x, ts, sub_tokens(sub), (q - nIB) * kTileCols, kTileCols,
                       b_panels.data() + (sub * NJ + q - nIB) * kChunkTokens * kTileCols);
        }
        // Row block ib belongs to thread ib % nthreads (round robin balances the triangle):
        // every output tile has one owner, so no shared writes and no barrier inside, and
        // each entry adds its sub-chunks in the same order whatever the thread count.
        const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
        const GemmTileFn tile = gemm_tile_kernel();
        float C[kTileRows * kTileCols], Csum[kTileRows * kTileCols];
        for (int64_t J0 = 0; J0 < NJ; J0 += kTilesPerBlock) {
          const int64_t J1 = std::min(NJ, J0 + kTilesPerBlock);
          const int64_t ib_end = std::min(nIB, (J1 * kTileCols + kTileRows - 1) / kTileRows);
          for (int64_t ib = tid; ib < ib_end; ib += nth) {
            const int64_t i0 = ib * kTileRows;
            for (int64_t J = std::max(J0, i0 / kTileCols); J < J1; ++J) {
              // Float sum over the sub-chunks (<= 1024 tokens), then one double update:
              // the K x K accumulator is read and written once per super-chunk.
              for (int64_t sub = 0; sub < n_sub; ++sub) {
                tile(a_panels.data() + (sub * nIB + ib) * kChunkTokens * kTileRows, kTileRows,
                     b_panels.data() + (sub * NJ + J) * kChunkTokens * kTileCols, kTileCols, sub_tokens(sub),
                     sub == 0 ? Csum : C);
                if (sub > 0)
                  for (int64_t i = 0; i < kTileRows * kTileCols; ++i) Csum[i] += C[i];
              }
              for (int64_t r = 0; r < kTileRows; ++r) {
                double* d = gram_.data() + (i0 + r) * Kp_ + J * kTileCols;
                const float* c = Csum + r * kTileCols;
                if (bounded_) {
                  // Entry (i, j) on the grid 2^(e_i + e_j + tokens_exp + 1 - 52): its float
                  // partials sum to at most (1 + 2^-14) n max_i max_j < 2^(e_i + e_j + tokens_exp + 1).
                  const double rd = gdown[i0 + r] * gram_pre, ru = gup[i0 + r] * gram_post;
                  const double* cd = gdown.data() + J * kTileCols;
                  const double* cu = gup.data() + J * kTileCols;
                  for (int64_t j = 0; j < kTileCols; ++j)
                    d[j] += std::nearbyint(static_cast<double>(c[j]) * rd * cd[j]) * ru * cu[j];
                } else {
                  for (int64_t j = 0; j < kTileCols; ++j) d[j] += static_cast<double>(c[j]);
                }
              }
            }
          }
        }
      }
    }
  }
  n_ += x.rows;
}

void ActivationStats::set_bounds(const double* max_abs, int64_t max_tokens) {
  require(max_tokens > 0, "max_tokens must be positive, got ", max_tokens);
  std::vector<double> bound(max_abs, max_abs + K_), down(K_), up(K_);
  for (int64_t k = 0; k < K_; ++k) {
    require(std::isfinite(bound[k]) && bound[k] >= 0.0, "max_abs[", k, "] = ", bound[k],
            ": bounds must be finite and >= 0");
    require(!with_gram_ || bound[k] <= gram_activation_limit(), "max_abs[", k, "] = ", bound[k],
            " exceeds the float32 range of the Gram matrix (", gram_activation_limit(), ")");
    int e = 0;
    std::frexp(bound[k], &e);  // bound < 2^e (e = 0 for a zero bound: the channel is all zeros)
    down[k] = std::ldexp(1.0, -e), up[k] = std::ldexp(1.0, e);
  }
  int tokens_exp = 0;
  std::frexp(static_cast<double>(max_tokens), &tokens_exp);
  std::lock_guard<std::mutex> lock(mutex_);
  require(n_ == 0, "set_bounds needs empty statistics (", n_, " tokens are in already)");
  bounded_ = true;
  max_tokens_ = max_tokens, tokens_exp_ = tokens_exp;
  bound_ = std::move(bound), down_ = std::move(down), up_ = std::move(up);
}

void ActivationStats::require_within_bounds(const MatrixView& x) const {
  require(n_ + x.rows <= max_tokens_, "these bounded statistics take at most ", max_tokens_, " tokens; ", n_,
          " are in and the update brings ", x.rows);
  std::atomic<int64_t> first{x.rows};
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < x.rows; ++t) {
    bool ok = true;
    for (int64_t k = 0; k < x.cols; ++k) {
      const double v = x.type == FloatType::f32 ? static_cast<const float*>(x.data)[t * x.ld + k]
                                                : half_to_float(static_cast<const uint16_t*>(x.data)[t * x.ld + k]);
      ok &= std::fabs(v) <= bound_[k];
    }
    if (!ok) {
      int64_t cur = first.load();
      while (t < cur && !first.compare_exchange_weak(cur, t)) {}
    }
  }
  const int64_t t = first.load();
  if (t < x.rows)
    for (int64_t k = 0; k < x.cols; ++k) {
      const double v = x.type == FloatType::f32 ? static_cast<const float*>(x.data)[t * x.ld + k]
                                                : half_to_float(static_cast<const uint16_t*>(x.data)[t * x.ld + k]);
      require(std::fabs(v) <= bound_[k], "token ", t, " has |x[", k, "]| = ", std::fabs(v),
              " above the statistics' bound max_abs[", k, "] = ", bound_[k]);
    }
}

void ActivationStats::merge(const ActivationStats& other) {
  // Both locks at once (std::scoped_lock avoids the deadlock of a.merge(b) racing b.merge(a));
  // merging an object into itself takes its one lock once and doubles it.
  std::unique_lock<std::mutex> own(mutex_, std::defer_lock), theirs(other.mutex_, std::defer_lock);
  if (&other == this)
    own.lock();
  else
    std::lock(own, theirs);
  require(other.K_ == K_, "cannot merge statistics of " + std::to_string(other.K_) +
                              " features into statistics of " + std::to_string(K_));
  require(other.with_gram_ == with_gram_ || !with_gram_,
          "cannot merge: this accumulator has a Gram matrix and the other does not");
  require(bounded_ == other.bounded_ && (!bounded_ || (bound_ == other.bound_ && max_tokens_ == other.max_tokens_)),
          "cannot merge: bounded statistics merge only with statistics of the same bounds (set_bounds)");
  require(!bounded_ || n_ + other.n_ <= max_tokens_, "cannot merge: ", n_ + other.n_,
          " tokens in all exceed the bounds' max_tokens = ", max_tokens_);
  require(!bounded_ || !with_gram_ || other.with_gram_,
          "cannot merge: bounded statistics with a Gram matrix need the other's Gram matrix");
  for (int64_t k = 0; k < K_; ++k) {
    sum_abs_[k] += other.sum_abs_[k];
    sum_sq_[k] += other.sum_sq_[k];
    max_abs_[k] = std::max(max_abs_[k], other.max_abs_[k]);
  }
  if (with_gram_)
    for (size_t i = 0; i < gram_.size(); ++i) gram_[i] += other.gram_[i];
  n_ += other.n_;
}

namespace {

// The first entry of v (K values) that is not finite or is negative, or -1.
int64_t first_invalid(const double* v, int64_t K) {
  for (int64_t k = 0; k < K; ++k)
    if (!(std::isfinite(v[k]) && v[k] >= 0.0)) return k;
  return -1;
}

}  // namespace

void ActivationStats::set_state(int64_t n, const double* sa, const double* ss, const double* ma,
                                const double* G) {
  // Everything is checked before anything changes: a bad state leaves these statistics as they were.
  require(n >= 0, "invalid ActivationStats state: the token count is ", n, ", it must be >= 0");
  require(!with_gram_ || G != nullptr, "invalid ActivationStats state: it lacks the Gram matrix");
  require(with_gram_ || G == nullptr,
          "invalid ActivationStats state: it has a Gram matrix but the statistics were made without one");
  const char* names[3] = {"sum_abs", "sum_sq", "max_abs"};
  const double* sums[3] = {sa, ss, ma};
  for (int i = 0; i < 3; ++i) {
    const int64_t k = first_invalid(sums[i], K_);
    require(k < 0, "invalid ActivationStats state: ", names[i], "[", k, "] = ", k < 0 ? 0.0 : sums[i][k],
            ", every entry must be finite and >= 0");
    if (n == 0)
      for (int64_t j = 0; j < K_; ++j)
        require(sums[i][j] == 0.0, "invalid ActivationStats state: no tokens but ", names[i], "[", j, "] = ",
                sums[i][j]);
  }
  if (with_gram_)
    for (int64_t i = 0; i < K_; ++i) {
      require(std::isfinite(G[i * K_ + i]) && G[i * K_ + i] >= 0.0, "invalid ActivationStats state: gram[", i,
              ", ", i, "] = ", G[i * K_ + i], ", the diagonal of X^T X must be finite and >= 0");
      for (int64_t j = i + 1; j < K_; ++j) {
        require(std::isfinite(G[i * K_ + j]), "invalid ActivationStats state: gram[", i, ", ", j, "] = ",
                G[i * K_ + j], ", it must be finite");
        require(G[i * K_ + j] == G[j * K_ + i], "invalid ActivationStats state: the Gram matrix is not symmetric (gram[",
                i, ", ", j, "] = ", G[i * K_ + j], ", gram[", j, ", ", i, "] = ", G[j * K_ + i], ")");
      }
      if (n == 0) require(G[i * K_ + i] == 0.0, "invalid ActivationStats state: no tokens but gram[", i, ", ", i,
                          "] = ", G[i * K_ + i]);
    }
  std::lock_guard<std::mutex> lock(mutex_);
  if (bounded_) {
    // Only values bounded updates can produce: within the bounds, on the grid.
    require(n <= max_tokens_, "invalid ActivationStats state: ", n, " tokens exceed the bounds' max_tokens = ",
            max_tokens_);
    auto on = [](double v, double down) { const double u = v * down; return u == std::nearbyint(u) && std::fabs(u) < 0x1p52; };
    for (int64_t k = 0; k < K_; ++k) {
      require(ma[k] <= bound_[k], "invalid ActivationStats state: max_abs[", k, "] = ", ma[k], " exceeds its bound ",
              bound_[k]);
      require(on(sa[k], std::ldexp(down_[k], 52 - tokens_exp_)) && on(ss[k], std::ldexp(down_[k] * down_[k], 52 - tokens_exp_)),
              "invalid ActivationStats state: sum_abs[", k, "] or sum_sq[", k, "] is not on the grid of the bounds");
    }
    if (with_gram_)
      for (int64_t i = 0; i < K_; ++i)
        for (int64_t j = i; j < K_; ++j)
          require(on(G[i * K_ + j], std::ldexp(down_[i] * down_[j], 51 - tokens_exp_)),
                  "invalid ActivationStats state: gram[", i, ", ", j, "] is not on the grid of the bounds");
  }
  std::copy(sa, sa + K_, sum_abs_.begin());
  std::copy(ss, ss + K_, sum_sq_.begin());
  std::copy(ma, ma + K_, max_abs_.begin());
  if (with_gram_)
    for (int64_t i = 0; i < K_; ++i)
      for (int64_t j = i; j < K_; ++j) gram_[i * Kp_ + j] = G[i * K_ + j];
  n_ = n;
}

void ActivationStats::state(int64_t* n, double* sa, double* ss, double* ma, double* G) const {
  std::lock_guard<std::mutex> lock(mutex_);
  *n = n_;
  std::copy(sum_abs_.begin(), sum_abs_.end(), sa);
  std::copy(sum_sq_.begin(), sum_sq_.end(), ss);
  std::copy(max_abs_.begin(), max_abs_.end(), ma);
  if (with_gram_) gram_unlocked(G);
}

int64_t ActivationStats::n_tokens() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return n_;
}

std::vector<double> ActivationStats::sum_abs() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sum_abs_;
}

std::vector<double> ActivationStats::sum_sq() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sum_sq_;
}

std::vector<double> ActivationStats::max_abs() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return max_abs_;
}

void ActivationStats::gram(double* out) const {
  require(with_gram_, "these statistics were collected without the Gram matrix; "
                      "create them with ActivationStats(in_features, gram=True)");
  std::lock_guard<std::mutex> lock(mutex_);
  gram_unlocked(out);
}

void ActivationStats::gram_unlocked(double* out) const {
  for (int64_t i = 0; i < K_; ++i)
    for (int64_t j = 0; j < K_; ++j)
      out[i * K_ + j] = j >= i ? gram_[i * Kp_ + j] : gram_[j * Kp_ + i];
}

GramPanels ActivationStats::gram_panels(int64_t* n_tokens) const {
  require(with_gram_, "the search needs the Gram matrix: collect the statistics with "
                      "ActivationStats(in_features, gram=True)");
  std::lock_guard<std::mutex> lock(mutex_);
  require_gram_in_search_range(gram_.data(), K_, Kp_);
  *n_tokens = n_;
  return build_gram_panels(gram_.data(), K_, Kp_, /*with_amx=*/true);
}

std::vector<double> ActivationStats::gram_group_blocks(int64_t gs) const {
  require(with_gram_, "the exact clip search needs the Gram matrix: collect the statistics with "
                      "ActivationStats(in_features, gram=True)");
  require(gs > 0 && K_ % gs == 0, "group_size must divide in_features");
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t G = K_ / gs;
  std::vector<double> out(static_cast<size_t>(G * gs * gs));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i = 0; i < gs; ++i)
      for (int64_t j = 0; j < gs; ++j) {
        const int64_t a = g * gs + std::min(i, j), b = g * gs + std::max(i, j);
        out[(g * gs + i) * gs + j] = gram_[a * Kp_ + b];
      }
  return out;
}

}  // namespace awqkit

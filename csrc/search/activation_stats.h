// Streaming per-channel statistics of a Linear's input activations (calibration).
//
// update() takes batches of [tokens, K] float32/float16 activations; everything is
// accumulated in double: token count, sum |x|, sum x^2, max |x| and, optionally, the
// Gram matrix X^T X that turns the AWQ loss of every candidate into a quadratic form.
// merge() adds another accumulator (parallel or distributed calibration).
//
// One object may be shared by threads (Python threads calling update() with the GIL
// released): every member function takes the object's mutex, so updates serialise and none
// is lost.
#pragma once
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "quant/quantize.h"
#include "search/gram.h"

namespace awqkit {

class ActivationStats {
 public:
  ActivationStats(int64_t in_features, bool with_gram);

  // x: [tokens, K]. Throws (and leaves the statistics untouched) on a width mismatch, a
  // non-finite value or, with a Gram matrix, a value beyond gram_activation_limit().
  void update(const MatrixView& x);
  // Adds other (which may be this object itself).
  void merge(const ActivationStats& other);
  // Order-independent sums: given bounds that every later update respects (|x_k| <=
  // max_abs[k], at most max_tokens tokens in all), every addend is rounded to a power-of-two
  // grid fine enough for the bounds (about 2^-52 of the largest sum the bounds allow) and
  // coarse enough that every float64 partial sum is an exact multiple of it. Additions are
  // then exact, so updates split anywhere (at the same token chunks) and merges in any
  // order or grouping, across threads, processes or machines, give the same bits. Only
  // before the first update; an update or merge beyond the bounds throws.
  void set_bounds(const double* max_abs, int64_t max_tokens);
  bool bounded() const { return bounded_; }
  int64_t max_tokens() const { return max_tokens_; }
  std::vector<double> bound_max_abs() const { return bound_; }
  // Replaces the state (for unpickling): n tokens, the three [K] sums and, with a Gram
  // matrix, G ([K, K]). Throws, changing nothing, unless the state is one update() could
  // have produced in kind: n >= 0, every value finite, sums and maxima >= 0, G exactly
  // symmetric with a non-negative diagonal, G given exactly when these statistics keep one.
  void set_state(int64_t n, const double* sum_abs, const double* sum_sq, const double* max_abs,
                 const double* G);
  // The whole state at one instant (out arrays of K, K, K and, with a Gram matrix, K*K doubles).
  void state(int64_t* n, double* sum_abs, double* sum_sq, double* max_abs, double* G) const;

  int64_t in_features() const { return K_; }
  bool has_gram() const { return with_gram_; }
  int64_t n_tokens() const;
  std::vector<double> sum_abs() const;
  std::vector<double> sum_sq() const;
  std::vector<double> max_abs() const;
  // Full symmetric X^T X, [K, K] row-major, written into out (K*K doubles).
  void gram(double* out) const;
  // The Gram matrix packed for quadratic forms (see gram.h), and the token count it holds.
  // Throws if it is beyond the float32 range of the search (require_gram_in_search_range).
  GramPanels gram_panels(int64_t* n_tokens) const;
  // Diagonal blocks [K/gs, gs, gs] of the Gram matrix (the exact per-group clip objective).
  std::vector<double> gram_group_blocks(int64_t group_size) const;

 private:
  void gram_unlocked(double* out) const;
  void require_within_bounds(const MatrixView& x) const;
  // The value of a float partial sum in the grid of the bounds: exact multiples of
  // 2^(grid exponent); `down` is 2^-(exponent), `up` 2^(exponent) (products of powers of two).
  static double on_grid(double v, double down, double up) { return std::nearbyint(v * down) * up; }

  mutable std::mutex mutex_;
  const int64_t K_, Kp_;
  const bool with_gram_;
  int64_t n_ = 0;
  std::vector<double> sum_abs_, sum_sq_, max_abs_;
  std::vector<double> gram_;  // [Kp, Kp], upper triangle meaningful
  // Bounded (order-independent) accumulation: channel k's bound is below 2^e_k; down_[k] =
  // 2^-e_k, up_[k] = 2^e_k; the token bound is below 2^tokens_exp_.
  bool bounded_ = false;
  int64_t max_tokens_ = 0;
  int tokens_exp_ = 0;
  std::vector<double> bound_, down_, up_;
};

// Copies tokens [t0, t0+T) of x (every `stride`-th token from t0 when stride > 1) into a
// float [T, Kp] buffer, columns [c0, c0+width) only, zero-padded to Kp.
void load_token_chunk(const MatrixView& x, int64_t t0, int64_t T, int64_t stride, int64_t c0,
                      int64_t width, int64_t Kp, float* out);

// Largest |x| a Gram matrix accepts: its partial sums over chunks of up to 1024 tokens are
// float32, and 1024 products of this magnitude stay below FLT_MAX.
double gram_activation_limit();

// Throws "activations contain NaN or Inf" naming the first bad token; with a finite
// max_abs_limit also when a value's magnitude exceeds it (the Gram's float32 range).
void require_finite_activations(const MatrixView& x, double max_abs_limit = -1.0);

}  // namespace awqkit

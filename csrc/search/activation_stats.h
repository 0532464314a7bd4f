// Streaming per-channel statistics of a Linear's input activations (calibration).
//
// update() takes batches of [tokens, K] float32/float16 activations; everything is
// accumulated in double: token count, sum |x|, sum x^2, max |x| and, optionally, the
// Gram matrix X^T X that turns the AWQ loss of every candidate into a quadratic form.
// merge() adds another accumulator (parallel or distributed calibration).
#pragma once
#include <cstdint>
#include <vector>

#include "quant/quantize.h"
#include "search/gram.h"

namespace awqkit {

class ActivationStats {
 public:
  ActivationStats(int64_t in_features, bool with_gram);

  // x: [tokens, K]. Throws (and leaves the statistics untouched) on a width mismatch or
  // a non-finite value.
  void update(const MatrixView& x);
  void merge(const ActivationStats& other);
  // Replaces the state (for unpickling): n tokens, the three [K] sums and, with a Gram
  // matrix, G ([K, K] symmetric, only j >= i read).
  void set_state(int64_t n, const double* sum_abs, const double* sum_sq, const double* max_abs,
                 const double* G);

  int64_t in_features() const { return K_; }
  bool has_gram() const { return with_gram_; }
  int64_t n_tokens() const { return n_; }
  const std::vector<double>& sum_abs() const { return sum_abs_; }
  const std::vector<double>& sum_sq() const { return sum_sq_; }
  const std::vector<double>& max_abs() const { return max_abs_; }
  // Full symmetric X^T X, [K, K] row-major, written into out (K*K doubles).
  void gram(double* out) const;
  // The Gram matrix packed for quadratic forms (see gram.h).
  GramPanels gram_panels() const;
  // Diagonal blocks [K/gs, gs, gs] of the Gram matrix (the exact per-group clip objective).
  std::vector<double> gram_group_blocks(int64_t group_size) const;

 private:
  int64_t K_, Kp_;
  bool with_gram_;
  int64_t n_ = 0;
  std::vector<double> sum_abs_, sum_sq_, max_abs_;
  std::vector<double> gram_;  // [Kp, Kp], upper triangle meaningful
};

// Copies tokens [t0, t0+T) of x (every `stride`-th token from t0 when stride > 1) into a
// float [T, Kp] buffer, columns [c0, c0+width) only, zero-padded to Kp.
void load_token_chunk(const MatrixView& x, int64_t t0, int64_t T, int64_t stride, int64_t c0,
                      int64_t width, int64_t Kp, float* out);

// Throws "activations contain NaN or Inf" naming the first bad token.
void require_finite_activations(const MatrixView& x);

}  // namespace awqkit

// Scalar reference of the decoder steps (decoder_ops.h): plain loops in transformers' order.
#include <cmath>
#include <limits>

#include "runtime/decoder_ops.h"

namespace awqkit::runtime::scalar {

void rms_norm(const float* x, const float* w, int64_t n, float eps, float* y) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * r);
}

void attend(const float* q, const float* k, const float* v, int64_t T, int64_t d, float scale, float* scores,
            float* y) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < T; ++t) {
    const float* kt = k + (t / kKeyBlock) * d * kKeyBlock + t % kKeyBlock;
    float s = 0.0f;
    for (int64_t j = 0; j < d; ++j) s += q[j] * kt[j * kKeyBlock];
    s *= scale;
    scores[t] = s;
    mx = s > mx ? s : mx;
  }
  float sum = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    scores[t] = std::exp(scores[t] - mx);
    sum += scores[t];
  }
  for (int64_t j = 0; j < d; ++j) y[j] = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    const float p = scores[t] / sum;
    const float* vt = v + t * d;
    for (int64_t j = 0; j < d; ++j) y[j] += p * vt[j];
  }
}

void silu_mul(const float* g, const float* u, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

}  // namespace awqkit::runtime::scalar

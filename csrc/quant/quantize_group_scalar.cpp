// Scalar reference of the per-group quantizer: the specification the SIMD paths match.
#include <cmath>

#include "quant/quantize_kernels.h"

namespace awqkit::scalar {

void quantize_group(const float* w, int64_t n, const QuantSpec& spec, uint8_t* codes, float* deq,
                    float* scale, uint8_t* zero) {
  float minv = w[0], maxv = w[0];
  for (int64_t i = 1; i < n; ++i) {
    minv = std::fmin(minv, w[i]);
    maxv = std::fmax(maxv, w[i]);
  }
  const GroupParams p = group_params(minv, maxv, spec);
  const float qmax = static_cast<float>(spec.qmax());
  for (int64_t i = 0; i < n; ++i) {
    const float q = quant_code(w[i], p, qmax);
    if (codes) codes[i] = static_cast<uint8_t>(q);
    if (deq) deq[i] = (q - p.zero) * p.scale;
  }
  *scale = p.scale;
  *zero = static_cast<uint8_t>(p.zero);
}

}  // namespace awqkit::scalar

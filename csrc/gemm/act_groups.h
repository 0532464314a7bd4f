// Per-group scans of an activation row shared by the activation splitters (int8 path,
// digits path): absmax and whether the group holds NaN or Inf.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>

namespace awqkit::gemm {

// Scalar reference: max |p[j]| over n inputs; *bad = some input is NaN or Inf.
static inline float group_absmax(const float* p, int64_t n, bool* bad) {
  float amax = 0.0f;
  bool nonfinite = false;
  for (int64_t j = 0; j < n; ++j) {
    const float a = std::fabs(p[j]);
    nonfinite |= !(a <= FLT_MAX);
    amax = a > amax ? a : amax;
  }
  *bad = nonfinite;
  return amax;
}

}  // namespace awqkit::gemm

// The walk over activation groups shared by the activation splitters (int8 path, digits
// path; scalar and AVX-512): per row and weight group, its inputs, absmax and whether it
// holds NaN or Inf.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>

namespace awqkit::int4_linear {

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

// fn(m, g, p, absmax, bad) for each row m of x [M, K] and weight group g: p points at the
// group's gs inputs; absmax_fn is the scan (group_absmax above, or its AVX-512 twin).
template <typename AbsmaxFn, typename Fn>
inline void for_act_groups(const float* x, int64_t M, int64_t K, int64_t gs, AbsmaxFn absmax_fn, Fn&& fn) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < K / gs; ++g) {
      const float* p = x + m * K + g * gs;
      bool bad;
      const float amax = absmax_fn(p, gs, &bad);
      fn(m, g, p, amax, bad);
    }
}

}  // namespace awqkit::int4_linear

// Scalar reference of the int8-activation path (see int8_kernels.h).
#include <cfloat>
#include <cmath>

#include "common/half.h"
#include "int4_linear/act_groups.h"
#include "int4_linear/int8_kernels.h"

namespace awqkit::int4_linear::scalar {

void quantize_act(const float* x, int64_t M, int64_t K, int64_t gs, int8_t* xq, float* sx, int32_t* qsum) {
  const int64_t G = K / gs;
  for_act_groups(x, M, K, gs, group_absmax, [&](int64_t m, int64_t g, const float* p, float amax, bool bad) {
    const float s = int8_act_scale(amax, bad);
    int32_t sum = 0;
    int8_t* q = xq + m * K + g * gs;
    for (int64_t j = 0; j < gs; ++j) {
      const int32_t v = bad ? 0 : static_cast<int32_t>(std::nearbyint(p[j] / s));
      q[(j / 8) * 8 + int8_run_offset(j % 8)] = static_cast<int8_t>(v);
      sum += v;
    }
    sx[m * G + g] = s;
    qsum[m * G + g] = sum;
  });
}

void gemm_int8(const PackedView& w, const int8_t* xq, const float* sx, const int32_t* qsum, int64_t M,
               const float* bias, float* y, int64_t t0, int64_t t1) {
  const int64_t K = w.K, N = w.N, G = w.G, gs = w.group_size;
  for (int64_t n = t0 * 32; n < t1 * 32 && n < N; ++n) {
    const int64_t b = n / kBlock, c = n % kBlock;
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.0f;
      for (int64_t g = 0; g < G; ++g) {
        const uint8_t* hdr = block_group(w, b, g);
        const float s = packed_scale(hdr, c);
        const int32_t z = static_cast<int32_t>(packed_zero(hdr, c));
        const int8_t* q = xq + m * K + g * gs;
        int32_t dot = 0;
        for (int64_t j = 0; j < gs; ++j)
          dot += static_cast<int32_t>(packed_code(hdr + kGroupHeader, j, c)) * q[(j / 8) * 8 + int8_run_offset(j % 8)];
        const float t = static_cast<float>(dot - z * qsum[m * G + g]);
        acc = acc + t * (s * sx[m * G + g]);
      }
      y[m * N + n] = bias ? acc + bias[n] : acc;
    }
  }
}

}  // namespace awqkit::int4_linear::scalar

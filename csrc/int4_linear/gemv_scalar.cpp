// Scalar reference of the fused INT4 product: the specification the SIMD paths are
// held to. y[m, n] = sum_k x[m, k] * ((code - zero) * scale) + bias[n], the weight
// formed exactly as dequantize() forms it, summed in float in increasing k.
#include "common/half.h"
#include "int4_linear/gemm_kernels.h"

namespace awqkit::int4_linear::scalar {

void gemv(const PackedView& w, const float* x, int64_t M, const float* /*xsum*/, const float* bias,
          float* y, int64_t b0, int64_t b1) {
  const int64_t K = w.K, N = w.N, gs = w.group_size;
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t c = 0; c < kBlock && b * kBlock + c < N; ++c) {
      const int64_t n = b * kBlock + c;
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K;
        float acc = 0.0f;
        for (int64_t g = 0; g < w.G; ++g) {
          const uint8_t* hdr = block_group(w, b, g);
          const float scale = packed_scale(hdr, c);
          const float zero = packed_zero(hdr, c);
          const uint8_t* codes = hdr + kGroupHeader;
          for (int64_t j = 0; j < gs; ++j) {
            const float code = static_cast<float>(packed_code(codes, j, c));
            acc += xm[g * gs + j] * ((code - zero) * scale);
          }
        }
        y[m * N + n] = bias ? acc + bias[n] : acc;
      }
    }
  }
}

}  // namespace awqkit::int4_linear::scalar

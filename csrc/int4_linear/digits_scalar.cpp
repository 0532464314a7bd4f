// Scalar reference of the three-digit decode GEMV (see digits_kernels.h).
#include <cfloat>
#include <cmath>

#include "common/half.h"
#include "int4_linear/act_groups.h"
#include "int4_linear/digits_kernels.h"
#include "int4_linear/int8_kernels.h"

namespace awqkit::int4_linear::scalar {

void split_digits(const float* x, int64_t M, int64_t K, int64_t gs, int nd, int8_t* digits, float* step,
                  int32_t* dsum) {
  const int64_t G = K / gs;
  const float lim = digit_max(nd);
  for_act_groups(x, M, K, gs, group_absmax, [&](int64_t m, int64_t g, const float* p, float amax, bool bad) {
    const float d = digit_step(amax, nd);
    const float inv = 1.0f / d;  // exact: d is a power of two
    int32_t sums[kDigits] = {0, 0, 0};
    for (int64_t j = 0; j < gs; ++j) {
      float t = std::nearbyint(p[j] * inv);
      t = t < -lim ? -lim : t > lim ? lim : t;
      int32_t q = bad ? 0 : static_cast<int32_t>(t);
      // Balanced base-256 digits, lowest first; the last one takes what remains.
      int32_t b[kDigits];
      for (int i = 0; i < nd - 1; ++i) {
        b[i] = ((q + 128) & 255) - 128;
        q = (q - b[i]) / 256;  // exact
      }
      b[nd - 1] = q;
      const int64_t pos = g * gs + (j / 8) * 8 + int8_run_offset(j % 8);
      for (int i = 0; i < nd; ++i) {
        digits[(m * nd + i) * K + pos] = static_cast<int8_t>(b[i]);
        sums[i] += b[i];
      }
    }
    step[m * G + g] = bad ? NAN : d;
    for (int i = 0; i < nd; ++i) dsum[(m * G + g) * nd + i] = sums[i];
  });
}

void gemv_digits(const PackedView& w, int nd, const int8_t* digits, const float* step, const int32_t* /*dsum*/,
                 int64_t M, const float* bias, float* y, int64_t b0, int64_t b1) {
  const int64_t K = w.K, N = w.N, G = w.G, gs = w.group_size;
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t c = 0; c < kBlock && b * kBlock + c < N; ++c) {
      const int64_t n = b * kBlock + c;
      for (int64_t m = 0; m < M; ++m) {
        float acc = 0.0f;
        for (int64_t g = 0; g < G; ++g) {
          const uint8_t* hdr = block_group(w, b, g);
          const float s = packed_scale(hdr, c);
          const int32_t z = static_cast<int32_t>(packed_zero(hdr, c));
          float u[kDigits] = {0.0f, 0.0f, 0.0f};
          for (int i = 0; i < nd; ++i) {
            const int8_t* xd = digits + (m * nd + i) * K + g * gs;
            int32_t dot = 0;
            for (int64_t j = 0; j < gs; ++j)
              dot += (static_cast<int32_t>(packed_code(hdr + kGroupHeader, j, c)) - z) *
                     xd[(j / 8) * 8 + int8_run_offset(j % 8)];
            u[i] = static_cast<float>(dot);
          }
          const float v = nd == kShortDigits ? std::fma(u[1], 256.0f, u[0])
                                             : std::fma(u[2], 65536.0f, std::fma(u[1], 256.0f, u[0]));
          acc = std::fma(v, s * step[m * G + g], acc);
        }
        y[m * N + n] = bias ? acc + bias[n] : acc;
      }
    }
}

}  // namespace awqkit::int4_linear::scalar

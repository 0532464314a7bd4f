// AVX2 per-group quantizer: 8 lanes, scalar tail. Same operations as the scalar
// reference (true division, round-half-even), so results are bit-identical.
#include <immintrin.h>

#include <cmath>

#include "quant/quantize_kernels.h"

namespace awqkit::avx2 {

void quantize_group(const float* w, int64_t n, const QuantSpec& spec, uint8_t* codes, float* deq,
                    float* scale, uint8_t* zero) {
  const int64_t nv = n & ~int64_t{7};
  float minv = w[0], maxv = w[0];
  if (nv > 0) {
    __m256 vmin = _mm256_loadu_ps(w), vmax = vmin;
    for (int64_t i = 8; i < nv; i += 8) {
      const __m256 x = _mm256_loadu_ps(w + i);
      vmin = _mm256_min_ps(vmin, x);
      vmax = _mm256_max_ps(vmax, x);
    }
    alignas(32) float lo[8], hi[8];
    _mm256_store_ps(lo, vmin);
    _mm256_store_ps(hi, vmax);
    minv = lo[0];
    maxv = hi[0];
    for (int j = 1; j < 8; ++j) {
      minv = std::fmin(minv, lo[j]);
      maxv = std::fmax(maxv, hi[j]);
    }
  }
  for (int64_t i = nv; i < n; ++i) {
    minv = std::fmin(minv, w[i]);
    maxv = std::fmax(maxv, w[i]);
  }
  const GroupParams p = group_params(minv, maxv, spec);
  const float qmax = static_cast<float>(spec.qmax());
  const __m256 vs = _mm256_set1_ps(p.scale), vz = _mm256_set1_ps(p.zero);
  const __m256 vq = _mm256_set1_ps(qmax), v0 = _mm256_setzero_ps();
  for (int64_t i = 0; i < nv; i += 8) {
    __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(w + i), vs),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, vz), v0), vq);
    if (codes) {
      const __m256i c = _mm256_cvtps_epi32(q);
      const __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
      const __m128i c8 = _mm_packus_epi16(c16, c16);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), c8);
    }
    if (deq) _mm256_storeu_ps(deq + i, _mm256_mul_ps(_mm256_sub_ps(q, vz), vs));
  }
  for (int64_t i = nv; i < n; ++i) {
    const float q = quant_code(w[i], p, qmax);
    if (codes) codes[i] = static_cast<uint8_t>(q);
    if (deq) deq[i] = (q - p.zero) * p.scale;
  }
  *scale = p.scale;
  *zero = static_cast<uint8_t>(p.zero);
}

}  // namespace awqkit::avx2

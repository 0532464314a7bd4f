// AVX-512 per-group quantizer: 16 lanes with a masked tail, so any group size
// (including ragged per-row groups) runs fully vectorised. Bit-identical to scalar.
#include <immintrin.h>

#include "quant/quantize_kernels.h"

namespace awqkit::avx512_vnni {

void quantize_group(const float* w, int64_t n, const QuantSpec& spec, uint8_t* codes, float* deq,
                    float* scale, uint8_t* zero) {
  __m512 vmin = _mm512_set1_ps(w[0]), vmax = vmin;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1u);
    const __m512 x = _mm512_mask_loadu_ps(vmin, m, w + i);  // inactive lanes repeat w[0]
    vmin = _mm512_min_ps(vmin, x);
    vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, m, w + i));
  }
  const GroupParams p = group_params(_mm512_reduce_min_ps(vmin), _mm512_reduce_max_ps(vmax), spec);
  const __m512 vs = _mm512_set1_ps(p.scale), vz = _mm512_set1_ps(p.zero);
  const __m512 vq = _mm512_set1_ps(static_cast<float>(spec.qmax())), v0 = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1u);
    const __m512 x = _mm512_maskz_loadu_ps(m, w + i);
    __m512 q = _mm512_roundscale_ps(_mm512_div_ps(x, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, vz), v0), vq);
    if (codes) _mm512_mask_cvtepi32_storeu_epi8(codes + i, m, _mm512_cvtps_epi32(q));
    if (deq) _mm512_mask_storeu_ps(deq + i, m, _mm512_mul_ps(_mm512_sub_ps(q, vz), vs));
  }
  *scale = p.scale;
  *zero = static_cast<uint8_t>(p.zero);
}

}  // namespace awqkit::avx512_vnni

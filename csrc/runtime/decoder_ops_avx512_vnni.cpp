// AVX-512 engine of the decoder steps (decoder_ops.h). Same operations as the scalar
// reference; sums run in 16 lanes, and exp is a degree-6 polynomial after range reduction
// (Cephes' expf, a few ulp): the softmax of a 512-token prefill and the SiLU of its MLP
// call exp tens of millions of times.
#include <immintrin.h>

#include <cmath>
#include <limits>

#include "runtime/decoder_ops.h"

namespace awqkit::runtime::avx512_vnni {
namespace {

inline __m512 exp_ps(__m512 x) {
  // exp(x) = 2^n exp(r), n = round(x log2(e)), r = x - n ln(2) (ln 2 in two parts).
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7228393f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }

// Scores of 16 positions (one key block [d][16]) in 4 interleaved FMA chains.
inline __m512 block_scores(const float* q, const float* kb, int64_t d) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t j = 0;
  for (; j + 4 <= d; j += 4)
    for (int i = 0; i < 4; ++i)
      acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[j + i]), _mm512_loadu_ps(kb + (j + i) * kKeyBlock), acc[i]);
  for (; j < d; ++j) acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(q[j]), _mm512_loadu_ps(kb + j * kKeyBlock), acc[0]);
  return _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
}

// The scaled scores of q against the first T keys, then their softmax, in scores (the scratch runs to a
// whole key block).
inline void scores_softmax(float* scores, int64_t T, float scale, const float* q, const float* k, int64_t d) {
  __m512 mxv = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t t = 0; t < T; t += kKeyBlock) {
    const __mmask16 m = tail_mask(T - t);
    const __m512 s = _mm512_mul_ps(block_scores(q, k + t * d, d), sc);
    _mm512_storeu_ps(scores + t, s);
    mxv = _mm512_mask_max_ps(mxv, m, mxv, s);
  }
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(mxv));
  __m512 sumv = _mm512_setzero_ps();
  for (int64_t t = 0; t < T; t += kKeyBlock) {
    const __mmask16 m = tail_mask(T - t);
    const __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_loadu_ps(scores + t), mx)));
    sumv = _mm512_add_ps(sumv, e);
    _mm512_storeu_ps(scores + t, e);
  }
  const __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(sumv));
  for (int64_t t = 0; t < T; t += kKeyBlock) _mm512_storeu_ps(scores + t, _mm512_div_ps(_mm512_loadu_ps(scores + t), sum));
}

// y = sum_t p_t v_t with the head's d floats in NC registers of 16 (the last masked), two
// sets of accumulators over alternate positions.
template <int NC>
void weighted_values(const float* p, const float* v, int64_t T, int64_t d, float* y) {
  const __mmask16 last = tail_mask(d - 16 * (NC - 1));
  __m512 ya[NC], yb[NC];
  for (int c = 0; c < NC; ++c) ya[c] = yb[c] = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 2 <= T; t += 2) {
    const __m512 pa = _mm512_set1_ps(p[t]), pb = _mm512_set1_ps(p[t + 1]);
    const float* va = v + t * d;
    const float* vb = va + d;
    for (int c = 0; c < NC; ++c) {
      const __mmask16 m = c == NC - 1 ? last : 0xFFFF;
      ya[c] = _mm512_fmadd_ps(pa, _mm512_maskz_loadu_ps(m, va + 16 * c), ya[c]);
      yb[c] = _mm512_fmadd_ps(pb, _mm512_maskz_loadu_ps(m, vb + 16 * c), yb[c]);
    }
  }
  if (t < T) {
    const __m512 pa = _mm512_set1_ps(p[t]);
    const float* va = v + t * d;
    for (int c = 0; c < NC; ++c)
      ya[c] = _mm512_fmadd_ps(pa, _mm512_maskz_loadu_ps(c == NC - 1 ? last : 0xFFFF, va + 16 * c), ya[c]);
  }
  for (int c = 0; c < NC; ++c) _mm512_mask_storeu_ps(y + 16 * c, c == NC - 1 ? last : 0xFFFF, _mm512_add_ps(ya[c], yb[c]));
}

}  // namespace

void rms_norm(const float* x, const float* w, int64_t n, float eps, float* y) {
  __m512 ss = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
    ss = _mm512_fmadd_ps(v, v, ss);
  }
  const __m512 r = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(n) + eps));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), r)));
  }
}

void attend(const float* q, const float* k, const float* v, int64_t T, int64_t d, float scale, float* scores,
            float* y) {
  // Heads of up to 256 floats keep their output in registers; wider ones take the reference.
  using ValuesFn = void (*)(const float*, const float*, int64_t, int64_t, float*);
  static constexpr ValuesFn by_chunks[] = {
      weighted_values<1>,  weighted_values<2>,  weighted_values<3>,  weighted_values<4>,
      weighted_values<5>,  weighted_values<6>,  weighted_values<7>,  weighted_values<8>,
      weighted_values<9>,  weighted_values<10>, weighted_values<11>, weighted_values<12>,
      weighted_values<13>, weighted_values<14>, weighted_values<15>, weighted_values<16>};
  const int64_t chunks = (d + 15) / 16;
  if (chunks > 16) return scalar::attend(q, k, v, T, d, scale, scores, y);
  scores_softmax(scores, T, scale, q, k, d);
  by_chunks[chunks - 1](scores, v, T, d, y);
}

void silu_mul(const float* g, const float* u, int64_t n, float* y) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(m, u + i)));
  }
}

}  // namespace awqkit::runtime::avx512_vnni

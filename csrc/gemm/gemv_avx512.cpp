// AVX-512 GEMV over the packed layout (decode: small M). Streams each 16-channel block
// once, front to back; for every pair of inputs one 16-byte load, a zero-extend to 16
// dwords, AND / shift for the two nibbles, convert, and an FMA per row of x into
// per-group accumulators. Per group: y += acc * scale + sum(x_group) * (-zero * scale).
// Up to 4 rows of x share each unpacked weight; larger M reuses the block from L1/L2.
#include <immintrin.h>

#include "gemm/gemm_kernels.h"

namespace awqkit::gemm::avx512 {
namespace {

template <int R>
inline void gemv_block(const PackedView& w, const float* x, const float* xs, const float* bias, float* y,
                       int64_t b) {
  const int64_t K = w.K, N = w.N, G = w.G, gs = w.group_size;
  // R == 1 has too little independent work for the FMA latency: split its sum 4 ways.
  constexpr int P = R == 1 ? 4 : 2;
  const __m512i m15 = _mm512_set1_epi32(0xF);
  __m512 yacc[R];
  for (int r = 0; r < R; ++r) yacc[r] = _mm512_setzero_ps();
  const uint8_t* blk = w.data + b * w.block_bytes;
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* hdr = blk + g * w.group_bytes;
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr)));
    const __m512 z = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr + 32)));
    const __m512 zb = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, s));  // exact
    const uint8_t* codes = hdr + kGroupHeader;
    const float* xg = x + g * gs;
    __m512 acc[R][P];
    for (int r = 0; r < R; ++r)
      for (int p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < gs; kk += 8) {
      const uint8_t* c8 = codes + kk * 8;
      _mm_prefetch(reinterpret_cast<const char*>(c8) + 1024, _MM_HINT_T0);
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c8 + 16 * q)));
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, m15));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
        const int pl = (2 * q) % P, ph = (2 * q + 1) % P;
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          acc[r][pl] = _mm512_fmadd_ps(_mm512_set1_ps(xg[r * K + kk + 2 * q]), lo, acc[r][pl]);
          acc[r][ph] = _mm512_fmadd_ps(_mm512_set1_ps(xg[r * K + kk + 2 * q + 1]), hi, acc[r][ph]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      __m512 sum = _mm512_add_ps(acc[r][0], acc[r][1]);
      if (P == 4) sum = _mm512_add_ps(sum, _mm512_add_ps(acc[r][2 % P], acc[r][3 % P]));
      yacc[r] = _mm512_fmadd_ps(sum, s, yacc[r]);
      yacc[r] = _mm512_fmadd_ps(_mm512_set1_ps(xs[r * G + g]), zb, yacc[r]);
    }
  }
  const int64_t n0 = b * kBlock;
  const int64_t nv = N - n0 < kBlock ? N - n0 : kBlock;
  const __mmask16 mask = static_cast<__mmask16>((1u << nv) - 1u);
  for (int r = 0; r < R; ++r) {
    __m512 out = yacc[r];
    if (bias) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask, bias + n0));
    _mm512_mask_storeu_ps(y + r * N + n0, mask, out);
  }
}

}  // namespace

void gemv(const PackedView& w, const float* x, int64_t M, const float* xsum, const float* bias, float* y,
          int64_t b0, int64_t b1) {
  const int64_t K = w.K, N = w.N, G = w.G;
  for (int64_t b = b0; b < b1; ++b) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) gemv_block<4>(w, x + m * K, xsum + m * G, bias, y + m * N, b);
    switch (M - m) {
      case 3: gemv_block<3>(w, x + m * K, xsum + m * G, bias, y + m * N, b); break;
      case 2: gemv_block<2>(w, x + m * K, xsum + m * G, bias, y + m * N, b); break;
      case 1: gemv_block<1>(w, x + m * K, xsum + m * G, bias, y + m * N, b); break;
      default: break;
    }
  }
}

}  // namespace awqkit::gemm::avx512

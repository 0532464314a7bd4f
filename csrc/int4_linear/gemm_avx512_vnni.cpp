// AVX-512 GEMM over the packed layout (prefill: larger M). For each [KC inputs x 32
// outputs] tile, the thread dequantizes the weights into a 32 KB fp32 panel that stays
// in L1 (exactly dequantize()'s values: (code - zero) * scale is exact in fp32), then a
// 12 x 32 register-blocked micro-kernel (24 zmm accumulators) runs over every row block
// of x, packed per KC slice as [k][12] so broadcasts read one contiguous stream.
// Threads own fixed output tiles and sum KC slices in increasing k: the result does not
// depend on the thread count.
#include <immintrin.h>
#include <omp.h>

#include "int4_linear/gemm_kernels.h"
#include "int4_linear/avx512_vnni_helpers.h"

namespace awqkit::int4_linear::avx512_vnni {
namespace {

constexpr int MR = static_cast<int>(kGemmMR);
constexpr int64_t KC = kGemmKC, NR = kGemmNR;

// Panel [kc][32] of exactly dequantized weights for blocks 2t, 2t+1 and inputs k0..k0+kc.
inline void dequant_panel(const PackedView& w, int64_t t, int64_t k0, int64_t kc, float* panel) {
  const int64_t gs = w.group_size;
  const __m512 lut = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int h = 0; h < 2; ++h) {
    const int64_t b = 2 * t + h;
    float* dst = panel + h * kBlock;
    if (b >= w.blocks) {
      for (int64_t k = 0; k < kc; ++k) _mm512_store_ps(dst + k * NR, _mm512_setzero_ps());
      continue;
    }
    int64_t k = k0;
    while (k < k0 + kc) {
      const int64_t g = k / gs;
      const int64_t kend = (g + 1) * gs < k0 + kc ? (g + 1) * gs : k0 + kc;
      const uint8_t* hdr = block_group(w, b, g);
      const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr)));
      const __m512 z = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr + 32)));
      const __m512 zb = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, s));
      const uint8_t* codes = hdr + kGroupHeader + (k - g * gs) * 8;
      for (; k < kend; k += kRun, codes += 64) {
        const __m512i v = _mm512_loadu_si512(codes);
#pragma GCC unroll 8
        for (int i = 0; i < kRun; ++i) {
          const __m512 code = _mm512_permutexvar_ps(i == 0 ? v : _mm512_srli_epi32(v, 4 * i), lut);
          _mm512_store_ps(dst + (k + i - k0) * NR, _mm512_fmadd_ps(code, s, zb));
        }
      }
    }
  }
}

// c[MRt x 32] (+)= apack[kc][MR] x panel[kc][32]; first slice stores, later ones add;
// the last slice adds the bias. Columns >= nv are masked off.
template <int MRt>
inline void micro(const float* ap, const float* panel, int64_t kc, float* y, int64_t N, __mmask16 m0,
                  __mmask16 m1, bool first, const float* bias) {
  __m512 c[MRt][2];
  for (int r = 0; r < MRt; ++r) c[r][0] = c[r][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(panel + k * NR), b1 = _mm512_load_ps(panel + k * NR + 16);
#pragma GCC unroll 12
    for (int r = 0; r < MRt; ++r) {
      const __m512 a = _mm512_set1_ps(ap[k * MR + r]);
      c[r][0] = _mm512_fmadd_ps(a, b0, c[r][0]);
      c[r][1] = _mm512_fmadd_ps(a, b1, c[r][1]);
    }
  }
  for (int r = 0; r < MRt; ++r) {
    float* row = y + r * N;
    __m512 v0 = c[r][0], v1 = c[r][1];
    if (!first) {
      v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, row), v0);
      v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, row + 16), v1);
    }
    if (bias) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, bias));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, bias + 16));
    }
    _mm512_mask_storeu_ps(row, m0, v0);
    _mm512_mask_storeu_ps(row + 16, m1, v1);
  }
}

using MicroFn = void (*)(const float*, const float*, int64_t, float*, int64_t, __mmask16, __mmask16, bool,
                         const float*);
constexpr MicroFn kMicro[MR + 1] = {nullptr,    micro<1>, micro<2>, micro<3>,  micro<4>,  micro<5>, micro<6>,
                                    micro<7>,   micro<8>, micro<9>, micro<10>, micro<11>, micro<12>};


}  // namespace

void gemm(const PackedView& w, const float* x, int64_t M, const float* bias, float* y, float* apack,
          float* panels) {
  const int64_t K = w.K, N = w.N;
  const int64_t tiles = (w.blocks + 1) / 2;
  const int64_t mblocks = (M + MR - 1) / MR;
  // No barriers: each thread owns a contiguous run of output tiles and packs its own
  // copy of each x slice (O(M*K) work against O(M*N*K/threads) of FMAs), so a thread
  // that the OS delays on this shared machine never stalls the other.
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t t0 = tiles * tid / nt, t1 = tiles * (tid + 1) / nt;
    float* panel = panels + tid * gemm_panel_floats();
    float* ap = apack + tid * gemm_apack_floats(M);
    for (int64_t k0 = 0; k0 < K && t0 < t1; k0 += KC) {
      const int64_t kc = K - k0 < KC ? K - k0 : KC;
      // Pack x[:, k0:k0+kc] as [mblock][k][MR] (zero rows past M).
      for (int64_t mb = 0; mb < mblocks; ++mb) {
        float* dst = ap + mb * MR * KC;
        for (int r = 0; r < MR; ++r) {
          const int64_t m = mb * MR + r;
          if (m < M) {
            const float* src = x + m * K + k0;
            for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = src[k];
          } else {
            for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = 0.0f;
          }
        }
      }
      const bool first = k0 == 0, last = k0 + kc == K;
      for (int64_t t = t0; t < t1; ++t) {
        dequant_panel(w, t, k0, kc, panel);
        const int64_t n0 = t * NR;
        const __mmask16 m0 = lane_mask(N - n0), m1 = lane_mask(N - n0 - 16);
        const float* tb = (last && bias) ? bias + n0 : nullptr;
        for (int64_t mb = 0; mb < mblocks; ++mb) {
          const int64_t mr = M - mb * MR < MR ? M - mb * MR : MR;
          kMicro[mr](ap + mb * MR * KC, panel, kc, y + mb * MR * N + n0, N, m0, m1, first, tb);
        }
      }
    }
  }
}

}  // namespace awqkit::int4_linear::avx512_vnni

// AVX-512 VNNI three-digit decode GEMV (see digits_kernels.h). Per 64-byte run of codes
// (8 inputs x 16 channels) one load, AND / shift+AND split the nibbles into the even and
// odd inputs as u8, and two vpdpbusd per digit and row (broadcast dwords of 4 digits)
// accumulate 128 products in int32: 3 + 6R vector ops per 128 weights against 20 for
// R = 1 in the float GEMV. The float epilogue per group repeats the scalar reference's
// operations in its order, so every output has the reference's bits.
#include <immintrin.h>

#include <cfloat>
#include <cmath>

#include "int4_linear/act_groups.h"
#include "int4_linear/digits_kernels.h"
#include "int4_linear/avx512_vnni_helpers.h"
#include "int4_linear/row_tiles.h"

namespace awqkit::int4_linear::avx512_vnni {
namespace {

// Rows per pass over a block: 12 int32 accumulators with three digits (more rows spill), 12 with two.
template <int ND>
constexpr int kMaxRows = ND == kDigits ? 4 : 6;
// Software prefetch distances along the block stream (bytes): the hardware prefetcher
// alone leaves the DRAM stream short of requests in flight. Into L1 at 2 KB; into L2 at
// 4 KB as well, which keeps more lines in flight when both cores stream at once
// (576x576 decode on 2 threads: ~10% less time per call, 1 thread unchanged).
constexpr int64_t kPrefetchAhead = 2048;
constexpr int64_t kPrefetchAheadL2 = 4096;


// Balanced base-256 digit: ((v + 128) & 255) - 128, and the exact quotient (v - digit) / 256.
inline __m512i low_digit(__m512i v) {
  const __m512i c128 = _mm512_set1_epi32(128);
  return _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(v, c128), _mm512_set1_epi32(255)), c128);
}

template <int R, int ND>
inline void block_rows(const PackedView& w, const int8_t* digits, const float* step, const int32_t* dsum,
                       const float* bias, float* y, int64_t b) {
  const int64_t K = w.K, N = w.N, G = w.G, gs = w.group_size;
  // One row has only ND digit sums: split even and odd inputs into separate accumulators
  // so that 2 ND independent vpdpbusd chains hide its latency.
  constexpr int S = R == 1 ? 2 : 1;
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  __m512 yacc[R];
  for (int r = 0; r < R; ++r) yacc[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* hdr = block_group(w, b, g);
    const uint8_t* codes = hdr + kGroupHeader;
    __m512i acc[R][ND][S];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < ND; ++i)
        for (int h = 0; h < S; ++h) acc[r][i][h] = _mm512_setzero_si512();
    const int8_t* xg = digits + g * gs;
    for (int64_t run = 0; run < gs / kRun; ++run) {
      const uint8_t* c8 = codes + run * 64;
      _mm_prefetch(reinterpret_cast<const char*>(c8) + kPrefetchAhead, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c8) + kPrefetchAheadL2, _MM_HINT_T1);
      const __m512i v = _mm512_loadu_si512(c8);
      const __m512i even = _mm512_and_si512(v, lo4);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(v, 4), lo4);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
        for (int i = 0; i < ND; ++i) {
          const int8_t* xd = xg + (r * ND + i) * K + run * kRun;
          acc[r][i][0] = dpbusd_broadcast(acc[r][i][0], even, xd);
          acc[r][i][S - 1] = dpbusd_broadcast(acc[r][i][S - 1], odd, xd + 4);
        }
    }
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr)));
    const __m512i z = _mm512_cvttps_epi32(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr + 32))));
    for (int r = 0; r < R; ++r) {
      const int32_t* ds = dsum + (r * G + g) * ND;
      __m512 u[ND];
      for (int i = 0; i < ND; ++i) {
        const __m512i a = S == 2 ? _mm512_add_epi32(acc[r][i][0], acc[r][i][S - 1]) : acc[r][i][0];
        u[i] = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, _mm512_mullo_epi32(z, _mm512_set1_epi32(ds[i]))));
      }
      __m512 v = _mm512_fmadd_ps(u[1], _mm512_set1_ps(256.0f), u[0]);
      if constexpr (ND == kDigits) v = _mm512_fmadd_ps(u[ND - 1], _mm512_set1_ps(65536.0f), v);
      yacc[r] = _mm512_fmadd_ps(v, _mm512_mul_ps(s, _mm512_set1_ps(step[r * G + g])), yacc[r]);
    }
  }
  store_block_rows<R>(yacc, bias, y, N, b);
}


template <int ND>
void split_digits_nd(const float* x, int64_t M, int64_t K, int64_t gs, int8_t* digits, float* step, int32_t* dsum) {
  const int64_t G = K / gs;
  const __m512i perm = run_order();
  const __m512 lim = _mm512_set1_ps(digit_max(ND));
  for_act_groups(x, M, K, gs, avx512_vnni::group_absmax, [&](int64_t m, int64_t g, const float* p, float amax, bool bad) {
    const float d = digit_step(amax, ND);
    const __m512 inv = _mm512_set1_ps(1.0f / d);
    __m512i sums[kDigits] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int64_t j = 0; j < gs; j += 16) {
      const __mmask16 mk = lane_mask(gs - j);
      __m512 t = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, p + j), inv),
                                      _MM_FROUND_CUR_DIRECTION);  // as nearbyint
      t = _mm512_min_ps(_mm512_max_ps(t, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
      __m512i q = bad ? _mm512_setzero_si512() : _mm512_maskz_mov_epi32(mk, _mm512_cvttps_epi32(t));
      __m512i b[ND];
      for (int i = 0; i < ND - 1; ++i) {
        b[i] = low_digit(q);
        q = _mm512_srai_epi32(_mm512_sub_epi32(q, b[i]), 8);
      }
      b[ND - 1] = q;
      for (int i = 0; i < ND; ++i) {
        sums[i] = _mm512_add_epi32(sums[i], b[i]);
        _mm512_mask_cvtepi32_storeu_epi8(digits + (m * ND + i) * K + g * gs + j, mk,
                                         _mm512_permutexvar_epi32(perm, b[i]));
      }
    }
    step[m * G + g] = bad ? NAN : d;
    for (int i = 0; i < ND; ++i)
      dsum[(m * G + g) * ND + i] = _mm512_reduce_add_epi32(sums[i]);
  });
}

template <int ND>
void gemv_digits_nd(const PackedView& w, const int8_t* digits, const float* step, const int32_t* dsum, int64_t M,
                    const float* bias, float* y, int64_t b0, int64_t b1) {
  const int64_t K = w.K, N = w.N, G = w.G;
  for_block_row_tiles<kMaxRows<ND>>(b0, b1, M, [&](auto rows, int64_t b, int64_t m) {
    block_rows<rows(), ND>(w, digits + m * ND * K, step + m * G, dsum + m * G * ND, bias, y + m * N, b);
  });
}

}  // namespace

void split_digits(const float* x, int64_t M, int64_t K, int64_t gs, int nd, int8_t* digits, float* step,
                  int32_t* dsum) {
  if (nd == kShortDigits)
    split_digits_nd<kShortDigits>(x, M, K, gs, digits, step, dsum);
  else
    split_digits_nd<kDigits>(x, M, K, gs, digits, step, dsum);
}

void gemv_digits(const PackedView& w, int nd, const int8_t* digits, const float* step, const int32_t* dsum,
                 int64_t M, const float* bias, float* y, int64_t b0, int64_t b1) {
  if (nd == kShortDigits)
    gemv_digits_nd<kShortDigits>(w, digits, step, dsum, M, bias, y, b0, b1);
  else
    gemv_digits_nd<kDigits>(w, digits, step, dsum, M, bias, y, b0, b1);
}

}  // namespace awqkit::int4_linear::avx512_vnni

// AVX-512 GEMV over the packed layout (decode: small M). Streams each 16-channel block
// once, front to back; per 8 inputs four overlapping loads (byte offsets 0..3), then per
// input a vpermps through the table 0..15 (nibble -> float; every other one after a
// shift) and an FMA per row of x into per-group accumulators: 2.5 vector uops per 16
// weights, against 4 with zero-extend + convert. Reads up to 3 bytes past a run, which
// the packed buffer's tail padding covers. Per group: y += acc * scale + sum(x_group) * (-zero * scale).
// Up to 4 rows of x share each unpacked weight; larger M reuses the block from L1/L2.
#include <immintrin.h>

#include "int4_linear/avx512_vnni_helpers.h"
#include "int4_linear/gemm_kernels.h"
#include "int4_linear/row_tiles.h"

namespace awqkit::int4_linear::avx512_vnni {
namespace {

// Software prefetch distance along the block stream: the hardware prefetcher alone
// leaves the DRAM stream short of requests in flight at this kernel's pace.
constexpr int64_t kPrefetchAhead = 2048;

template <int R>
inline void gemv_block(const PackedView& w, const float* x, const float* xs, const float* bias, float* y,
                       int64_t b) {
  const int64_t K = w.K, N = w.N, G = w.G, gs = w.group_size;
  // Four independent sums per row hide the FMA latency at R == 1; the same split for
  // every R makes each row's result independent of how many rows share the call.
  constexpr int P = 4;
  // vpermps reads only the low 4 bits of each index: the table turns a nibble into a float.
  const __m512 lut = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 yacc[R];
  for (int r = 0; r < R; ++r) yacc[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* hdr = block_group(w, b, g);
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr)));
    const __m512 z = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr + 32)));
    const __m512 zb = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, s));  // exact
    const uint8_t* codes = hdr + kGroupHeader;
    const float* xg = x + g * gs;
    __m512 acc[R][P];
    for (int r = 0; r < R; ++r)
      for (int p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < gs; kk += kRun) {
      // 64 bytes: 16 channels x 8 inputs; dword lane c = channel c, nibble i = input kk+i.
      // vpermps reads bits 0..3 of each lane only, so a load at byte offset j puts
      // input kk+2j there (no shift), and one shift by 4 gives input kk+2j+1.
      const uint8_t* c8 = codes + kk * 8;
      _mm_prefetch(reinterpret_cast<const char*>(c8) + kPrefetchAhead, _MM_HINT_T0);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512i v = _mm512_loadu_si512(c8 + j);
        const __m512 we = _mm512_permutexvar_ps(v, lut);
        const __m512 wo = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          acc[r][(2 * j) % P] = _mm512_fmadd_ps(_mm512_set1_ps(xg[r * K + kk + 2 * j]), we, acc[r][(2 * j) % P]);
          acc[r][(2 * j + 1) % P] =
              _mm512_fmadd_ps(_mm512_set1_ps(xg[r * K + kk + 2 * j + 1]), wo, acc[r][(2 * j + 1) % P]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3]));
      yacc[r] = _mm512_fmadd_ps(sum, s, yacc[r]);
      yacc[r] = _mm512_fmadd_ps(_mm512_set1_ps(xs[r * G + g]), zb, yacc[r]);
    }
  }
  store_block_rows<R>(yacc, bias, y, N, b);
}

}  // namespace

void gemv(const PackedView& w, const float* x, int64_t M, const float* xsum, const float* bias, float* y,
          int64_t b0, int64_t b1) {
  const int64_t K = w.K, N = w.N, G = w.G;
  for_block_row_tiles<4>(b0, b1, M, [&](auto rows, int64_t b, int64_t m) {
    gemv_block<rows()>(w, x + m * K, xsum + m * G, bias, y + m * N, b);
  });
}

}  // namespace awqkit::int4_linear::avx512_vnni

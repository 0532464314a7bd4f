// AVX-512 limit probes (see probes.h). Only called when the CPU has AVX-512.
#include <immintrin.h>
#include <omp.h>

#include "bench_probes/probes.h"

namespace awqkit::bench_probes {

namespace {
// Sum of the 64-byte lines [l0, l1) of buf as int32 lanes, so no load can be elided.
double read_lines(const uint8_t* buf, int64_t l0, int64_t l1) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  int64_t l = l0;
  for (; l + 4 <= l1; l += 4) {
    const __m512i* p = reinterpret_cast<const __m512i*>(buf + l * 64);
    a0 = _mm512_add_epi32(a0, _mm512_load_si512(p));
    a1 = _mm512_add_epi32(a1, _mm512_load_si512(p + 1));
    a2 = _mm512_add_epi32(a2, _mm512_load_si512(p + 2));
    a3 = _mm512_add_epi32(a3, _mm512_load_si512(p + 3));
  }
  for (; l < l1; ++l) a0 = _mm512_add_epi32(a0, _mm512_load_si512(reinterpret_cast<const __m512i*>(buf + l * 64)));
  const __m512i s = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
  // The lanes wrap (vpaddd) and are added here as unsigned 64-bit integers:
  // _mm512_reduce_add_epi32 adds them as signed int, an overflow (undefined behaviour) as
  // soon as the lane sums are large, i.e. on any buffer of a few megabytes.
  alignas(64) uint32_t lanes[16];
  _mm512_store_si512(reinterpret_cast<__m512i*>(lanes), s);
  uint64_t total = 0;
  for (const uint32_t lane : lanes) total += lane;
  return static_cast<double>(total);
}
}  // namespace

double stream_read(const uint8_t* buf, int64_t n) {
  const int64_t lines = n / 64;
  double total = 0.0;
#pragma omp parallel reduction(+ : total)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    total += read_lines(buf, lines * t / nt, lines * (t + 1) / nt);
  }
  return total;
}

double read_blocks(const uint8_t* data, int64_t blocks, int64_t block_bytes) {
  const int64_t lines = block_bytes / 64;
  if (omp_get_max_threads() == 1) return read_lines(data, 0, blocks * lines);  // as run_digits alone
  double total = 0.0;
#pragma omp parallel reduction(+ : total)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    total += read_lines(data, blocks * t / nt * lines, blocks * (t + 1) / nt * lines);
  }
  return total;
}

double fma_peak(int64_t iters) {
  double flops = 0.0;
#pragma omp parallel reduction(+ : flops)
  {
    __m512 acc[24];
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(0.001f * static_cast<float>(i));
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
      for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    __m512 s = acc[0];
    for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    flops += static_cast<double>(iters) * 24 * 16 * 2;
  }
  return flops;
}

}  // namespace awqkit::bench_probes

#include "gemm/linear.h"

#include <omp.h>

#include <cstdlib>
#include <memory>
#include <vector>

#include "common/cpu_features.h"
#include "gemm/gemm_kernels.h"
#include "gemm/int8_kernels.h"

namespace awqkit::gemm {
namespace {

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<float, AlignedFree>;

AlignedBuffer aligned_floats(int64_t n) {
  const size_t bytes = ((static_cast<size_t>(n) * sizeof(float) + 63) / 64) * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
  if (!p) throw std::bad_alloc();  // becomes MemoryError, never a null write in a worker
  return AlignedBuffer(p);
}

// GEMM scratch kept by each calling thread between calls: fresh pages on every prefill
// call cost page faults, which the OpenMP threads then take concurrently (slow in a VM).
float* gemm_scratch(int64_t n) {
  thread_local AlignedBuffer buf;
  thread_local int64_t capacity = 0;
  if (n > capacity) {
    buf = aligned_floats(n);
    capacity = n;
  }
  return buf.get();
}

GemvFn gemv_kernel(Isa isa) {
  switch (isa) {
    case Isa::avx512: return avx512::gemv;
    case Isa::avx2: return avx2::gemv;
    case Isa::scalar: break;
  }
  return scalar::gemv;
}

// Per-group sums of x, the zero-point term of the SIMD GEMV (summed in increasing k).
std::vector<float> group_sums(const PackedView& w, const float* x, int64_t M) {
  std::vector<float> xs(static_cast<size_t>(M * w.G));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < w.G; ++g) {
      const float* p = x + m * w.K + g * w.group_size;
      float s = 0.0f;
      for (int64_t j = 0; j < w.group_size; ++j) s += p[j];
      xs[m * w.G + g] = s;
    }
  return xs;
}

void run_gemv(GemvFn fn, const PackedView& w, const float* x, int64_t M, const float* bias, float* y) {
  const std::vector<float> xs = group_sums(w, x, M);
  const float* xsum = xs.data();
  const int64_t nb = w.blocks;
  // Contiguous runs of blocks per thread; each block is computed whole by one thread.
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t b0 = nb * t / nt, b1 = nb * (t + 1) / nt;
    if (b0 < b1) fn(w, x, M, xsum, bias, y, b0, b1);
  }
}

void run_int8(const PackedView& w, const float* x, int64_t M, const float* bias, float* y, bool simd) {
  const QuantizeActFn quant = simd ? avx512::quantize_act : scalar::quantize_act;
  const GemmInt8Fn kernel = simd ? avx512::gemm_int8 : scalar::gemm_int8;
  const int64_t K = w.K, G = w.G, gs = w.group_size;
  std::vector<int8_t> xq(static_cast<size_t>(M * K));
  std::vector<float> sx(static_cast<size_t>(M * G));
  std::vector<int32_t> qs(static_cast<size_t>(M * G));
  int8_t* xqp = xq.data();
  float* sxp = sx.data();
  int32_t* qsp = qs.data();
  const int64_t tiles = (w.blocks + 1) / 2;
#pragma omp parallel
  {
    // Rows are quantized independently, then each thread owns a contiguous run of tiles.
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) quant(x + m * K, 1, K, gs, xqp + m * K, sxp + m * G, qsp + m * G);
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t t0 = tiles * t / nt, t1 = tiles * (t + 1) / nt;
    if (t0 < t1) kernel(w, xqp, sxp, qsp, M, bias, y, t0, t1);
  }
}

}  // namespace

void linear_forward(const PackedView& w, const float* x, int64_t M, const float* bias, float* y, Path path,
                    Activation act) {
  const Isa isa = active_isa();
  if (act == Activation::int8) {
    run_int8(w, x, M, bias, y, isa == Isa::avx512);
    return;
  }
  bool use_gemm = isa == Isa::avx512 && (path == Path::gemm || (path == Path::automatic && M >= kGemmMinRows));
  if (!use_gemm) {
    run_gemv(gemv_kernel(isa), w, x, M, bias, y);
    return;
  }
  const int64_t nt = omp_get_max_threads();
  const int64_t apack_floats = gemm_apack_floats(M) * nt;  // a multiple of 16: panels stay aligned
  float* scratch = gemm_scratch(apack_floats + gemm_panel_floats() * nt);
  avx512::gemm(w, x, M, bias, y, scratch, scratch + apack_floats);
}

}  // namespace awqkit::gemm

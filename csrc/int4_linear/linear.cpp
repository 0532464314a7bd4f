#include "int4_linear/linear.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "common/amx_support.h"
#include "common/errors.h"
#include "common/kernel_table.h"

namespace awqkit::int4_linear {
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

// Scratch kept by each calling thread between calls: fresh pages on every call cost page
// faults, which the OpenMP threads then take concurrently (slow in a VM), and decode
// calls are microseconds long.
float* thread_scratch(int64_t floats) {
  thread_local AlignedBuffer buf;
  thread_local int64_t capacity = 0;
  if (floats > capacity) {
    buf = aligned_floats(floats);
    capacity = floats;
  }
  return buf.get();
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
  // Alone, call the kernel directly: a parallel region costs ~0.2 us to enter even for one
  // thread, a tenth of a small decode call.
  if (omp_get_max_threads() == 1) {
    fn(w, x, M, xsum, bias, y, 0, nb);
    return;
  }
  // Contiguous runs of blocks per thread; each block is computed whole by one thread.
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t b0 = nb * t / nt, b1 = nb * (t + 1) / nt;
    if (b0 < b1) fn(w, x, M, xsum, bias, y, b0, b1);
  }
}

// Inputs (rows x K) up to which the VNNI path splits x on the calling thread before the
// threads start: ~1 us of work at most, less than the barrier a shared split costs them.
constexpr int64_t kSerialSplitInputs = 16384;

// nd digits per input: kDigits (exact) or kShortDigits (Activation::int16; never on AMX tiles).
void run_digits(const KernelTable& kt, const PackedView& w, const float* x, int64_t M, const float* bias,
                float* y, int nd) {
  const SplitDigitsFn split = kt.split_digits;
  const GemvDigitsFn gemv = kt.gemv_digits;
  const bool amx = nd == kDigits && M >= kAmxMinRows && amx_int8_active();
  const int64_t K = w.K, G = w.G, gs = w.group_size;
  const int64_t nt_max = omp_get_max_threads();
  // AMX tiles read 16 rows at a time: its digits are in tile order, zero rows up to a
  // multiple of 16, staged per thread one row tile at a time.
  const int64_t rows = amx ? amx_rows(M) : M;
  const auto floats = [](int64_t bytes) { return (bytes + 63) / 64 * 16; };  // 64-byte multiples
  const int64_t digit_floats = floats(rows * nd * K);
  const int64_t stage_floats = amx ? floats(kAmxTileRows * nd * K) : 0;
  const int64_t amx_floats = amx ? floats(amx_scratch_bytes(gs)) : 0;
  float* scratch = thread_scratch(digit_floats + M * G * (1 + nd) + (stage_floats + amx_floats) * nt_max);
  int8_t* digits = reinterpret_cast<int8_t*>(scratch);
  float* step = scratch + digit_floats;
  int32_t* dsum = reinterpret_cast<int32_t*>(step + M * G);
  float* per_thread = reinterpret_cast<float*>(dsum + M * G * nd);
  const int64_t nb = w.blocks;
  const bool split_first = !amx && (nt_max == 1 || M * K <= kSerialSplitInputs);
  if (split_first) split(x, M, K, gs, nd, digits, step, dsum);
  if (!amx && nt_max == 1) {  // as in run_gemv: no parallel region for one thread
    gemv(w, nd, digits, step, dsum, M, bias, y, 0, nb);
    return;
  }
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    float* mine = per_thread + t * (stage_floats + amx_floats);
    if (amx) {
      int8_t* stage = reinterpret_cast<int8_t*>(mine);
#pragma omp for schedule(static)
      for (int64_t rt = 0; rt < rows / kAmxTileRows; ++rt) {
        const int64_t m0 = rt * kAmxTileRows, n = M - m0 < kAmxTileRows ? M - m0 : kAmxTileRows;
        split(x + m0 * K, n, K, gs, nd, stage, step + m0 * G, dsum + m0 * G * nd);
        kt.digits_to_amx_tiles(stage, n, K, gs, digits + m0 * nd * K);
      }
    } else if (!split_first) {
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; ++m)
        split(x + m * K, 1, K, gs, nd, digits + m * nd * K, step + m * G, dsum + m * G * nd);
    }
    const int64_t b0 = nb * t / nt, b1 = nb * (t + 1) / nt;
    if (b0 < b1) {
      if (amx)
        kt.gemm_digits_amx(w, digits, step, M, bias, y, b0, b1,
                                reinterpret_cast<uint8_t*>(mine + stage_floats));
      else
        gemv(w, nd, digits, step, dsum, M, bias, y, b0, b1);
    }
  }
}

void run_int8(const KernelTable& kt, const PackedView& w, const float* x, int64_t M, const float* bias, float* y) {
  const QuantizeActFn quant = kt.quantize_act;
  const GemmInt8Fn kernel = kt.gemm_int8;
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
  const KernelTable& kt = active_kernels();
  if (act == Activation::int8) {
    run_int8(kt, w, x, M, bias, y);
    return;
  }
  if (act == Activation::int16) {
    require(w.group_size <= kDigitsMaxGroup, "16-bit activations need group_size <= 2^20");
    run_digits(kt, w, x, M, bias, y, kShortDigits);
    return;
  }
  if (path == Path::automatic) {
    // The digits product for every M where it runs natively: its engines (VNNI, AMX-INT8,
    // scalar) all return the scalar reference's bits, so a row's output does not depend on the
    // batch it came in (prefill and decode agree). Without AMX the float GEMM is no faster (~1x).
    const bool digits = kt.native_digits() && w.group_size <= kDigitsMaxGroup;
    path = digits ? Path::digits : kt.gemm && M >= kGemmMinRows ? Path::gemm : Path::gemv;
  }
  if (path == Path::digits) {
    require(w.group_size <= kDigitsMaxGroup, "the digits kernel needs group_size <= 2^20");
    run_digits(kt, w, x, M, bias, y, kDigits);
    return;
  }
  if (path == Path::gemv || !kt.gemm) {
    run_gemv(kt.gemv, w, x, M, bias, y);
    return;
  }
  const int64_t nt = omp_get_max_threads();
  const int64_t apack_floats = gemm_apack_floats(M) * nt;  // a multiple of 16: panels stay aligned
  float* scratch = thread_scratch(apack_floats + gemm_panel_floats() * nt);
  kt.gemm(w, x, M, bias, y, scratch, scratch + apack_floats);
}

}  // namespace awqkit::int4_linear

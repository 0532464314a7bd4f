// Fused INT4 kernels over the packed layout, one set per ISA. Each takes raw pointers:
// x float32 [M, K] row-major, y float32 [M, N] row-major, bias float32 [N] or null.
#pragma once
#include <cstdint>

#include "int4_linear/packed_layout.h"

namespace awqkit::int4_linear {

// Computes y[:, 16*b0 .. 16*b1) (clipped to N) for every row of x, one output block at
// a time; the caller splits blocks between threads. xsum [M, G] holds the per-group
// sums of x (the zero-point term); the scalar reference ignores it.
using GemvFn = void (*)(const PackedView& w, const float* x, int64_t M, const float* xsum,
                        const float* bias, float* y, int64_t b0, int64_t b1);

// Whole product for larger M with its own OpenMP region: dequantizes [KC x 32] panels
// into per-thread scratch and runs a register-blocked micro-kernel. apack holds
// gemm_apack_floats(M) and panels gemm_panel_floats() floats per thread (up to
// omp_get_max_threads()), both 64-byte aligned.
using GemmFn = void (*)(const PackedView& w, const float* x, int64_t M, const float* bias, float* y,
                        float* apack, float* panels);

inline constexpr int64_t kGemmKC = 256;  // inputs per panel: 256 x 32 fp32 = 32 KB, sits in L1
inline constexpr int64_t kGemmNR = 32;   // output channels per panel (2 zmm)
inline constexpr int64_t kGemmMR = 12;   // rows of x per micro-kernel call (24 accumulators)
static inline int64_t gemm_apack_floats(int64_t M) { return ((M + kGemmMR - 1) / kGemmMR) * kGemmMR * kGemmKC; }
static inline int64_t gemm_panel_floats() { return kGemmKC * kGemmNR; }

namespace scalar {
void gemv(const PackedView& w, const float* x, int64_t M, const float* xsum, const float* bias, float* y,
          int64_t b0, int64_t b1);
}
namespace avx2 {
void gemv(const PackedView& w, const float* x, int64_t M, const float* xsum, const float* bias, float* y,
          int64_t b0, int64_t b1);
}
namespace avx512_vnni {
void gemv(const PackedView& w, const float* x, int64_t M, const float* xsum, const float* bias, float* y,
          int64_t b0, int64_t b1);
void gemm(const PackedView& w, const float* x, int64_t M, const float* bias, float* y, float* apack,
          float* panels);
}

}  // namespace awqkit::int4_linear

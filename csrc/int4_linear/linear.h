// Entry point of the fused INT4 linear layer: picks the ISA and the GEMV or GEMM path.
#pragma once
#include <cstdint>

#include "int4_linear/packed_layout.h"

namespace awqkit::int4_linear {

// automatic: on AVX-512 (VNNI) with group_size <= kDigitsMaxGroup, digits for every M; else gemm
// from kGemmMinRows rows on AVX-512, gemv below and without AVX-512. Either way a row's
// output is the same whatever M (tests/test_gemm_api.py holds it).
// gemv: float FMA GEMV. gemm: dequantized panels + FMA micro-kernel (AVX-512; gemv elsewhere).
// digits: x split into three int8 digits (digits_kernels.h): VNNI GEMV, AMX-INT8 tiles from
// kAmxMinRows rows, the scalar reference without AVX-512.
enum class Path : int { automatic = 0, gemv = 1, gemm = 2, digits = 3 };
// float: exact fp32 products of x and the dequantized weight. int8: x quantized per row
// and weight group to int8, integer dot products (AVX-512 VNNI; scalar elsewhere). int16: x
// as two int8 digits per row and group (16-bit block floating point, digits_kernels.h), the
// digits product with a third fewer integer products (AVX-512 VNNI; scalar elsewhere).
enum class Activation : int { f32 = 0, int8 = 1, int16 = 2 };

// M from which the automatic choice takes the panel GEMM where the digits product cannot run
// (group sizes above kDigitsMaxGroup).
inline constexpr int64_t kGemmMinRows = 16;
// M from which the digits product runs on AMX-INT8 tiles where the CPU has them (below,
// VNNI is faster: the tiles' fixed cost per block and group is paid whatever M).
inline constexpr int64_t kAmxMinRows = 6;

// y [M, N] = x [M, K] @ dequantize(W).T (+ bias [N]); all row-major and contiguous.
// Deterministic: every output is computed by one thread in a fixed order.
void linear_forward(const PackedView& w, const float* x, int64_t M, const float* bias, float* y,
                    Path path = Path::automatic, Activation act = Activation::f32);

}  // namespace awqkit::int4_linear

// One table of kernels per ISA level, and the fallback chain between levels.
//
// Every kernel family has a scalar reference (the specification, kept forever) and SIMD
// variants compiled in their own files (suffix _avx2.cpp / _avx512_vnni.cpp: those get the
// level's compiler flags; _amx.cpp: AVX-512 + AMX flags, built where the compiler knows AMX,
// AWQKIT_AMX_KERNELS=1). A level lists the kernels it provides; an entry left null falls back to the
// level below, so a level that only speeds up, say, the GEMV names just that. Adding a level is
// one entry in kIsaLevels (kernel_table.cpp) plus its kernel files; dispatch code never
// switches on the level: it calls active_kernels().
#pragma once
#include <cstdint>
#include <vector>

#include "common/cpu_features.h"
#include "int4_linear/digits_kernels.h"
#include "int4_linear/gemm_kernels.h"
#include "int4_linear/int8_kernels.h"
#include "quant/quantize_kernels.h"
#include "runtime/decoder_ops.h"
#include "search/quadratic_form_amx.h"
#include "search/tile_kernels.h"

namespace awqkit {

namespace int4_linear {
using GemvDigitsFn = decltype(&scalar::gemv_digits);
using DigitsToAmxTilesFn = decltype(&amx::digits_to_amx_tiles);
using GemmDigitsAmxFn = decltype(&amx::gemm_digits_amx);
}  // namespace int4_linear
using SplitBf16Fn = decltype(&amx::split_bf16);
using QuadraticFormAmxFn = decltype(&amx::quadratic_form_amx);

// Every field of KernelTable, for the code that walks them all (the fallback fill, the list of
// what a level provides): a field added to KernelTable is added here too.
#define AWQKIT_KERNEL_TABLE_FIELDS(X)                                                                  \
  X(quantize_group) X(gram_tile) X(gram_dot_tile) X(gemv) X(gemm) X(split_digits) X(gemv_digits)     \
  X(quantize_act) X(gemm_int8) X(split_bf16) X(quadratic_form_amx) X(digits_to_amx_tiles)            \
  X(gemm_digits_amx) X(rms_norm) X(attend) X(silu_mul)

struct KernelTable {
  // quant/: one group of the weight quantizer.
  QuantizeGroupFn quantize_group;
  // search/: the register tiles of the Gram matrix and of the loss quadratic forms.
  GemmTileFn gram_tile;
  GemmDotTileFn gram_dot_tile;
  // gemm/: the float kernels. A null gemm means the level has no panel GEMM: gemv serves every M.
  int4_linear::GemvFn gemv;
  int4_linear::GemmFn gemm;
  // gemm/: the integer-product kernels (the digits product, int8 activations). Where they fall
  // back to the scalar reference, the automatic path prefers the float GEMV (the reference is
  // the specification, not a fast path).
  int4_linear::SplitDigitsFn split_digits;
  int4_linear::GemvDigitsFn gemv_digits;
  int4_linear::QuantizeActFn quantize_act;
  int4_linear::GemmInt8Fn gemm_int8;
  // AMX tiles (*_amx.cpp; common/amx_support.h): used only where the CPU and OS grant them and
  // AMX is enabled. Null in a build whose compiler has no AMX flags.
  SplitBf16Fn split_bf16;
  QuadraticFormAmxFn quadratic_form_amx;
  int4_linear::DigitsToAmxTilesFn digits_to_amx_tiles;
  int4_linear::GemmDigitsAmxFn gemm_digits_amx;
  // runtime/: the steps of a decoder layer between its linears (norms, attention, SiLU).
  runtime::RmsNormFn rms_norm;
  runtime::AttendFn attend;
  runtime::SiluMulFn silu_mul;

  // Whether the integer products run natively here rather than as the scalar reference.
  bool native_digits() const { return gemv_digits != &int4_linear::scalar::gemv_digits; }
  bool has_amx_bf16() const { return split_bf16 && quadratic_form_amx; }
  bool has_amx_int8() const { return digits_to_amx_tiles && gemm_digits_amx; }
};

struct IsaLevel {
  Isa isa;               // position in the fallback chain: each level falls back to the one before
  const char* name;      // what AWQKIT_ISA and set_isa() take
  const char* requires;  // the CPU features it needs, for messages and docs
  bool (*cpu_has)();     // those features on this CPU and OS
  KernelTable kernels;   // what this level provides (null: the level below's)
};

// Every level compiled into this build, lowest first (scalar is always the first).
const std::vector<IsaLevel>& isa_levels();
// The table of a level with every null entry filled from the levels below it.
const KernelTable& kernels_for(Isa isa);
// The table of the active level (cpu_features.h: set_isa, AWQKIT_ISA).
const KernelTable& active_kernels();
// The kernels a level provides itself (its non-null entries, by field name).
std::vector<const char*> provided_kernels(const IsaLevel& level);

}  // namespace awqkit

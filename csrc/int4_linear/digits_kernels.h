// Decode GEMV with x held as three int8 digits per input (24-bit block floating point).
//
// Why: the float GEMV spends ~2.5 vector ops per 16 weights (nibble -> float permute,
// shift, FMA). On a core with two 512-bit ports that unpacks about as fast as DRAM
// delivers packed weights, so decode tops out near 0.75 of the streaming bandwidth.
// vpdpbusd does 64 u8 x s8 multiply-adds per op: with the 4-bit codes as the u8 operand
// and x split into int8 digits, 128 weights cost 3 unpack ops + 2 vpdpbusd per digit,
// and 24-bit digits keep float32's precision.
//
// Splitting x (row m, weight group g of the packed layout):
//   d   = digit_step(absmax(x_g)): the smallest power of two >= absmax / kDigitMax, at
//         least 2^-126 (the step is reported as NaN if the group holds NaN or Inf)
//   q_k = clamp(nearbyint(x_k * (1 / d)), -kDigitMax, kDigitMax)      |q_k| < 2^23
//         (x_k * (1 / d) is exact: d is a power of two)
//   q_k = 65536 * b2 + 256 * b1 + b0                  balanced digits b_j in [-128, 127]
// so each x_k is kept to within d / 2 <= absmax * 2^-23 (1 + 2^-23): float32 precision
// relative to its group's largest input, as in a float32 sum where that input dominates.
// Groups with absmax below kDigitMax * 2^-126 (~1e-31) get the step 2^-126 (absolute error
// <= 2^-127; a group of subnormals becomes zero).
// Product (exact integers, then a fixed float epilogue):
//   u_j = sum_k (code_k - zero) * b_jk   (int32, exact; VNNI forms it as
//         sum_k code_k * b_jk - zero * dsum_j, AMX multiplies signed code - zero)
//   v = 65536 * float(u2) + 256 * float(u1) + float(u0),  y += v * (scale * d)   (fma order).
// Two digits (Activation::int16, opt-in): the same with kShortDigitMax = 127 * 257 and
// q = 256 * b1 + b0, so each x_k is kept to within absmax(group) * 2^-15 (16-bit block
// floating point) and v = 256 * float(u1) + float(u0): a third fewer integer products.
// The scalar functions are the specification; the AVX-512 VNNI and AMX-INT8 engines match
// them bit for bit (AMX runs three digits only).
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "int4_linear/packed_layout.h"

namespace awqkit::int4_linear {

inline constexpr float kDigitMax = 8355711.0f;  // 127 * (65536 + 256 + 1): largest balanced 3-digit value
inline constexpr int kDigits = 3;
inline constexpr float kShortDigitMax = 32639.0f;  // 127 * (256 + 1): largest balanced 2-digit value
inline constexpr int kShortDigits = 2;
inline constexpr float digit_max(int digits) { return digits == kShortDigits ? kShortDigitMax : kDigitMax; }
// int32 sums stay exact while 15 * 128 * group_size < 2^31.
inline constexpr int64_t kDigitsMaxGroup = int64_t{1} << 20;

// Step of a group (see above); both engines call this one function.
static inline float digit_step(float absmax, int digits = kDigits) {
  const float t = absmax / digit_max(digits);
  if (!(t > FLT_MIN)) return FLT_MIN;  // also all-zero groups: their digits are zero
  int e;
  const float f = std::frexp(t, &e);  // t = f * 2^e, f in [0.5, 1)
  return f == 0.5f ? t : std::ldexp(1.0f, e);
}

// nd digits per input (kDigits or kShortDigits): digits [M, nd, K] int8, each digit's K inputs in
// int8_run_offset order (even inputs of each run of 8 first, as the packed dword's low nibbles
// hold them); step [M, G]; dsum [M, G, nd] = sum over the group of each digit.
using SplitDigitsFn = void (*)(const float* x, int64_t M, int64_t K, int64_t group_size, int nd, int8_t* digits,
                               float* step, int32_t* dsum);
// gemv_digits: y rows [0, M), output blocks of 16 channels [b0, b1). dsum serves kernels that multiply
// unsigned codes and subtract zero * dsum; the scalar reference multiplies code - zero.
// The same two functions per level (as search/tile_kernels.h declares its tiles).
#define AWQKIT_DECLARE_DIGITS_KERNELS                                                                          \
  void split_digits(const float* x, int64_t M, int64_t K, int64_t group_size, int nd, int8_t* digits,        \
                    float* step, int32_t* dsum);                                                              \
  void gemv_digits(const PackedView& w, int nd, const int8_t* digits, const float* step, const int32_t* dsum, \
                   int64_t M, const float* bias, float* y, int64_t b0, int64_t b1);
namespace scalar {
AWQKIT_DECLARE_DIGITS_KERNELS
}  // namespace scalar
namespace avx512_vnni {
AWQKIT_DECLARE_DIGITS_KERNELS
}  // namespace avx512_vnni
#undef AWQKIT_DECLARE_DIGITS_KERNELS
// digits_amx.cpp (AVX-512 + AMX-INT8 flags; compiled where the compiler knows AMX).
namespace amx {
// The same product on AMX-INT8 tiles (many rows): tdpbssd multiplies 16 rows x kc digits by
// kc inputs x 16 channels of code - zero (kc = 64 where the group size allows, else 32, 16, 8). digits here are in
// tile order (digits_to_amx_tiles) for amx_rows(M) rows. scratch: amx_scratch_bytes(group_size)
// bytes for this thread. Only after amx_int8_active().
void gemm_digits_amx(const PackedView& w, const int8_t* digits, const float* step, int64_t M, const float* bias,
                     float* y, int64_t b0, int64_t b1, uint8_t* scratch);
// Up to 16 rows of split digits ([rows, 3, K], n_rows valid, the rest written as zeros)
// -> one row tile in tile order: per group, digit and tile depth kc (64, 32, 16 or 8 dividing
// the group) a contiguous 16 x kc block, so each A tile is one 16 * kc byte load.
void digits_to_amx_tiles(const int8_t* rows, int64_t n_rows, int64_t K, int64_t group_size, int8_t* tiles);
}  // namespace amx

inline constexpr int64_t kAmxTileRows = 16;
static inline int64_t amx_rows(int64_t M) { return (M + kAmxTileRows - 1) / kAmxTileRows * kAmxTileRows; }
// Unpacked codes of one block-group (group_size x 16 bytes) + three 16 x 16 int32 tiles.
static inline int64_t amx_scratch_bytes(int64_t group_size) { return group_size * 16 + 3 * 1024; }

}  // namespace awqkit::int4_linear

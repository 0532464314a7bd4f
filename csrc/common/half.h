// IEEE binary16 <-> binary32 conversion in portable C++, round to nearest even.
// This is the scalar reference for what F16C's vcvtps2ph/vcvtph2ps do, and what
// numpy's astype(float16) does, so scales agree bit for bit on every path.
// Functions in headers that ISA-specific files include are `static inline`: each
// translation unit keeps its own copy, so the linker can never hand the scalar
// path a copy compiled for AVX-512 (a one-definition-rule trap of per-file ISA flags).
#pragma once
#include <cstdint>
#include <cstring>

namespace awqkit {

static inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
static inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u)  // Inf or NaN (NaN keeps a quiet payload bit)
    return sign | 0x7c00u | (absx > 0x7f800000u ? 0x0200u | ((absx >> 13) & 0x3ffu) : 0u);
  if (absx >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504 -> Inf
  if (absx >= 0x38800000u) {                       // normal half
    const uint32_t mant_odd = (absx >> 13) & 1u;
    const uint32_t rounded = absx + 0xfffu + mant_odd;  // round half to even on bit 13
    return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
  }
  if (absx < 0x33000000u) return sign;  // below half the smallest subnormal -> 0
  // Subnormal half: value = m * 2^-24 with m = round(absx_value * 2^24).
  const uint32_t exp = absx >> 23;
  const uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exp;  // exp in [102, 112] -> shift in [14, 24]
  const uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  const uint32_t m = q + ((rem > halfway || (rem == halfway && (q & 1u))) ? 1u : 0u);
  return sign | static_cast<uint16_t>(m);
}

static inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24, exact in float
    const float v = static_cast<float>(mant) * bits_float(0x33800000u);
    return bits_float(sign | float_bits(v));
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Round a float to the nearest binary16 value and back.
static inline float round_to_half(float f) { return half_to_float(float_to_half(f)); }

}  // namespace awqkit

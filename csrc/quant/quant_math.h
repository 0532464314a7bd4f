// The per-group quantization rule, shared by every ISA path.
//
// Only the element loops differ between scalar, AVX2 and AVX-512; the scale and zero
// of a group are computed here, once, with the same float32 operations in the same
// order, so every path produces bit-identical codes, scales and zeros.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/half.h"

namespace awqkit {

// How a group's scale, offset and codes are computed. awq: the rule below (AutoAWQ's, also
// what compressed-tensors stores). ggml_*: llama.cpp's reference quantizer of that GGUF block
// type, bit for bit (quant/ggml_block_types.h), so that what the searches optimise is what a
// GGUF file ships.
enum class GroupRule : int { awq = 0, ggml_q4_0 = 1, ggml_q4_1 = 2, ggml_q8_0 = 3 };

struct QuantSpec {
  GroupRule rule = GroupRule::awq;
  int bits = 4;            // 2..8
  int64_t group_size = 128;  // inputs per group (already resolved: -1 -> K)
  bool zero_point = true;    // asymmetric (scale + zero) vs symmetric (zero = 2^(b-1))
  bool fp16_scale = true;    // round the scale to binary16 before computing codes

  int qmax() const { return (1 << bits) - 1; }
};

struct GroupParams {
  float scale;  // as stored (already rounded to fp16 if asked)
  float zero;   // integer-valued
};

// maxv/minv: the group's max and min (zero_point) ; absmax is max |w| (symmetric).
static inline GroupParams group_params(float minv, float maxv, const QuantSpec& spec) {
  GroupParams p;
  if (spec.zero_point) {
    const float range = std::fmax(maxv - minv, 1e-5f);
    p.scale = range / static_cast<float>(spec.qmax());
    if (spec.fp16_scale) p.scale = round_to_half(p.scale);
    const float z = -std::nearbyint(minv / p.scale);
    p.zero = std::fmin(std::fmax(z, 0.0f), static_cast<float>(spec.qmax()));
  } else {
    const float absmax = std::fmax(std::fabs(minv), std::fabs(maxv));
    p.scale = std::fmax(absmax, 1e-5f) / static_cast<float>((1 << (spec.bits - 1)) - 1);
    if (spec.fp16_scale) p.scale = round_to_half(p.scale);
    p.zero = static_cast<float>(1 << (spec.bits - 1));
  }
  return p;
}

// Code of one element: clamp(round(w / scale) + zero, 0, 2^b - 1). The symmetric rule
// clamp(round(w/s), -2^(b-1), 2^(b-1)-1) + 2^(b-1) is the same expression.
static inline float quant_code(float w, const GroupParams& p, float qmax) {
  const float q = std::nearbyint(w / p.scale) + p.zero;
  return std::fmin(std::fmax(q, 0.0f), qmax);
}

}  // namespace awqkit

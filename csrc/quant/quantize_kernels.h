// Per-group quantization kernels, one set per ISA (quantize_group_{scalar,avx2,avx512_vnni}.cpp).
#pragma once
#include <cstdint>

#include "quant/quant_math.h"

namespace awqkit {

// Quantizes one group of n contiguous floats (finite). Writes the group's scale and
// zero; codes (n bytes) and dequantized values (n floats) are written when non-null.
using QuantizeGroupFn = void (*)(const float* w, int64_t n, const QuantSpec& spec, uint8_t* codes,
                                 float* deq, float* scale, uint8_t* zero);

namespace scalar {
void quantize_group(const float* w, int64_t n, const QuantSpec& spec, uint8_t* codes, float* deq,
                    float* scale, uint8_t* zero);
}
namespace avx2 {
void quantize_group(const float* w, int64_t n, const QuantSpec& spec, uint8_t* codes, float* deq,
                    float* scale, uint8_t* zero);
}
namespace avx512_vnni {
void quantize_group(const float* w, int64_t n, const QuantSpec& spec, uint8_t* codes, float* deq,
                    float* scale, uint8_t* zero);
}

// The group quantizer of spec: the active ISA's for the awq rule, the GGUF block type's
// reference (scalar) for a ggml rule.
QuantizeGroupFn quantize_group_kernel(const QuantSpec& spec);

}  // namespace awqkit

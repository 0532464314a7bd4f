// Row-wise group quantization of a [N, K] weight (torch Linear layout: N outputs, K inputs).
#pragma once
#include <cstdint>
#include <string>

#include "quant/quant_math.h"

namespace awqkit {

enum class FloatType { f32, f16 };  // f16 is IEEE binary16 stored as uint16

// A strided 2-D view of float or half data; the inner (K) stride is 1.
struct MatrixView {
  const void* data;
  FloatType type;
  int64_t rows, cols, ld;  // ld: elements between rows
};

// Checks bits (2..8), group size (divides K) and shape; returns the resolved spec. A ggml rule
// (a GGUF block type) fixes bits, group size (its block), zero_point (Q4_1 only) and float16
// scales: a spec that says otherwise is refused.
QuantSpec resolve_spec(int bits, int64_t group_size, bool zero_point, bool fp16_scale, int64_t K,
                       int rule = 0);

// The rule every entry point applies to weights (quantize, pseudo_quantize, the scale and
// clip searches): every group scale must be finite in the scale dtype. The message for a
// weight whose first such group is in `row` (what names the weight, e.g. "weights[1]").
std::string scale_overflow_message(const std::string& what, int64_t row, bool fp16_scale);

// Quantizes every group of every row. Outputs (row-major, contiguous):
//   codes [N, K] (nullable), scales [N, G], zeros [N, G], deq [N, K] (nullable),
//   offsets [N, G] (the GGUF Q4_1 minimum m; required with codes for a rule that has one).
// Throws std::invalid_argument on non-finite weights or a scale that overflows fp16.
void quantize_rows(const MatrixView& w, const QuantSpec& spec, uint8_t* codes, float* scales,
                   uint8_t* zeros, float* deq, float* offsets = nullptr);

// deq[n, k] = (codes[n, k] - zeros[n, g]) * scales[n, g] (+ offsets[n, g] when not null);
// throws if a code or zero > qmax.
void dequantize_rows(const uint8_t* codes, const float* scales, const uint8_t* zeros, int64_t N,
                     int64_t K, int64_t group_size, int bits, float* deq, const float* offsets = nullptr);

}  // namespace awqkit

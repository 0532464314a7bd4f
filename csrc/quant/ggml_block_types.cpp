#include "quant/ggml_block_types.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/half.h"

namespace awqkit {
namespace {

// C's (int8_t)f as ggml compiles it on x86-64 (cvttss2si, then the low byte): truncation toward
// zero; a value no int32 holds (only reachable through an infinite 1/d) gives 0x80000000 -> 0.
inline int trunc_int8(float f) {
  if (!(f > -2147483648.0f && f < 2147483648.0f)) return 0;
  return static_cast<int8_t>(static_cast<int32_t>(f));
}

inline float stored_half(float v) { return half_to_float(float_to_half(v)); }

// quantize_row_q4_0_ref: d = (the value of largest magnitude, first one) / -8, codes from the
// unrounded 1/d, trunc(x/d + 8.5) capped at 15; y = (q - 8) * fp16(d).
void q4_0_block(const float* x, uint8_t* codes, float* deq, float* d_out, float* m_out) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    const float v = x[j];
    if (amax < std::fabs(v)) {
      amax = std::fabs(v);
      max = v;
    }
  }
  const float d = max / -8;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float dh = stored_half(d);
  for (int j = 0; j < 32; ++j) {
    const int q = std::min(15, trunc_int8(x[j] * id + 8.5f));
    const uint8_t c = static_cast<uint8_t>(q);  // ggml stores (uint8_t)MIN(15, ...)
    if (codes) codes[j] = c;
    if (deq) deq[j] = static_cast<float>(static_cast<int>(c) - 8) * dh;
  }
  *d_out = dh;
  *m_out = 0.0f;
}

// quantize_row_q4_1_ref: d = (max - min) / 15, codes trunc((x - min)/d + 0.5) capped at 15 from
// the unrounded min and 1/d; y = q * fp16(d) + fp16(min).
void q4_1_block(const float* x, uint8_t* codes, float* deq, float* d_out, float* m_out) {
  float min = FLT_MAX, max = -FLT_MAX;
  for (int j = 0; j < 32; ++j) {
    const float v = x[j];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const float d = (max - min) / ((1 << 4) - 1);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float dh = stored_half(d), mh = stored_half(min);
  for (int j = 0; j < 32; ++j) {
    const int q = std::min(15, trunc_int8((x[j] - min) * id + 0.5f));
    const uint8_t c = static_cast<uint8_t>(q);
    if (codes) codes[j] = c;
    if (deq) deq[j] = static_cast<float>(c) * dh + mh;
  }
  // An offset float16 cannot hold is an overflow like a scale's: report it through the scale.
  *d_out = std::isfinite(mh) ? dh : INFINITY;
  *m_out = mh;
}

// quantize_row_q8_0_ref: d = max|x| / 127, q = roundf(x / d) (half away from zero) from the
// unrounded 1/d; y = q * fp16(d). Codes are q + 128.
void q8_0_block(const float* x, uint8_t* codes, float* deq, float* d_out, float* m_out) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  const float d = amax / ((1 << 7) - 1);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float dh = stored_half(d);
  for (int j = 0; j < 32; ++j) {
    const int q = trunc_int8(std::round(x[j] * id));  // (int8_t)roundf(x0)
    if (codes) codes[j] = static_cast<uint8_t>(q + 128);
    if (deq) deq[j] = static_cast<float>(q) * dh;
  }
  *d_out = dh;
  *m_out = 0.0f;
}

void q4_0_expanded(const float* x, float f, uint8_t* codes) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -8 * f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < 32; ++j) codes[j] = static_cast<uint8_t>(std::min(15, trunc_int8(x[j] * id + 8.5f)));
}

void q4_1_expanded(const float* x, float f, uint8_t* codes) {
  float min = FLT_MAX, max = -FLT_MAX;
  for (int j = 0; j < 32; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
  const float d = (max - min) / ((1 << 4) - 1) * f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < 32; ++j)
    codes[j] = static_cast<uint8_t>(std::min(15, trunc_int8((x[j] - min) * id + 0.5f)));
}

void q8_0_expanded(const float* x, float f, uint8_t* codes) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  const float d = amax / ((1 << 7) - 1) * f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < 32; ++j) codes[j] = static_cast<uint8_t>(trunc_int8(std::round(x[j] * id)) + 128);
}

template <void (*Block)(const float*, uint8_t*, float*, float*, float*), int Zero>
void as_group(const float* w, int64_t, const QuantSpec&, uint8_t* codes, float* deq, float* scale,
              uint8_t* zero) {
  float m;
  Block(w, codes, deq, scale, &m);
  *zero = static_cast<uint8_t>(Zero);
}

// ggml_type ids: GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q4_1 = 3, GGML_TYPE_Q8_0 = 8 (ggml.h).
const GgmlBlockType kGgmlBlockTypes[] = {
    {GroupRule::ggml_q4_0, "q4_0", 2, 4, 32, false, 8, &q4_0_block, &as_group<&q4_0_block, 8>, &q4_0_expanded},
    {GroupRule::ggml_q4_1, "q4_1", 3, 4, 32, true, 0, &q4_1_block, &as_group<&q4_1_block, 0>, &q4_1_expanded},
    {GroupRule::ggml_q8_0, "q8_0", 8, 8, 32, false, 128, &q8_0_block, &as_group<&q8_0_block, 128>,
     &q8_0_expanded},
};

}  // namespace

const GgmlBlockType* ggml_block_type(GroupRule rule) {
  for (const GgmlBlockType& t : kGgmlBlockTypes)
    if (t.rule == rule) return &t;
  return nullptr;
}

const GgmlBlockType* ggml_block_types(int* count) {
  *count = static_cast<int>(sizeof kGgmlBlockTypes / sizeof kGgmlBlockTypes[0]);
  return kGgmlBlockTypes;
}

}  // namespace awqkit

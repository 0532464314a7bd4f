#include "quant/quantize.h"

#include <omp.h>

#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "common/kernel_table.h"
#include "common/errors.h"
#include "common/half.h"
#include "quant/ggml_block_types.h"
#include "quant/quantize_kernels.h"

namespace awqkit {

QuantizeGroupFn quantize_group_kernel(const QuantSpec& spec) {
  const GgmlBlockType* t = ggml_block_type(spec.rule);
  return t ? t->quantize_group : active_kernels().quantize_group;
}

QuantSpec resolve_spec(int bits, int64_t group_size, bool zero_point, bool fp16_scale, int64_t K,
                       int rule) {
  require(rule == 0 || ggml_block_type(static_cast<GroupRule>(rule)),
          "unknown rounding rule " + std::to_string(rule));
  if (const GgmlBlockType* t = ggml_block_type(static_cast<GroupRule>(rule))) {
    const std::string name = std::string("GGUF ") + t->name;
    require(bits == t->bits, name + " holds " + std::to_string(t->bits) + "-bit codes, got bits = " +
                                 std::to_string(bits));
    require(group_size == t->block, name + " quantizes blocks of " + std::to_string(t->block) +
                                        " weights, got group_size = " + std::to_string(group_size));
    require(zero_point == t->has_min, name + (t->has_min ? " is asymmetric (zero_point=True)"
                                                         : " is symmetric (zero_point=False)"));
    require(fp16_scale, name + " stores float16 scales (scale_dtype='float16')");
  }
  require(bits >= 2 && bits <= 8, "bits must be between 2 and 8, got " + std::to_string(bits));
  require(K > 0, "the weight has no input features (K = 0)");
  if (group_size == -1) group_size = K;
  require(group_size > 0, "group_size must be positive or -1 (one group per row), got " +
                              std::to_string(group_size));
  require(K % group_size == 0, "K = " + std::to_string(K) + " is not divisible by group_size = " +
                                   std::to_string(group_size) +
                                   " (use a group size that divides K, or -1 for one group per row)");
  QuantSpec spec;
  spec.bits = bits;
  spec.group_size = group_size;
  spec.zero_point = zero_point;
  spec.fp16_scale = fp16_scale;
  spec.rule = static_cast<GroupRule>(rule);
  return spec;
}

std::string scale_overflow_message(const std::string& what, int64_t row, bool fp16_scale) {
  if (fp16_scale)
    return "a group scale of " + what + " overflows float16 (first in row " + std::to_string(row) +
           "): the weights are too large for float16 scales (at most 65504); use scale_dtype='float32'";
  return "a group scale of " + what + " overflows float32 (first in row " + std::to_string(row) +
         "): the range of the group's weights exceeds float32";
}

namespace {

// Loads row r as float32 into buf (or points straight at it) and checks it is finite.
const float* load_row(const MatrixView& w, int64_t r, std::vector<float>& buf, bool* finite) {
  const float* row;
  if (w.type == FloatType::f32) {
    row = static_cast<const float*>(w.data) + r * w.ld;
  } else {
    const uint16_t* h = static_cast<const uint16_t*>(w.data) + r * w.ld;
    buf.resize(static_cast<size_t>(w.cols));
    for (int64_t k = 0; k < w.cols; ++k) buf[k] = half_to_float(h[k]);
    row = buf.data();
  }
  bool ok = true;
  for (int64_t k = 0; k < w.cols; ++k) ok &= std::isfinite(row[k]);
  *finite = ok;
  return row;
}

}  // namespace

void quantize_rows(const MatrixView& w, const QuantSpec& spec, uint8_t* codes, float* scales,
                   uint8_t* zeros, float* deq, float* offsets) {
  const int64_t N = w.rows, K = w.cols, gs = spec.group_size, G = K / gs;
  const QuantizeGroupFn kernel = quantize_group_kernel(spec);
  const GgmlBlockType* block_type = ggml_block_type(spec.rule);
  require(!(codes && block_type && block_type->has_min && !offsets),
          "internal: the codes of a rule with an offset need the offsets output");
  // Errors cannot leave an OpenMP region: remember the first bad row and throw after.
  std::atomic<int64_t> bad_row{N}, overflow_row{N};
#pragma omp parallel
  {
    std::vector<float> buf;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      bool finite;
      const float* row = load_row(w, r, buf, &finite);
      if (!finite) {
        int64_t cur = bad_row.load();
        while (r < cur && !bad_row.compare_exchange_weak(cur, r)) {}
        continue;
      }
      for (int64_t g = 0; g < G; ++g) {
        const int64_t off = r * K + g * gs;
        if (block_type) {
          float m;
          block_type->quantize_block(row + g * gs, codes ? codes + off : nullptr, deq ? deq + off : nullptr,
                                     scales + r * G + g, &m);
          zeros[r * G + g] = static_cast<uint8_t>(block_type->zero);
          if (offsets) offsets[r * G + g] = m;
        } else {
          kernel(row + g * gs, gs, spec, codes ? codes + off : nullptr, deq ? deq + off : nullptr,
                 scales + r * G + g, zeros + r * G + g);
        }
        if (!std::isfinite(scales[r * G + g])) {
          int64_t cur = overflow_row.load();
          while (r < cur && !overflow_row.compare_exchange_weak(cur, r)) {}
        }
      }
    }
  }
  if (bad_row.load() < N)
    fail("weight contains NaN or Inf (first in row " + std::to_string(bad_row.load()) + ")");
  if (overflow_row.load() < N) fail(scale_overflow_message("the weight", overflow_row.load(), spec.fp16_scale));
}

void dequantize_rows(const uint8_t* codes, const float* scales, const uint8_t* zeros, int64_t N,
                     int64_t K, int64_t group_size, int bits, float* deq, const float* offsets) {
  require(bits >= 2 && bits <= 8, "bits must be between 2 and 8, got " + std::to_string(bits));
  const int64_t gs = group_size, G = K / gs;
  const int qmax = (1 << bits) - 1;
  std::atomic<bool> out_of_range{false};
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const float s = scales[r * G + g];
      const uint8_t z = zeros[r * G + g];
      if (z > qmax) out_of_range = true;
      const float zf = static_cast<float>(z);
      const uint8_t* c = codes + r * K + g * gs;
      float* out = deq + r * K + g * gs;
      uint8_t cmax = 0;
      for (int64_t i = 0; i < gs; ++i) {
        cmax = c[i] > cmax ? c[i] : cmax;
        out[i] = (static_cast<float>(c[i]) - zf) * s;
      }
      if (offsets) {  // GGUF Q4_1: q * d + m, the multiply rounded before the add
        const float m = offsets[r * G + g];
        for (int64_t i = 0; i < gs; ++i) out[i] = out[i] + m;
      }
      if (cmax > qmax) out_of_range = true;
    }
  }
  require(!out_of_range, "a code or zero point is larger than 2^bits - 1 = " + std::to_string(qmax));
}

}  // namespace awqkit

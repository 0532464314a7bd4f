#include "bindings/bind_common.h"
#include "quant/ggml_block_types.h"
#include "quant/pack_awq.h"
#include "quant/quantize.h"

namespace awqkit::bind {
namespace {

MatrixView weight_view(const py::array& w) {
  require_dtype(has_dtype<float>(w) || is_f16(w), w, "w", "float32 or float16");
  require_ndim(w, "w", 2);
  require_nonempty(w, "w");
  const int64_t ld = row_stride_2d(w, "w");
  return MatrixView{w.data(), is_f16(w) ? FloatType::f16 : FloatType::f32, w.shape(0), w.shape(1), ld};
}

// Returns (codes [N,K] uint8 or None, scales [N,G] f32, zeros [N,G] uint8, deq [N,K] f32 or None,
// offsets [N,G] f32 for a rule with an offset (GGUF Q4_1), else None).
py::tuple quantize(const py::array& w, int bits, int64_t group_size, bool zero_point, bool fp16_scale,
                   bool want_codes, bool want_deq, int rule) {
  const MatrixView v = weight_view(w);
  const QuantSpec spec = resolve_spec(bits, group_size, zero_point, fp16_scale, v.cols, rule);
  const int64_t N = v.rows, K = v.cols, G = K / spec.group_size;
  auto scales = empty<float>({N, G});
  auto zeros = empty<uint8_t>({N, G});
  py::object codes = py::none(), deq = py::none();
  uint8_t* cp = nullptr;
  float* dp = nullptr;
  if (want_codes) {
    auto a = empty<uint8_t>({N, K});
    cp = a.mutable_data();
    codes = a;
  }
  if (want_deq) {
    auto a = empty<float>({N, K});
    dp = a.mutable_data();
    deq = a;
  }
  py::object offsets = py::none();
  float* op = nullptr;
  const GgmlBlockType* t = ggml_block_type(spec.rule);
  if (t && t->has_min) {
    auto a = empty<float>({N, G});
    op = a.mutable_data();
    offsets = a;
  }
  float* sp = scales.mutable_data();
  uint8_t* zp = zeros.mutable_data();
  {
    py::gil_scoped_release nogil;
    quantize_rows(v, spec, cp, sp, zp, dp, op);
  }
  return py::make_tuple(codes, scales, zeros, deq, offsets);
}

py::array_t<float> dequantize(const py::array& codes, const py::array& scales, const py::array& zeros,
                              int64_t group_size, int bits, const py::object& offsets) {
  require_array<uint8_t>(codes, "codes", 2);
  require_array<float>(scales, "scales", 2);
  require_array<uint8_t>(zeros, "zeros", 2);
  require_nonempty(codes, "codes");
  const int64_t N = codes.shape(0), K = codes.shape(1);
  const QuantSpec spec = resolve_spec(bits, group_size, true, false, K);
  const int64_t G = K / spec.group_size;
  require(scales.shape(0) == N && scales.shape(1) == G && zeros.shape(0) == N && zeros.shape(1) == G,
          "scales and zeros must have shape [N, K / group_size] = [" + std::to_string(N) + ", " +
              std::to_string(G) + "]");
  const float* m = nullptr;
  py::array off;
  if (!offsets.is_none()) {
    off = offsets.cast<py::array>();
    require_array<float>(off, "offsets", 2);
    require(off.shape(0) == N && off.shape(1) == G, "offsets must have the shape of scales");
    m = static_cast<const float*>(off.data());
  }
  auto out = empty<float>({N, K});
  const uint8_t* c = static_cast<const uint8_t*>(codes.data());
  const float* s = static_cast<const float*>(scales.data());
  const uint8_t* z = static_cast<const uint8_t*>(zeros.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    dequantize_rows(c, s, z, N, K, spec.group_size, bits, o, m);
  }
  return out;
}

// codes [N, R] uint8 -> words [R, N/8] int32 (qweight from codes, qzeros from zeros).
py::array_t<int32_t> pack_transposed(const py::array& codes) {
  require_array<uint8_t>(codes, "codes", 2);
  require_nonempty(codes, "codes");
  const int64_t N = codes.shape(0), R = codes.shape(1);
  require(N % 8 == 0, "the AWQ gemm layout packs 8 output channels per int32: N = " +
                          std::to_string(N) + " is not a multiple of 8");
  auto out = empty<int32_t>({R, N / 8});
  const uint8_t* src = static_cast<const uint8_t*>(codes.data());
  int32_t* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    pack_awq_transposed(src, N, R, dst);
  }
  return out;
}

py::array_t<uint8_t> unpack_transposed(const py::array& words) {
  require_array<int32_t>(words, "packed words", 2);
  require_nonempty(words, "packed words");
  const int64_t R = words.shape(0), N = words.shape(1) * 8;
  auto out = empty<uint8_t>({N, R});
  const int32_t* src = static_cast<const int32_t*>(words.data());
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    unpack_awq_transposed(src, N, R, dst);
  }
  return out;
}

}  // namespace

void register_quant(py::module_& m) {
  m.def("quantize", &quantize, py::arg("w"), py::arg("bits"), py::arg("group_size"),
        py::arg("zero_point"), py::arg("fp16_scale"), py::arg("want_codes") = true,
        py::arg("want_deq") = false, py::arg("rule") = 0);
  m.def("dequantize", &dequantize, py::arg("codes"), py::arg("scales"), py::arg("zeros"),
        py::arg("group_size"), py::arg("bits"), py::arg("offsets") = py::none());
  m.def("ggml_block_types", [] {
    int n = 0;
    const GgmlBlockType* types = ggml_block_types(&n);
    py::list out;
    for (int i = 0; i < n; ++i) {
      py::dict d;
      d["rule"] = static_cast<int>(types[i].rule);
      d["name"] = types[i].name;
      d["ggml_type"] = types[i].ggml_type;
      d["bits"] = types[i].bits;
      d["block"] = types[i].block;
      d["has_min"] = types[i].has_min;
      d["zero"] = types[i].zero;
      out.append(d);
    }
    return out;
  });
  m.def("pack_awq_transposed", &pack_transposed, py::arg("codes"));
  m.def("unpack_awq_transposed", &unpack_transposed, py::arg("words"));
}

}  // namespace awqkit::bind

// _core.LlamaDecoder: runtime::LlamaDecoder over buffers the Python side owns
// (awqkit.model.decode_runtime builds it from a loaded model). The object keeps a reference
// to every array it points into; forward releases the GIL and refuses concurrent calls.
#include <mutex>

#include "bindings/bind_common.h"
#include "runtime/llama_decoder.h"

namespace awqkit::bind {
namespace {

using runtime::DecoderLayer;
using runtime::DecoderLinear;
using runtime::DecoderStage;

class PyLlamaDecoder {
 public:
  PyLlamaDecoder(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t intermediate,
                 int64_t context, float eps, float attn_scale, const py::list& layers, const py::array& final_norm,
                 const py::array& cos, const py::array& sin) {
    const runtime::DecoderShape shape{hidden, heads, kv_heads, head_dim, intermediate, context, eps, attn_scale};
    require(hidden > 0 && head_dim > 0 && context > 0, "hidden, head_dim and context must be positive");
    std::vector<DecoderLayer> built;
    for (py::size_t l = 0; l < layers.size(); ++l) {
      const py::dict d = layers[l].cast<py::dict>();
      DecoderLayer L;
      const std::string where = "layer " + std::to_string(l);
      L.attn_norm = vector(d["attn_norm"], (where + " attn_norm").c_str(), hidden);
      L.mlp_norm = vector(d["mlp_norm"], (where + " mlp_norm").c_str(), hidden);
      L.q_norm = d.contains("q_norm") && !d["q_norm"].is_none() ? vector(d["q_norm"], "q_norm", head_dim) : nullptr;
      L.k_norm = d.contains("k_norm") && !d["k_norm"].is_none() ? vector(d["k_norm"], "k_norm", head_dim) : nullptr;
      L.qkv = stage(d["qkv"]);
      L.o = stage(d["o"]);
      L.gate_up = stage(d["gate_up"]);
      L.down = stage(d["down"]);
      built.push_back(std::move(L));
    }
    const float* fn = vector(final_norm, "final_norm", hidden);
    const float* c = table(cos, "cos", context, head_dim);
    const float* s = table(sin, "sin", context, head_dim);
    decoder_ = std::make_unique<runtime::LlamaDecoder>(shape, std::move(built), fn, c, s);
  }

  void forward(const py::array& x, py::array out) {
    const runtime::DecoderShape& s = decoder_->shape();
    require_array<float>(x, "x", 2);
    require_array<float>(out, "out", 2);
    require(x.shape(1) == s.hidden && out.shape(1) == s.hidden, "x and out must have ", s.hidden, " columns");
    require(out.writeable(), "out is read-only");
    const int64_t M = x.shape(0), R = out.shape(0);
    const float* xp = static_cast<const float*>(x.data());
    float* op = static_cast<float*>(out.mutable_data());
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    require(lock.owns_lock(), "this LlamaDecoder is running in another thread");
    py::gil_scoped_release nogil;
    decoder_->forward(xp, M, op, R);
  }

  void truncate(int64_t length) {
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    require(lock.owns_lock(), "this LlamaDecoder is running in another thread");
    decoder_->truncate(length);
  }
  int64_t length() const { return decoder_->length(); }
  int prefill() const { return static_cast<int>(decoder_->prefill()); }
  void set_prefill(int mode) {
    require(mode >= 0 && mode <= 3, "prefill must be 0 (exact), 1 (int8), 2 (int16) or 3 (automatic)");
    decoder_->set_prefill(static_cast<runtime::LlamaDecoder::Prefill>(mode));
  }
  int64_t context() const { return decoder_->shape().context; }

 private:
  const float* vector(py::handle obj, const char* name, int64_t n) {
    const py::array a = obj.cast<py::array>();
    require_array<float>(a, name, 1);
    require(a.shape(0) == n, name, " has ", a.shape(0), " entries, expected ", n);
    keep_.append(a);
    return static_cast<const float*>(a.data());
  }
  const float* table(const py::array& a, const char* name, int64_t rows, int64_t cols) {
    require_array<float>(a, name, 2);
    require(a.shape(0) == rows && a.shape(1) == cols, name, " must be [context, head_dim] = [", rows, ", ", cols, "]");
    keep_.append(a);
    return static_cast<const float*>(a.data());
  }
  // A stage: a list of linears, each (buffer, N, K, group_size, bias): group_size > 0 for a
  // packed INT4 buffer, 0 for a float32 weight [N, K].
  DecoderStage stage(py::handle parts) {
    DecoderStage st;
    for (py::handle item : parts.cast<py::list>()) {
      const py::tuple t = item.cast<py::tuple>();
      require(t.size() == 5, "a linear is (buffer, N, K, group_size, bias)");
      DecoderLinear lin;
      const py::array buf = t[0].cast<py::array>();
      lin.N = t[1].cast<int64_t>();
      lin.K = t[2].cast<int64_t>();
      const int64_t gs = t[3].cast<int64_t>();
      if (gs > 0) {
        lin.w = packed_view(buf, lin.N, lin.K, gs);
      } else {
        require_array<float>(buf, "weight", 2);
        require(buf.shape(0) == lin.N && buf.shape(1) == lin.K, "a float weight must be [N, K] = [", lin.N, ", ",
                lin.K, "]");
        lin.fw = static_cast<const float*>(buf.data());
      }
      keep_.append(buf);
      if (!t[4].is_none()) lin.bias = vector(t[4], "bias", lin.N);
      st.parts.push_back(lin);
    }
    return st;
  }

  std::unique_ptr<runtime::LlamaDecoder> decoder_;
  py::list keep_;  // every array a pointer above is into
  std::mutex busy_;
};

}  // namespace

void register_decoder(py::module_& m) {
  py::class_<PyLlamaDecoder>(m, "LlamaDecoder")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, float, const py::list&,
                    const py::array&, const py::array&, const py::array&>(),
           py::arg("hidden"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("intermediate"),
           py::arg("context"), py::arg("eps"), py::arg("attn_scale"), py::arg("layers"), py::arg("final_norm"),
           py::arg("cos"), py::arg("sin"))
      .def("forward", &PyLlamaDecoder::forward, py::arg("x"), py::arg("out"))
      .def("truncate", &PyLlamaDecoder::truncate, py::arg("length"))
      .def_property_readonly("length", &PyLlamaDecoder::length)
      .def_property("prefill", &PyLlamaDecoder::prefill, &PyLlamaDecoder::set_prefill)
      .def_property_readonly("context", &PyLlamaDecoder::context);
}

}  // namespace awqkit::bind

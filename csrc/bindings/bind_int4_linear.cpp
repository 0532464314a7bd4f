#include "bindings/bind_common.h"

#include <algorithm>
#include "int4_linear/linear.h"
#include "int4_linear/packed_layout.h"
#include "common/cpu_features.h"

namespace awqkit::bind {
namespace {

using int4_linear::PackedView;

py::array_t<uint8_t> pack(const py::array& qweight, const py::array& qzeros, const py::array& scales,
                          int64_t group_size) {
  require_array<int32_t>(qweight, "qweight", 2);
  require_array<int32_t>(qzeros, "qzeros", 2);
  require_array(scales, "scales", 2, is_f16(scales), "float16");
  require_nonempty(qweight, "qweight");
  const int64_t K = qweight.shape(0), N = qweight.shape(1) * 8;
  if (group_size == -1) group_size = K;
  int4_linear::check_packed_shape(N, K, group_size);
  const int64_t G = K / group_size;
  require(qzeros.shape(0) == G && qzeros.shape(1) == N / 8 && scales.shape(0) == G && scales.shape(1) == N,
          "inconsistent shapes: qweight [" + std::to_string(K) + ", " + std::to_string(N / 8) + "] with group_size " +
              std::to_string(group_size) + " needs qzeros [" + std::to_string(G) + ", " + std::to_string(N / 8) +
              "] and scales [" + std::to_string(G) + ", " + std::to_string(N) + "]");
  auto out = empty<uint8_t>({int4_linear::packed_nbytes(N, K, group_size)});
  const int32_t* qw = static_cast<const int32_t*>(qweight.data());
  const int32_t* qz = static_cast<const int32_t*>(qzeros.data());
  const uint16_t* sc = static_cast<const uint16_t*>(scales.data());
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    int4_linear::pack_from_awq(qw, qz, sc, N, K, group_size, dst);
  }
  return out;
}

py::tuple unpack(const py::array& packed, int64_t N, int64_t K, int64_t group_size) {
  const PackedView w = packed_view(packed, N, K, group_size);
  auto qweight = empty<int32_t>({K, N / 8});
  auto qzeros = empty<int32_t>({w.G, N / 8});
  py::array scales(py::dtype("float16"), std::vector<py::ssize_t>{w.G, N});
  int32_t* qw = qweight.mutable_data();
  int32_t* qz = qzeros.mutable_data();
  uint16_t* sc = static_cast<uint16_t*>(scales.mutable_data());
  {
    py::gil_scoped_release nogil;
    int4_linear::unpack_to_awq(w, qw, qz, sc);
  }
  return py::make_tuple(qweight, qzeros, scales);
}

// One packed layer and its bias, checked once: PackedLinear is one (a Python subclass), so a
// decode call (a few microseconds of work on small layers) pays only for checking x.
class Int4Linear {
 public:
  Int4Linear(py::array packed, int64_t N, int64_t K, int64_t group_size, py::object bias) {
    rebind(std::move(packed), N, K, group_size, std::move(bias));
  }

  // Points the layer at another buffer and bias (contiguous_layers moves layers into one
  // arena; PackedLinear re-initialised by __init__ or __setstate__, which pybind11 does not
  // run twice on one object). Everything is checked before anything changes.
  void rebind(py::array packed, int64_t N, int64_t K, int64_t group_size, py::object bias) {
    const PackedView w = packed_view(packed, N, K, group_size);
    const float* bias_ptr = nullptr;
    if (!bias.is_none()) {
      py::array b = bias.cast<py::array>();
      require_array<float>(b, "bias", 1);
      require(b.shape(0) == N, "bias has ", b.shape(0), " entries, expected out_features = ", N);
      bias_ptr = static_cast<const float*>(b.data());
      bias = std::move(b);  // keeps the array the pointer is into
    }
    w_ = w;
    packed_ = std::move(packed);
    bias_ = std::move(bias);
    bias_ptr_ = bias_ptr;
  }

  py::array_t<float> forward(const py::array& x, const py::object& out, int path, int activation) const {
    require_array<float>(x, "x", 2);
    require_nonempty(x, "x");
    require(x.shape(1) == w_.K, "x has ", x.shape(1), " features per row, the layer expects in_features = ", w_.K);
    require(path >= 0 && path <= 3, "kernel path must be 0 (auto), 1 (gemv), 2 (gemm) or 3 (digits)");
    require(activation >= 0 && activation <= 2, "activation must be 0 (float), 1 (int8) or 2 (int16)");
    const int64_t M = x.shape(0), N = w_.N;
    py::array_t<float> y = out.is_none() ? empty<float>({M, N}) : checked_out(out.cast<py::array>(), x, M);
    const float* xp = static_cast<const float*>(x.data());
    float* yp = y.mutable_data();
    const Pinned p = pin();
    {
      py::gil_scoped_release nogil;
      int4_linear::linear_forward(p.w, xp, M, p.bias_ptr, yp, static_cast<int4_linear::Path>(path),
                           static_cast<int4_linear::Activation>(activation));
    }
    return y;
  }

  const PackedView& view() const { return w_; }

  // What one call reads, taken with the GIL held: another thread may rebind the layer
  // while this call runs without the GIL, so the call keeps its own view and references.
  struct Pinned {
    PackedView w;
    const float* bias_ptr;
    py::object packed, bias;
  };
  Pinned pin() const { return Pinned{w_, bias_ptr_, packed_, bias_}; }

 private:
  py::array_t<float> checked_out(const py::array& o, const py::array& x, int64_t M) const {
    const int64_t N = w_.N;
    require_array<float>(o, "out", 2);
    require(o.shape(0) == M && o.shape(1) == N, "out must have shape [M, N] = [", M, ", ", N, "]");
    require(o.writeable(), "out is read-only");
    // Threads write y while others still read all of x: an aliased out would be silently wrong.
    const auto bytes_overlap = [](const void* a, int64_t na, const void* b, int64_t nb) {
      const char *pa = static_cast<const char*>(a), *pb = static_cast<const char*>(b);
      return pa < pb + nb && pb < pa + na;
    };
    const int64_t ny = M * N * int64_t{sizeof(float)};
    require(!bytes_overlap(o.data(), ny, x.data(), M * w_.K * int64_t{sizeof(float)}) &&
                (bias_ptr_ == nullptr || !bytes_overlap(o.data(), ny, bias_ptr_, N * int64_t{sizeof(float)})) &&
                !bytes_overlap(o.data(), ny, w_.data, int4_linear::packed_nbytes(w_.N, w_.K, w_.group_size)),
            "out must not share memory with x, the bias or the layer's packed weights; pass a new array");
    return o.cast<py::array_t<float>>();
  }

  PackedView w_;
  py::array packed_;  // owns the bytes w_ points into
  py::object bias_;
  const float* bias_ptr_ = nullptr;
};

// The call slot of Int4Linear (and so of PackedLinear, which inherits it). A pybind11 method
// call costs ~0.5 us of argument matching and a Python-level __call__ ~0.4 us more: on a
// small decode layer that is a tenth of the call while the memory stream idles. This slot
// takes `layer(x)` with x one aligned, C-contiguous float32 [M, K] ndarray straight to the
// kernel; anything else (keywords, out=, float16, N-D, bad input) goes to the `_call_slow`
// method, which does every check and raises the errors (PackedLinear overrides it).
namespace fast_call {

Int4Linear* layer_of(PyObject* self) {
  auto* inst = reinterpret_cast<py::detail::instance*>(self);
  if (!inst->simple_layout) return nullptr;  // only a multiply-inherited subclass; the slow path copes
  // The value pointer alone is not enough: a method called on an instance whose __init__
  // never ran makes pybind11 allocate (not construct) the value, so it is only valid once
  // the holder is constructed. The slow path raises the error for such an instance.
  if (!inst->simple_holder_constructed) return nullptr;
  return static_cast<Int4Linear*>(inst->simple_value_holder[0]);
}

// x as the kernel takes it, or null for the slow path.
const float* plain_rows(PyObject* x, int64_t K, int64_t* M) {
  const auto& api = py::detail::npy_api::get();
  if (Py_TYPE(x) != api.PyArray_Type_) return nullptr;
  const auto* a = py::detail::array_proxy(x);
  const auto* d = py::detail::array_descriptor_proxy(a->descr);
  constexpr int kLayout = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  if (a->nd != 2 || d->type_num != py::detail::npy_api::NPY_FLOAT_ || d->byteorder == '>' ||
      (a->flags & kLayout) != kLayout || a->dimensions[1] != K || a->dimensions[0] < 1)
    return nullptr;
  *M = a->dimensions[0];
  return reinterpret_cast<const float*>(a->data);
}

PyObject* call_slow(PyObject* self, PyObject* args, PyObject* kwargs) {
  PyObject* method = PyObject_GetAttrString(self, "_call_slow");
  if (!method) return nullptr;
  PyObject* result = PyObject_Call(method, args, kwargs);
  Py_DECREF(method);
  return result;
}

PyObject* call(PyObject* self, PyObject* args, PyObject* kwargs) {
  const Int4Linear* layer = layer_of(self);
  int64_t M = 0;
  const float* x = nullptr;
  if (layer && PyTuple_GET_SIZE(args) == 1 && (!kwargs || PyDict_GET_SIZE(kwargs) == 0))
    x = plain_rows(PyTuple_GET_ITEM(args, 0), layer->view().K, &M);
  if (!x) return call_slow(self, args, kwargs);
  const Int4Linear::Pinned p = layer->pin();
  const auto& api = py::detail::npy_api::get();
  const Py_intptr_t dims[2] = {M, p.w.N};
  PyObject* y = api.PyArray_NewFromDescr_(api.PyArray_Type_, api.PyArray_DescrFromType_(py::detail::npy_api::NPY_FLOAT_),
                                          2, dims, nullptr, nullptr, 0, nullptr);
  if (!y) return nullptr;
  bool failed = false;
  PyThreadState* saved = PyEval_SaveThread();
  try {
    int4_linear::linear_forward(p.w, x, M, p.bias_ptr, reinterpret_cast<float*>(py::detail::array_proxy(y)->data));
  } catch (...) {
    failed = true;  // the slow path runs it again and raises the error as Python sees it
  }
  PyEval_RestoreThread(saved);
  if (!failed) return y;
  Py_DECREF(y);
  return call_slow(self, args, kwargs);
}

}  // namespace fast_call

}  // namespace

void register_int4_linear(py::module_& m) {
  m.def("int4_pack_from_awq", &pack, py::arg("qweight"), py::arg("qzeros"), py::arg("scales"), py::arg("group_size"));
  m.def("int4_unpack_to_awq", &unpack, py::arg("packed"), py::arg("N"), py::arg("K"), py::arg("group_size"));
  // Set before the type is readied, so Python subclasses (PackedLinear) inherit the slot itself.
  py::class_<Int4Linear> layer_class(m, "Int4Linear", py::custom_type_setup([](PyHeapTypeObject* type) {
                          type->ht_type.tp_call = fast_call::call;
                        }));
  // Methods take the Python object and look the layer up through layer_of_checked, so an
  // instance whose __init__ never ran raises instead of reading uninitialised memory.
  const auto layer_of_checked = [](py::handle self) -> Int4Linear& {
    return initialised<Int4Linear>(self, "self", "Int4Linear");
  };
  layer_class.def(py::init<py::array, int64_t, int64_t, int64_t, py::object>(), py::arg("packed"), py::arg("N"),
           py::arg("K"), py::arg("group_size"), py::arg("bias"))
      .def("_rebind",
           [layer_of_checked](py::handle self, py::array packed, int64_t N, int64_t K, int64_t group_size,
                              py::object bias) {
             layer_of_checked(self).rebind(std::move(packed), N, K, group_size, std::move(bias));
           },
           py::arg("packed"), py::arg("N"), py::arg("K"), py::arg("group_size"), py::arg("bias"))
      .def("_forward",
           [layer_of_checked](py::handle self, const py::array& x, const py::object& out, int path, int activation) {
             return layer_of_checked(self).forward(x, out, path, activation);
           },
           py::arg("x"), py::arg("out") = py::none(), py::arg("path") = 0, py::arg("activation") = 0);
  // The call slot's checked path: for a bare Int4Linear the checked forward itself.
  layer_class.attr("_call_slow") = layer_class.attr("_forward");
  m.def("int4_packed_nbytes", [](int64_t N, int64_t K, int64_t group_size) {
    int4_linear::check_packed_shape(N, K, group_size);  // refuses shapes whose size overflows int64
    return int4_linear::packed_nbytes(N, K, group_size);
  }, py::arg("N"), py::arg("K"), py::arg("group_size"));
}

}  // namespace awqkit::bind

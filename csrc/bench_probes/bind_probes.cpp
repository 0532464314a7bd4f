// awqkit._bench_probes: the machine-limit probes of benchmarks/bench_gemm.py, in their own
// module so that the shipped awqkit._core carries no benchmark code. Built only with
// -DAWQKIT_BENCH_PROBES=ON (make dev, make bench, make sanitize); a wheel never has it.
//
// It links the same native objects as _core but is a separate module: its kernels dispatch
// through its own copy of the ISA state, which starts where _core's does (the CPU's best
// level under AWQKIT_ISA) and is not moved by awqkit.set_isa(). Layers are read through
// PackedLinear's public attributes and pinned (references held) while the probes run
// without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "bindings/bind_common.h"
#include "common/cpu_features.h"
#include "int4_linear/linear.h"
#include "int4_linear/packed_layout.h"
#if AWQKIT_X86_SIMD
#include "bench_probes/probes.h"
#endif

namespace awqkit::bench_probes {
namespace {

namespace py = pybind11;
using bind::require_array;

// One layer as the probes read it, with references that keep its buffers alive.
struct Pinned {
  int4_linear::PackedView w;
  const float* bias_ptr = nullptr;
  py::object packed, bias;
};

Pinned pin_layer(py::handle h) {
  const py::object cls = py::module_::import("awqkit.kernels").attr("PackedLinear");
  require(py::isinstance(h, cls), "layers must be initialised Int4Linear / PackedLinear objects");
  py::object packed, bias;
  int64_t N = 0, K = 0, gs = 0;
  try {
    packed = h.attr("packed");
    bias = h.attr("bias");
    N = h.attr("out_features").cast<int64_t>();
    K = h.attr("in_features").cast<int64_t>();
    gs = h.attr("group_size").cast<int64_t>();
  } catch (const py::error_already_set&) {
    fail("layers must be initialised Int4Linear / PackedLinear objects");
  }
  const py::array a = packed.cast<py::array>();
  require_array<uint8_t>(a, "packed", 1);
  int4_linear::check_packed_shape(N, K, gs);
  require(a.shape(0) == int4_linear::packed_nbytes(N, K, gs), "packed buffer has the wrong size");
  Pinned p;
  p.w = int4_linear::make_view(static_cast<const uint8_t*>(a.data()), N, K, gs);
  if (!bias.is_none()) {
    const py::array b = bias.cast<py::array>();
    require_array<float>(b, "bias", 1);
    require(b.shape(0) == N, "bias has the wrong size");
    p.bias_ptr = static_cast<const float*>(b.data());
  }
  p.packed = packed;
  p.bias = bias;
  return p;
}

std::vector<Pinned> pin_layers(const std::vector<py::handle>& objects, int passes) {
  require(!objects.empty() && passes > 0, "need at least one layer and one pass");
  std::vector<Pinned> layers;
  for (py::handle h : objects) layers.push_back(pin_layer(h));
  return layers;
}

// Median over passes of (seconds for one pass calling fn on every layer) / layers.
template <typename Fn>
double median_seconds_per_layer(const std::vector<Pinned>& layers, int passes, Fn&& fn) {
  std::vector<double> per_call;
  for (int p = 0; p < passes; ++p) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const Pinned& l : layers) fn(l);
    per_call.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / layers.size());
  }
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

#if AWQKIT_X86_SIMD
void require_avx512(const char* what) {
  require(detected_isa() == Isa::avx512_vnni, "the ", what, " probe needs AVX-512");
}
#endif

}  // namespace
}  // namespace awqkit::bench_probes

PYBIND11_MODULE(_bench_probes, m) {
  namespace py = pybind11;
  using namespace awqkit;
  using namespace awqkit::bench_probes;
  m.doc() = "awqkit benchmark probes (not shipped; built with -DAWQKIT_BENCH_PROBES=ON)";
  bind::register_error_translator();
  // Decode with no Python between layers (as ggml's C graph runs them): median seconds per
  // call of the automatic path over passes through `layers`, x float32 [M, K] shared by all.
  m.def("probe_decode_rotation", [](const std::vector<py::handle>& objects, const py::array& x, int passes) {
    require_array<float>(x, "x", 2);
    const std::vector<Pinned> layers = pin_layers(objects, passes);
    const int64_t M = x.shape(0), K = layers[0].w.K;
    int64_t N = 0;
    for (const Pinned& l : layers) {
      require(l.w.K == K, "every layer must have the same in_features");
      N = std::max(N, l.w.N);
    }
    require(x.shape(1) == K, "x must have in_features columns");
    const float* xp = static_cast<const float*>(x.data());
    std::vector<float> y(static_cast<size_t>(M * N));
    py::gil_scoped_release nogil;
    return median_seconds_per_layer(layers, passes, [&](const Pinned& l) {
      int4_linear::linear_forward(l.w, xp, M, l.bias_ptr, y.data(), int4_linear::Path::automatic,
                                  int4_linear::Activation::f32);
    });
  }, py::arg("layers"), py::arg("x"), py::arg("passes"));
#if AWQKIT_X86_SIMD
  // Limit probes (AVX-512 CPUs only; not built off x86-64).
  m.def("probe_stream_read", [](const py::array& buf) {
    require_avx512("bandwidth");
    bind::require_dtype(bind::has_dtype<uint8_t>(buf), buf, "buf", "uint8");
    bind::require_contiguous(buf, "buf");
    require(reinterpret_cast<uintptr_t>(buf.data()) % 64 == 0 && buf.nbytes() % 64 == 0,
            "buf must be 64-byte aligned and a multiple of 64 bytes");
    const uint8_t* p = static_cast<const uint8_t*>(buf.data());
    const int64_t n = buf.nbytes();
    py::gil_scoped_release nogil;
    return stream_read(p, n);
  }, py::arg("buf"));
  // The same rotation reading each layer's blocks with no arithmetic, split and synchronised
  // per call as the decode kernels are: what any kernel called once per layer could reach.
  m.def("probe_read_rotation", [](const std::vector<py::handle>& objects, int passes) {
    require_avx512("read");
    const std::vector<Pinned> layers = pin_layers(objects, passes);
    double sink = 0.0;
    py::gil_scoped_release nogil;
    const double s = median_seconds_per_layer(layers, passes, [&](const Pinned& l) {
      sink += read_blocks(l.w.data, l.w.blocks, l.w.block_bytes);
    });
    volatile double keep = sink;  // the sums are the loads' only use
    (void)keep;
    return s;
  }, py::arg("layers"), py::arg("passes"));
  m.def("probe_fma_peak", [](int64_t iters) {
    require_avx512("FMA");
    py::gil_scoped_release nogil;
    return fma_peak(iters);
  }, py::arg("iters"));
#endif
}

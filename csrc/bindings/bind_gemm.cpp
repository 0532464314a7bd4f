#include "bindings/bind_common.h"
#include "gemm/linear.h"
#include "gemm/packed_layout.h"
#include "gemm/probes/probes.h"
#include "common/cpu_features.h"

namespace awqkit::bind {
namespace {

using gemm::PackedView;

PackedView packed_view(const py::array& packed, int64_t N, int64_t K, int64_t group_size) {
  require_array<uint8_t>(packed, "packed", 1);
  gemm::check_packed_shape(N, K, group_size);
  require(packed.shape(0) == gemm::packed_nbytes(N, K, group_size),
          "packed buffer has " + std::to_string(packed.shape(0)) + " bytes, expected " +
              std::to_string(gemm::packed_nbytes(N, K, group_size)) + " for N, K, group_size = " +
              std::to_string(N) + ", " + std::to_string(K) + ", " + std::to_string(group_size));
  return gemm::make_view(static_cast<const uint8_t*>(packed.data()), N, K, group_size);
}

py::array_t<uint8_t> pack(const py::array& qweight, const py::array& qzeros, const py::array& scales,
                          int64_t group_size) {
  require_array<int32_t>(qweight, "qweight", 2);
  require_array<int32_t>(qzeros, "qzeros", 2);
  require_array(scales, "scales", 2, is_f16(scales), "float16");
  require_nonempty(qweight, "qweight");
  const int64_t K = qweight.shape(0), N = qweight.shape(1) * 8;
  if (group_size == -1) group_size = K;
  gemm::check_packed_shape(N, K, group_size);
  const int64_t G = K / group_size;
  require(qzeros.shape(0) == G && qzeros.shape(1) == N / 8 && scales.shape(0) == G && scales.shape(1) == N,
          "inconsistent shapes: qweight [" + std::to_string(K) + ", " + std::to_string(N / 8) + "] with group_size " +
              std::to_string(group_size) + " needs qzeros [" + std::to_string(G) + ", " + std::to_string(N / 8) +
              "] and scales [" + std::to_string(G) + ", " + std::to_string(N) + "]");
  auto out = empty<uint8_t>({gemm::packed_nbytes(N, K, group_size)});
  const int32_t* qw = static_cast<const int32_t*>(qweight.data());
  const int32_t* qz = static_cast<const int32_t*>(qzeros.data());
  const uint16_t* sc = static_cast<const uint16_t*>(scales.data());
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    gemm::pack_from_awq(qw, qz, sc, N, K, group_size, dst);
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
    gemm::unpack_to_awq(w, qw, qz, sc);
  }
  return py::make_tuple(qweight, qzeros, scales);
}

py::array_t<float> forward(const py::array& packed, int64_t N, int64_t K, int64_t group_size, const py::array& x,
                           const py::object& bias, const py::object& out, int path, int activation) {
  const PackedView w = packed_view(packed, N, K, group_size);
  require_array<float>(x, "x", 2);
  require_nonempty(x, "x");
  require(x.shape(1) == K, "x has " + std::to_string(x.shape(1)) + " features per row, the layer expects in_features = " +
                               std::to_string(K));
  const int64_t M = x.shape(0);
  const float* bp = nullptr;
  py::array b;
  if (!bias.is_none()) {
    b = bias.cast<py::array>();
    require_array<float>(b, "bias", 1);
    require(b.shape(0) == N, "bias has " + std::to_string(b.shape(0)) + " entries, expected out_features = " +
                                 std::to_string(N));
    bp = static_cast<const float*>(b.data());
  }
  py::array_t<float> y;
  if (out.is_none()) {
    y = empty<float>({M, N});
  } else {
    py::array o = out.cast<py::array>();
    require_array<float>(o, "out", 2);
    require(o.shape(0) == M && o.shape(1) == N, "out must have shape [M, N] = [" + std::to_string(M) + ", " +
                                                    std::to_string(N) + "]");
    require(o.writeable(), "out is read-only");
    y = o.cast<py::array_t<float>>();
    // Threads write y while others still read all of x: an aliased out would be silently wrong.
    const auto bytes_overlap = [](const void* a, int64_t na, const void* b, int64_t nb) {
      const char *pa = static_cast<const char*>(a), *pb = static_cast<const char*>(b);
      return pa < pb + nb && pb < pa + na;
    };
    const int64_t ny = M * N * int64_t{sizeof(float)};
    require(!bytes_overlap(y.data(), ny, x.data(), M * K * int64_t{sizeof(float)}) &&
                (bp == nullptr || !bytes_overlap(y.data(), ny, bp, N * int64_t{sizeof(float)})),
            "out must not share memory with x or bias");
  }
  require(path >= 0 && path <= 3, "kernel path must be 0 (auto), 1 (gemv), 2 (gemm) or 3 (digits)");
  require(activation == 0 || activation == 1, "activation must be 0 (float) or 1 (int8)");
  const float* xp = static_cast<const float*>(x.data());
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    gemm::linear_forward(w, xp, M, bp, yp, static_cast<gemm::Path>(path), static_cast<gemm::Activation>(activation));
  }
  return y;
}

}  // namespace

void register_gemm(py::module_& m) {
  m.def("gemm_pack", &pack, py::arg("qweight"), py::arg("qzeros"), py::arg("scales"), py::arg("group_size"));
  m.def("gemm_unpack", &unpack, py::arg("packed"), py::arg("N"), py::arg("K"), py::arg("group_size"));
  m.def("gemm_forward", &forward, py::arg("packed"), py::arg("N"), py::arg("K"), py::arg("group_size"),
        py::arg("x"), py::arg("bias"), py::arg("out"), py::arg("path"), py::arg("activation") = 0);
  // Limit probes for benchmarks/bench_gemm.py (AVX-512 CPUs only).
  m.def("probe_stream_read", [](const py::array& buf) {
    require(detected_isa() == Isa::avx512, "the bandwidth probe needs AVX-512");
    require_dtype(has_dtype<uint8_t>(buf), buf, "buf", "uint8");
    require_contiguous(buf, "buf");
    require(reinterpret_cast<uintptr_t>(buf.data()) % 64 == 0 && buf.nbytes() % 64 == 0,
            "buf must be 64-byte aligned and a multiple of 64 bytes");
    const uint8_t* p = static_cast<const uint8_t*>(buf.data());
    const int64_t n = buf.nbytes();
    py::gil_scoped_release nogil;
    return gemm::probes::stream_read(p, n);
  }, py::arg("buf"));
  m.def("probe_fma_peak", [](int64_t iters) {
    require(detected_isa() == Isa::avx512, "the FMA probe needs AVX-512");
    py::gil_scoped_release nogil;
    return gemm::probes::fma_peak(iters);
  }, py::arg("iters"));
  m.def("gemm_packed_nbytes", &gemm::packed_nbytes, py::arg("N"), py::arg("K"), py::arg("group_size"));
}

}  // namespace awqkit::bind

// Bindings of the AWQ search engine: activation statistics, scale search, clip search.
#include <algorithm>

#include "bindings/bind_common.h"
#include "quant/quantize.h"
#include "search/activation_stats.h"
#include "search/quadratic_form_amx.h"
#include "search/clip_search.h"
#include "search/gptq.h"
#include "search/gram.h"
#include "search/scale_search.h"

namespace awqkit::bind {
namespace {

MatrixView float_view(const py::array& a, const char* name) {
  require_dtype(has_dtype<float>(a) || is_f16(a), a, name, "float32 or float16");
  require_ndim(a, name, 2);
  const int64_t ld = row_stride_2d(a, name);
  return MatrixView{a.data(), is_f16(a) ? FloatType::f16 : FloatType::f32, a.shape(0), a.shape(1), ld};
}

std::vector<MatrixView> weight_views(const std::vector<py::array>& weights) {
  std::vector<MatrixView> views;
  for (size_t i = 0; i < weights.size(); ++i) {
    const std::string name = "weights[" + std::to_string(i) + "]";
    views.push_back(float_view(weights[i], name.c_str()));
    require_nonempty(weights[i], name.c_str());
  }
  return views;
}

template <typename T>
py::array_t<T> to_array(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

const double* vector_arg(const py::array& a, const char* name, int64_t K) {
  require_array<double>(a, name, 1);
  require(a.shape(0) == K, std::string(name) + " must have K = " + std::to_string(K) + " entries, got " +
                               std::to_string(a.shape(0)));
  return static_cast<const double*>(a.data());
}

constexpr const char* kStats = "ActivationStats";

// The C++ statistics behind a bound ActivationStats (checked to be initialised).
ActivationStats& stats_of(py::handle self, const char* what = "self") {
  return initialised<ActivationStats>(self, what, kStats);
}

// Gram panels from either a native ActivationStats or a [K, K] float64 array, checked to be
// within the float32 range of the search.
GramPanels panels_from(const py::object& gram, int64_t* K, int64_t* n_tokens) {
  if (py::isinstance<ActivationStats>(gram)) {
    const ActivationStats& st = stats_of(gram, "gram");
    *K = st.in_features();
    py::gil_scoped_release nogil;
    return st.gram_panels(n_tokens);  // with its token count, at one instant
  }
  py::array a = gram.cast<py::array>();
  require_array<double>(a, "gram", 2);
  require(a.shape(0) == a.shape(1), "gram must be square");
  *K = a.shape(0);
  const double* g = static_cast<const double*>(a.data());
  py::gil_scoped_release nogil;
  require_gram_in_search_range(g, *K, *K);
  return build_gram_panels(g, *K, *K, /*with_amx=*/true);
}

// Checked weights, quantizer spec and Gram panels: what every search entry point starts from.
struct SearchInputs {
  std::vector<MatrixView> views;
  QuantSpec quant;
  GramPanels P;
  int64_t K = 0, n_tokens = 0;
};

SearchInputs search_inputs(const std::vector<py::array>& weights, const py::object& gram, int64_t n_tokens,
                           int bits, int64_t group_size, bool zero_point, bool fp16_scale, int rule) {
  SearchInputs in;
  in.views = weight_views(weights);
  require(!in.views.empty(), "weights is empty: pass the list of linears that share the input");
  const int64_t k = in.views[0].cols;
  in.quant = resolve_spec(bits, group_size, zero_point, fp16_scale, k, rule);
  check_weights(in.views, k, in.quant);
  int64_t n_stats = 0;
  in.P = panels_from(gram, &in.K, &n_stats);
  in.n_tokens = n_tokens < 0 ? n_stats : n_tokens;
  require(in.K == k, "the activations have K = " + std::to_string(in.K) + " features but the weights have " +
                         std::to_string(k));
  require(in.n_tokens > 0, "no calibration tokens (empty calibration set)");
  return in;
}

py::dict search_scale_py(const std::vector<py::array>& weights, const py::object& gram, int64_t n_tokens,
                         const py::array& saliency, int bits, int64_t group_size, bool zero_point,
                         bool fp16_scale, int n_grid, bool duo, bool plain, bool identity, int rule,
                         int64_t part, int64_t parts) {
  const SearchInputs in = search_inputs(weights, gram, n_tokens, bits, group_size, zero_point, fp16_scale, rule);
  const int64_t K = in.K;
  ScaleSearchSpec spec;
  spec.quant = in.quant;
  const double* sal = vector_arg(saliency, "saliency", K);
  spec.n_grid = n_grid;
  spec.duo = duo;
  spec.plain = plain;
  spec.identity = identity;
  spec.part = part, spec.parts = parts;
  ScaleSearchOutput out;
  {
    py::gil_scoped_release nogil;
    out = search_scale(in.views, in.P, in.n_tokens, sal, spec);
  }
  const py::ssize_t C = static_cast<py::ssize_t>(out.losses.size());
  py::dict d;
  d["ratios"] = to_array(out.ratios, {C});
  d["losses"] = to_array(out.losses, {C});
  d["duo"] = to_array(out.duo, {C});
  d["identity"] = to_array(out.identity, {C});
  d["excluded"] = to_array(out.excluded, {C});
  d["candidates"] = to_array(out.candidates, {C, K});
  d["w_mean"] = to_array(out.w_mean, {K});
  d["best"] = out.best;
  d["rtn_loss"] = out.rtn_loss;
  return d;
}

py::dict scale_losses_py(const std::vector<py::array>& weights, const py::object& gram,
                                    int64_t n_tokens, const py::array& S, int bits, int64_t group_size,
                                    bool zero_point, bool fp16_scale, int rule, bool require_storable) {
  const SearchInputs in = search_inputs(weights, gram, n_tokens, bits, group_size, zero_point, fp16_scale, rule);
  const int64_t K = in.K;
  require_array<float>(S, "scales", 2);
  require(S.shape(1) == K, "scales must have K = " + std::to_string(K) + " columns");
  const float* s = static_cast<const float*>(S.data());
  const int64_t C = S.shape(0);
  ScaleLosses scored;
  {
    py::gil_scoped_release nogil;
    scored = scale_losses(in.views, in.P, in.n_tokens, in.quant, s, C);
  }
  require(!require_storable || C == 0 || std::find(scored.excluded.begin(), scored.excluded.end(), 0) != scored.excluded.end(),
          C == 1 ? "these scales make" : "every one of these scale candidates makes",
          " a group scale of the scaled weights overflow ", fp16_scale ? "float16 (at most 65504)" : "float32",
          ", so the result cannot be stored", fp16_scale ? "; use smaller scales or scale_dtype='float32'" : "");
  py::dict d;
  d["losses"] = to_array(scored.losses, {static_cast<py::ssize_t>(C)});
  d["excluded"] = to_array(scored.excluded, {static_cast<py::ssize_t>(C)});
  return d;
}

py::array_t<double> group_gram_blocks_py(const py::object& x, int64_t stride, int64_t group_size) {
  std::vector<double> blocks;
  int64_t K = 0;
  if (py::isinstance<ActivationStats>(x)) {
    const ActivationStats& st = stats_of(x, "x");
    K = st.in_features();
    group_size = resolve_spec(4, group_size, true, true, K).group_size;
    require(stride == 1, "sampling tokens needs the raw activations, not statistics");
    py::gil_scoped_release nogil;
    blocks = st.gram_group_blocks(group_size);
  } else {
    py::array a = x.cast<py::array>();
    const MatrixView v = float_view(a, "x");
    K = v.cols;
    group_size = resolve_spec(4, group_size, true, true, K).group_size;
    require(v.rows > 0, "x has no tokens (empty calibration set)");
    require(stride >= 1, "stride must be >= 1");
    py::gil_scoped_release nogil;
    require_finite_activations(v, gram_activation_limit());  // the blocks are summed in float32 chunks too
    blocks = group_gram_blocks(v, stride, group_size);
  }
  const py::ssize_t G = K / group_size;
  return to_array(blocks, {G, static_cast<py::ssize_t>(group_size), static_cast<py::ssize_t>(group_size)});
}

py::dict search_clip_py(const py::array& w, const py::array& blocks, int64_t n_tokens, int bits,
                        int64_t group_size, bool zero_point, bool fp16_scale, int n_grid, int n_shrink,
                        bool asymmetric, int rule, bool refit, int n_expand) {
  const MatrixView v = float_view(w, "w");
  require_nonempty(w, "w");
  ClipSpec spec;
  spec.quant = resolve_spec(bits, group_size, zero_point, fp16_scale, v.cols, rule);
  spec.n_grid = n_grid;
  spec.n_shrink = n_shrink;
  spec.asymmetric = asymmetric;
  spec.refit = refit;
  spec.n_expand = n_expand;
  check_weights({v}, v.cols, spec.quant);
  const int64_t gs = spec.quant.group_size, G = v.cols / gs, N = v.rows;
  require_dtype(has_dtype<double>(blocks), blocks, "gram blocks", "float64");
  require_contiguous(blocks, "gram blocks");
  require(blocks.ndim() == 3 && blocks.shape(0) == G && blocks.shape(1) == gs && blocks.shape(2) == gs,
          "gram blocks must have shape [G, group_size, group_size]");
  require(n_tokens > 0, "no calibration tokens (n_tokens = ", n_tokens, ")");
  const double* b = static_cast<const double*>(blocks.data());
  ClipOutput out;
  {
    py::gil_scoped_release nogil;
    for (int64_t g = 0; g < G; ++g) require_gram_in_search_range(b + g * gs * gs, gs, gs);
    out = search_clip(v, b, n_tokens, spec);
  }
  py::dict d;
  d["max_val"] = to_array(out.max_val, {N, G});
  d["min_val"] = to_array(out.min_val, {N, G});
  d["err_before"] = to_array(out.err_before, {N, G});
  d["err_after"] = to_array(out.err_after, {N, G});
  d["shrink_max"] = to_array(out.shrink_max, {N, G});
  d["shrink_min"] = to_array(out.shrink_min, {N, G});
  if (refit) {
    d["scale"] = to_array(out.scale, {N, G});
    d["offset"] = to_array(out.offset, {N, G});
    d["codes"] = to_array(out.codes, {N, v.cols});
  }
  return d;
}

GPTQFactor gptq_factor_py(const py::array& H, double damp, bool act_order) {
  require_array<double>(H, "H", 2);
  require_nonempty(H, "H");
  require(H.shape(0) == H.shape(1), "H must be square [K, K], got [", H.shape(0), ", ", H.shape(1), "]");
  const double* h = static_cast<const double*>(H.data());
  const int64_t K = H.shape(0);
  py::gil_scoped_release nogil;
  return gptq_factor(h, K, K, damp, act_order);
}

py::dict gptq_quantize_py(const py::array& w, const GPTQFactor& f, int bits, int64_t group_size, bool zero_point,
                          bool fp16_scale, int64_t block_size, bool static_groups, const py::object& scales,
                          const py::object& zeros) {
  const MatrixView v = float_view(w, "w");
  require_nonempty(w, "w");
  GPTQSpec spec;
  spec.quant = resolve_spec(bits, group_size, zero_point, fp16_scale, v.cols);
  spec.block_size = block_size;
  spec.static_groups = static_groups;
  const int64_t N = v.rows, K = v.cols, G = K / spec.quant.group_size;
  require(scales.is_none() == zeros.is_none(), "give both scales and zeros, or neither");
  py::array sa, za;
  const float* sp = nullptr;
  const uint8_t* zp = nullptr;
  if (!scales.is_none()) {
    sa = scales.cast<py::array>();
    za = zeros.cast<py::array>();
    require_array<float>(sa, "scales", 2);
    require_array<uint8_t>(za, "zeros", 2);
    require(sa.shape(0) == N && sa.shape(1) == G && za.shape(0) == N && za.shape(1) == G,
            "scales and zeros must be [N, G] = [", N, ", ", G, "]");
    sp = static_cast<const float*>(sa.data());
    zp = static_cast<const uint8_t*>(za.data());
  }
  GPTQOutput out;
  {
    py::gil_scoped_release nogil;
    out = gptq_quantize(v, f, spec, sp, zp);
  }
  py::dict d;
  d["codes"] = to_array(out.codes, {N, K});
  d["scales"] = to_array(out.scales, {N, G});
  d["zeros"] = to_array(out.zeros, {N, G});
  d["loss"] = to_array(out.loss, {N});
  d["block_columns"] = gptq_block_columns(block_size, spec.quant.group_size);
  return d;
}

}  // namespace

void register_search(py::module_& m) {
  // Made only by gptq_factor (no constructor from Python): an instance always holds a valid factor.
  py::class_<GPTQFactor>(m, "GPTQFactor")
      .def_property_readonly("in_features", [](const GPTQFactor& f) { return f.K; })
      .def_property_readonly("damp", [](const GPTQFactor& f) { return f.damp; })
      .def_property_readonly("perm", [](const GPTQFactor& f) { return to_array(f.perm, {f.K}); })
      .def_property_readonly("dead", [](const GPTQFactor& f) {
        std::vector<bool> b(f.dead.begin(), f.dead.end());
        py::array_t<bool> a({f.K});
        std::copy(b.begin(), b.end(), a.mutable_data());
        return a;
      });
  m.def("gptq_factor", &gptq_factor_py, py::arg("H"), py::arg("damp"), py::arg("act_order"));
  m.def("gptq_quantize", &gptq_quantize_py, py::arg("w"), py::arg("factor"), py::arg("bits"), py::arg("group_size"),
        py::arg("zero_point"), py::arg("fp16_scale"), py::arg("block_size"), py::arg("static_groups"),
        py::arg("scales") = py::none(), py::arg("zeros") = py::none());
  // Methods take the Python object and look the statistics up through stats_of, so an
  // instance whose __init__ never ran raises instead of reading uninitialised memory. The
  // statistics lock themselves (activation_stats.h), so the GIL is released around the work.
  py::class_<ActivationStats>(m, "ActivationStats")
      .def(py::init<int64_t, bool>(), py::arg("in_features"), py::arg("gram"))
      .def("update",
           [](py::handle self, const py::array& x) {
             ActivationStats& s = stats_of(self);
             const MatrixView v = float_view(x, "x");
             py::gil_scoped_release nogil;
             s.update(v);
           },
           py::arg("x"))
      .def("merge",
           [](py::handle self, py::handle other) {
             ActivationStats& s = stats_of(self);
             const ActivationStats& o = stats_of(other, "other");
             py::gil_scoped_release nogil;  // K^2 doubles of Gram at large K
             s.merge(o);
           },
           py::arg("other"))
      .def("set_bounds",
           [](py::handle self, const py::array& bound, int64_t max_tokens) {
             ActivationStats& s = stats_of(self);
             const double* b = vector_arg(bound, "max_abs", s.in_features());
             py::gil_scoped_release nogil;
             s.set_bounds(b, max_tokens);
           },
           py::arg("max_abs"), py::arg("max_tokens"))
      .def("bounds",
           [](py::handle self) -> py::object {
             const ActivationStats& s = stats_of(self);
             if (!s.bounded()) return py::none();
             const std::vector<double> b = s.bound_max_abs();
             py::array_t<double> out({static_cast<py::ssize_t>(b.size())});
             std::copy(b.begin(), b.end(), out.mutable_data());
             return py::make_tuple(out, s.max_tokens());
           })
      .def("set_state",
           [](py::handle self, int64_t n, const py::array& sa, const py::array& ss, const py::array& ma,
              const py::object& g) {
             ActivationStats& s = stats_of(self);
             const int64_t K = s.in_features();
             const double* gp = nullptr;
             py::array ga;
             if (!g.is_none()) {
               ga = g.cast<py::array>();
               require_dtype(has_dtype<double>(ga), ga, "gram", "float64");
               require_contiguous(ga, "gram");
               require(ga.ndim() == 2 && ga.shape(0) == K && ga.shape(1) == K, "gram must be [K, K] with K = ", K);
               gp = static_cast<const double*>(ga.data());
             }
             const double* a = vector_arg(sa, "sum_abs", K);
             const double* q = vector_arg(ss, "sum_sq", K);
             const double* m = vector_arg(ma, "max_abs", K);
             py::gil_scoped_release nogil;
             s.set_state(n, a, q, m, gp);
           },
           py::arg("n_tokens"), py::arg("sum_abs"), py::arg("sum_sq"), py::arg("max_abs"), py::arg("gram"))
      .def("state",
           [](py::handle self) {
             const ActivationStats& s = stats_of(self);
             const py::ssize_t K = s.in_features();
             py::array_t<double> sa({K}), ss({K}), ma({K});
             py::object g = py::none();
             double* gp = nullptr;
             if (s.has_gram()) {
               py::array_t<double> ga({K, K});
               gp = ga.mutable_data();
               g = std::move(ga);
             }
             int64_t n = 0;
             double *a = sa.mutable_data(), *q = ss.mutable_data(), *m = ma.mutable_data();
             {
               py::gil_scoped_release nogil;
               s.state(&n, a, q, m, gp);
             }
             return py::make_tuple(n, sa, ss, ma, g);
           })
      .def_property_readonly("in_features", [](py::handle self) { return stats_of(self).in_features(); })
      .def_property_readonly("has_gram", [](py::handle self) { return stats_of(self).has_gram(); })
      .def_property_readonly("n_tokens", [](py::handle self) { return stats_of(self).n_tokens(); })
      .def("sum_abs", [](py::handle self) {
        const ActivationStats& s = stats_of(self);
        return to_array(s.sum_abs(), {s.in_features()});
      })
      .def("sum_sq", [](py::handle self) {
        const ActivationStats& s = stats_of(self);
        return to_array(s.sum_sq(), {s.in_features()});
      })
      .def("max_abs", [](py::handle self) {
        const ActivationStats& s = stats_of(self);
        return to_array(s.max_abs(), {s.in_features()});
      })
      .def("gram", [](py::handle self) {
        const ActivationStats& s = stats_of(self);
        const int64_t K = s.in_features();
        py::array_t<double> a({K, K});
        double* p = a.mutable_data();
        {
          py::gil_scoped_release nogil;
          s.gram(p);
        }
        return a;
      });
  m.def("search_scale", &search_scale_py, py::arg("weights"), py::arg("gram"), py::arg("n_tokens"),
        py::arg("saliency"), py::arg("bits"), py::arg("group_size"), py::arg("zero_point"),
        py::arg("fp16_scale"), py::arg("n_grid"), py::arg("duo"), py::arg("plain"), py::arg("identity"),
        py::arg("rule") = 0, py::arg("part") = 0, py::arg("parts") = 1);
  m.def("scale_losses", &scale_losses_py, py::arg("weights"), py::arg("gram"), py::arg("n_tokens"),
        py::arg("scales"), py::arg("bits"), py::arg("group_size"), py::arg("zero_point"),
        py::arg("fp16_scale"), py::arg("rule") = 0, py::arg("require_storable") = true);
  m.def("group_gram_blocks", &group_gram_blocks_py, py::arg("x"), py::arg("stride"), py::arg("group_size"));
  m.def("search_clip", &search_clip_py, py::arg("w"), py::arg("blocks"), py::arg("n_tokens"),
        py::arg("bits"), py::arg("group_size"), py::arg("zero_point"), py::arg("fp16_scale"),
        py::arg("n_grid"), py::arg("n_shrink"), py::arg("asymmetric"), py::arg("rule") = 0,
        py::arg("refit") = false, py::arg("n_expand") = 0);
}

}  // namespace awqkit::bind

#include <omp.h>

#include "bindings/bind_common.h"
#include "common/amx.h"
#include "common/cpu_features.h"

namespace awqkit::bind {

void register_isa(py::module_& m) {
  m.def("amx_supported", &amx_supported);
  m.def("amx_int8_supported", &amx_int8_supported);
  m.def("amx_enabled", &amx_enabled);
  m.def("amx_active", &amx_active);
  m.def("amx_int8_active", &amx_int8_active);
  m.def("set_amx", &set_amx_enabled, py::arg("on"));
  m.def("detected_isa", [] { return std::string(isa_name(detected_isa())); });
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("set_isa", [](const std::string& name) { set_isa(parse_isa(name)); }, py::arg("name"));
  m.def("available_isas", [] {
    std::vector<std::string> out;
    for (Isa i : available_isas()) out.emplace_back(isa_name(i));
    return out;
  });
  m.def("max_threads", [] { return omp_get_max_threads(); });
  m.def("set_num_threads", [](int n) {
    require(n >= 1, "thread count must be >= 1");
    omp_set_num_threads(n);
  });
}

}  // namespace awqkit::bind

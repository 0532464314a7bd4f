#include <omp.h>

#include "bindings/bind_common.h"
#include "common/amx_support.h"
#include "common/cpu_features.h"
#include "common/kernel_table.h"

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
  // The kernel table (common/kernel_table.cpp): every level compiled in, lowest first, with what
  // it needs, whether this CPU has it, and the kernels it provides itself (the rest fall back).
  m.def("isa_levels", [] {
    py::list out;
    for (const IsaLevel& level : isa_levels()) {
      py::dict d;
      d["name"] = level.name;
      d["requires"] = level.requires;
      d["on_cpu"] = static_cast<int>(level.isa) <= static_cast<int>(detected_isa());
      py::list kernels;
      for (const char* k : provided_kernels(level)) kernels.append(k);
      d["kernels"] = kernels;
      out.append(d);
    }
    return out;
  });
  m.def("max_threads", [] { return omp_get_max_threads(); });
  m.def("set_num_threads", [](int n) {
    require(n >= 1, "thread count must be >= 1");
    omp_set_num_threads(n);
  });
}

}  // namespace awqkit::bind

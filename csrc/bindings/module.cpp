// The awqkit._core extension module: one registration call per area.
#include <pybind11/pybind11.h>

#include "bindings/bind_common.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "awqkit native core (private; use the awqkit package API)";
  // awqkit::type_error derives from std::invalid_argument: translate it first.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const awqkit::type_error& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });
  awqkit::bind::register_int4_linear(m);
  awqkit::bind::register_isa(m);
  awqkit::bind::register_quant(m);
  awqkit::bind::register_search(m);
}

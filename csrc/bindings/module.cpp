// The awqkit._core extension module: one registration call per area.
#include <pybind11/pybind11.h>

#include "bindings/bind_common.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "awqkit native core (private; use the awqkit package API)";
  awqkit::bind::register_error_translator();
  awqkit::bind::register_int4_linear(m);
  awqkit::bind::register_isa(m);
  awqkit::bind::register_quant(m);
  awqkit::bind::register_search(m);
  awqkit::bind::register_decoder(m);
}

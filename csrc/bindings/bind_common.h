// Argument checking shared by the binding files. The core never sees Python: these
// helpers turn numpy arrays into pointers + sizes + strides after checking dtype,
// rank and layout, and refuse (never copy) what the core cannot take as is.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/errors.h"
#include "int4_linear/packed_layout.h"

namespace awqkit::bind {

namespace py = pybind11;

inline std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// By value, not identity: an unpickled array carries an equal but distinct dtype object.
template <typename T>
bool has_dtype(const py::array& a) {
  const py::dtype want = py::dtype::of<T>(), got = a.dtype();
  return got.is(want) || (got.kind() == want.kind() && got.itemsize() == want.itemsize() && got.byteorder() != '>');
}

inline bool is_f16(const py::array& a) { return a.dtype().kind() == 'f' && a.itemsize() == 2; }

// Exactly one of the expected dtypes, else TypeError naming what was given.
inline void require_dtype(bool ok, const py::array& a, const char* name, const char* expected) {
  if (!ok)
    throw type_error(std::string(name) + " must be " + expected + ", got dtype " + dtype_name(a));
}

inline void require_ndim(const py::array& a, const char* name, py::ssize_t ndim) {
  if (a.ndim() != ndim)
    throw type_error(std::string(name) + " must be a " + std::to_string(ndim) + "-D array, got " +
                     std::to_string(a.ndim()) + "-D");
}

// C-contiguous (inner stride 1, rows packed), else ValueError with the fix.
inline void require_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style))
    fail(std::string(name) + " must be C-contiguous; pass np.ascontiguousarray(" + name + ")");
}

// Rows may be strided (a column slice of a wider matrix), elements within a row not.
// Returns the row stride in elements.
inline int64_t row_stride_2d(const py::array& a, const char* name) {
  const py::ssize_t item = a.itemsize();
  if (a.shape(1) > 1 && a.strides(1) != item)
    fail(std::string(name) + " must have contiguous rows (inner stride 1); pass np.ascontiguousarray(" +
         name + ")");
  if (a.shape(0) > 1 && (a.strides(0) % item != 0 || a.strides(0) < a.shape(1) * item))
    fail(std::string(name) + " has an unsupported row stride; pass np.ascontiguousarray(" + name + ")");
  return a.shape(0) > 1 ? a.strides(0) / item : a.shape(1);
}

// One array argument: the expected dtype (TypeError), rank (TypeError) and C-contiguity
// (ValueError), in that order; the three checks nearly every argument needs.
inline void require_array(const py::array& a, const char* name, py::ssize_t ndim, bool dtype_ok,
                          const char* expected_dtype) {
  require_dtype(dtype_ok, a, name, expected_dtype);
  require_ndim(a, name, ndim);
  require_contiguous(a, name);
}

template <typename T>
void require_array(const py::array& a, const char* name, py::ssize_t ndim) {
  // The dtype's name ("float32", ...) only on failure: str() of a dtype costs microseconds,
  // as much as a whole decode GEMV of a small layer.
  if (!has_dtype<T>(a)) require_dtype(false, a, name, std::string(py::str(py::dtype::of<T>())).c_str());
  require_ndim(a, name, ndim);
  require_contiguous(a, name);
}

inline void require_nonempty(const py::array& a, const char* name) {
  if (a.size() == 0) fail(std::string(name) + " is empty (shape has a zero)");
}

// pybind11 lets Python make an instance without running __init__ (Cls.__new__(Cls)), and
// its generic caster then hands the methods a lazily allocated, never constructed object.
// Every method of a bound class, and every argument that is one, goes through this check:
// the constructed C++ object, or a TypeError that says how to make one.
template <typename T>
T& initialised(py::handle obj, const char* what, const char* type_name) {
  if (!py::isinstance<T>(obj))
    throw type_error(std::string(what) + " must be a " + type_name + ", got " + Py_TYPE(obj.ptr())->tp_name);
  auto* inst = reinterpret_cast<py::detail::instance*>(obj.ptr());
  const py::detail::value_and_holder vh =
      inst->get_value_and_holder(py::detail::get_type_info(typeid(T)), /*throw_if_missing=*/false);
  if (!vh || !vh.holder_constructed())
    throw type_error(std::string(what) + " (" + Py_TYPE(obj.ptr())->tp_name +
                     ") was made with __new__ and its __init__ never ran; construct it by calling the class");
  return *vh.template value_ptr<T>();
}

// A packed INT4 buffer (PackedLinear.packed) checked against its shape, as the kernels take it.
inline int4_linear::PackedView packed_view(const py::array& packed, int64_t N, int64_t K, int64_t group_size) {
  require_array<uint8_t>(packed, "packed", 1);
  int4_linear::check_packed_shape(N, K, group_size);
  require(packed.shape(0) == int4_linear::packed_nbytes(N, K, group_size), "packed buffer has ", packed.shape(0),
          " bytes, expected ", int4_linear::packed_nbytes(N, K, group_size), " for N, K, group_size = ", N, ", ", K, ", ",
          group_size);
  return int4_linear::make_view(static_cast<const uint8_t*>(packed.data()), N, K, group_size);
}

template <typename T>
py::array_t<T> empty(std::vector<py::ssize_t> shape) {
  return py::array_t<T>(shape);
}

// awqkit::type_error (it derives from std::invalid_argument) -> TypeError; pybind11 translates the
// rest (std::invalid_argument -> ValueError). Every module of the package registers it.
inline void register_error_translator() {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const awqkit::type_error& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });
}

void register_int4_linear(py::module_& m);
void register_quant(py::module_& m);
void register_isa(py::module_& m);
void register_search(py::module_& m);
void register_decoder(py::module_& m);

}  // namespace awqkit::bind

// Error types of the core. The binding layer maps them to Python exceptions:
// std::invalid_argument -> ValueError, awqkit::type_error -> TypeError.
#pragma once
#include <stdexcept>
#include <string>

namespace awqkit {

struct type_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }
inline void require(bool ok, const std::string& msg) {
  if (!ok) fail(msg);
}

}  // namespace awqkit

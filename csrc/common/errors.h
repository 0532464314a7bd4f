// Error types of the core. The binding layer maps them to Python exceptions:
// std::invalid_argument -> ValueError, awqkit::type_error -> TypeError.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace awqkit {

struct type_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

// The message is put together only on failure (require(ok, "x has ", n, " rows")): checks on
// the decode path run on every microsecond-long call and must not allocate strings.
template <typename... Parts>
[[noreturn]] void fail_with(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  fail(os.str());
}
template <typename... Parts>
inline void require(bool ok, const Parts&... parts) {
  if (!ok) [[unlikely]] fail_with(parts...);
}

}  // namespace awqkit

// Rows of x in tiles of up to MaxR, each handed to a kernel templated on its row count R
// (R accumulators per output vector stay in registers). Every SIMD GEMV/GEMM loop over rows
// uses it, so the tiling (full tiles first, then one remainder tile) is written once.
#pragma once
#include <cstdint>
#include <type_traits>

namespace awqkit::gemm {

template <int R>
using Rows = std::integral_constant<int, R>;

namespace detail {
template <int R, typename Fn>
inline void remainder_tile(int64_t rows, int64_t m, Fn& fn) {
  if constexpr (R >= 1) {
    if (rows == R)
      fn(Rows<R>{}, m);
    else
      remainder_tile<R - 1>(rows, m, fn);
  }
}
}  // namespace detail

// fn(Rows<R>{}, m0) for the tiles [m0, m0 + R) covering rows [0, M).
template <int MaxR, typename Fn>
inline void for_row_tiles(int64_t M, Fn&& fn) {
  int64_t m = 0;
  for (; m + MaxR <= M; m += MaxR) fn(Rows<MaxR>{}, m);
  detail::remainder_tile<MaxR - 1>(M - m, m, fn);
}

}  // namespace awqkit::gemm

// Output blocks x rows of x in tiles of up to MaxR, each handed to a kernel templated on its
// row count R (R accumulators per output vector stay in registers). Every SIMD GEMV-style
// entry point (float GEMV, digits, int8) walks its blocks this way, so the tiling (full tiles
// first, then one remainder tile; all row tiles of a block before the next block) is written once.
#pragma once
#include <cstdint>
#include <type_traits>

namespace awqkit::int4_linear {

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

// fn(Rows<R>{}, b, m0) for each block b in [b0, b1) and the row tiles [m0, m0 + R) covering [0, M).
template <int MaxR, typename Fn>
inline void for_block_row_tiles(int64_t b0, int64_t b1, int64_t M, Fn&& fn) {
  for (int64_t b = b0; b < b1; ++b) {
    auto tile = [&](auto rows, int64_t m) { fn(rows, b, m); };
    int64_t m = 0;
    for (; m + MaxR <= M; m += MaxR) tile(Rows<MaxR>{}, m);
    detail::remainder_tile<MaxR - 1>(M - m, m, tile);
  }
}

}  // namespace awqkit::int4_linear

// AMX-BF16 quadratic forms (see quadratic_form_amx.h). The _amx.cpp suffix gets AVX-512 and AMX
// flags from CMake (only where the compiler knows AMX; elsewhere the file is left out and the
// table has no AMX entries). AMX is only reached after amx_supported() has checked the CPU and
// obtained the tile permission.
#include <immintrin.h>

#include <cstring>

#include "search/quadratic_form_amx.h"

namespace awqkit::amx {
namespace {



static inline uint16_t bf16_rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

static inline float bf16_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Tiles: 0-3 C (2x2 blocks of 16x16 float), 4 and 5 A (two 16-row halves), 6 and 7 B (two
// 16-column halves). Tile numbers must be immediates, so each step is a helper, not a loop.
#define AWQKIT_AMX_INLINE __attribute__((always_inline)) static inline
AWQKIT_AMX_INLINE void load_a(const uint16_t* a, int64_t Kp, int64_t lda) {
  _tile_loadd(4, a, lda);
  _tile_loadd(5, a + 16 * Kp, lda);
}
AWQKIT_AMX_INLINE void load_b(const uint16_t* b) {
  _tile_loadd(6, b, 128);
  _tile_loadd(7, b + 32, 128);
}
AWQKIT_AMX_INLINE void dp_2x2() {
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

}  // namespace

void split_bf16(const float* x, int64_t n, uint16_t* hi, uint16_t* lo) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = bf16_rne(x[i]);
    hi[i] = h;
    lo[i] = bf16_rne(x[i] - bf16_float(h));
  }
}

void quadratic_form_amx(const float* E, const uint16_t* Ehi, const uint16_t* Elo,
                                          int64_t rows, int64_t Kp, const uint16_t* Ghi,
                                          const uint16_t* Glo, const int64_t* offset, float* ctile,
                                          double* out) {
  // Every tile is 16 rows of 64 bytes: C 16x16 float, A 16 rows x 32 bf16, B 16 k-pairs x 16 columns.
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  constexpr int64_t KC = 1024;  // k chunk: the B chunk (128 KiB hi+lo) is reused by every 32-row block
  const int64_t NJ = Kp / 32, lda = Kp * 2;
  for (int64_t k0 = 0; k0 < Kp; k0 += KC) {
    const int64_t kl = KC < Kp - k0 ? KC : Kp - k0;
    for (int64_t J = k0 / 32; J < NJ; ++J) {
      const int64_t kend = (J + 1) * 32, klen = kl < kend - k0 ? kl : kend - k0;
      const uint16_t* bh = Ghi + offset[J] + (k0 / 2) * 64;
      const uint16_t* bl = Glo + offset[J] + (k0 / 2) * 64;
      for (int64_t m = 0; m < rows; m += 32) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        const uint16_t* ah = Ehi + m * Kp + k0;
        const uint16_t* al = Elo + m * Kp + k0;
        for (int64_t k = 0; k < klen; k += 32) {
          const uint16_t* bhk = bh + (k / 2) * 64;
          const uint16_t* blk = bl + (k / 2) * 64;
          // hi*hi + hi*lo + lo*hi: the bf16 pair products that carry float32's precision.
          load_a(ah + k, Kp, lda);
          load_b(bhk);
          dp_2x2();
          load_b(blk);
          dp_2x2();
          load_a(al + k, Kp, lda);
          load_b(bhk);
          dp_2x2();
        }
        _tile_stored(0, ctile, 128);
        _tile_stored(1, ctile + 16, 128);
        _tile_stored(2, ctile + 16 * 32, 128);
        _tile_stored(3, ctile + 16 * 32 + 16, 128);
        for (int64_t r = 0; r < 32; ++r) {
          const float* e = E + (m + r) * Kp + J * 32;
          __m512 d = _mm512_mul_ps(_mm512_loadu_ps(ctile + r * 32), _mm512_loadu_ps(e));
          d = _mm512_fmadd_ps(_mm512_loadu_ps(ctile + r * 32 + 16), _mm512_loadu_ps(e + 16), d);
          out[m + r] += static_cast<double>(_mm512_reduce_add_ps(d));
        }
      }
    }
  }
  _tile_release();
}

}  // namespace awqkit::amx

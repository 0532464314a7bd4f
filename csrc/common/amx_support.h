// Intel AMX (Sapphire Rapids and later): detection and the one switch for every AMX path.
//
// Two kernels use the tiles: the scale-search loss (AMX-BF16, search/quadratic_form_amx.h) and the
// prefill GEMM of the digits algorithm (AMX-INT8, int4_linear/digits_kernels.h). Both run only
// when the active level's table has the AMX kernels (avx512_vnni), the CPU has the instructions and the OS granted the
// tile state; AWQKIT_AMX=0 or set_amx_enabled(false) turns both off.
#pragma once
#include <cstdint>

namespace awqkit {

// The 64-byte operand of ldtilecfg (palette 1: up to 8 tiles of rows x colsb bytes).
struct __attribute__((packed)) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

bool amx_supported();       // AMX-TILE + AMX-BF16 and the OS granted tile data
bool amx_int8_supported();  // AMX-TILE + AMX-INT8 and the OS granted tile data
bool amx_active();          // BF16 supported, enabled and the active level has the AMX kernels
bool amx_int8_active();     // INT8 supported, enabled and the active level has the AMX kernels
void set_amx_enabled(bool on);  // throws if on and the CPU/OS has no AMX at all
bool amx_enabled();

}  // namespace awqkit

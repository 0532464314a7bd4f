// AMX-BF16 path of the scale-search loss (Intel Sapphire Rapids and later).
//
// e^T G e in float32 is bound by FMA throughput; AMX tiles multiply bf16 at ~16x that rate.
// Precision is kept with a split: every float v is hi + lo with hi = bf16(v),
// lo = bf16(v - hi) (16 significant bits), and E*G = Ehi*Ghi + Ehi*Glo + Elo*Ghi with float
// accumulation; the dropped lo*lo term is ~2^-16 relative per product and of random sign,
// so losses agree with float32 to ~1e-6 relative (tests hold it to 1e-4 vs the reference).
// Used only for the scale search (clip decisions stay on the float32 tiles). It runs when
// the active level's table has the AMX kernels (avx512_vnni), the CPU has AMX-BF16 and the OS grants tile state; AWQKIT_AMX=0
// or set_amx_enabled(false) turns it off (common/amx_support.h).
#pragma once
#include <cstdint>

#include "common/amx_support.h"

namespace awqkit {

inline constexpr int64_t kAmxRows = 32;  // rows of E per AMX block (two 16-row tiles)

namespace amx {  // quadratic_form_amx.cpp (AVX-512 + AMX-BF16 flags)
// hi/lo bf16 split of n floats (round to nearest even).
void split_bf16(const float* x, int64_t n, uint16_t* hi, uint16_t* lo);
// out[r] += e_r^T G' e_r for rows r < rows (a multiple of 32) of E [rows, Kp] (float) and its
// split Ehi/Elo; Ghi/Glo are the panels of G' (see GramPanels) in the AMX pair layout:
// element (k, c) of panel J at offset[J] + (k/2)*64 + 2c + (k%2). ctile: 1024 floats scratch.
void quadratic_form_amx(const float* E, const uint16_t* Ehi, const uint16_t* Elo, int64_t rows,
                        int64_t Kp, const uint16_t* Ghi, const uint16_t* Glo, const int64_t* offset,
                        float* ctile, double* out);
}  // namespace amx

}  // namespace awqkit

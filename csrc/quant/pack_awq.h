// The AutoAWQ "gemm" INT4 layout (what vLLM, transformers and AutoAWQ load).
//
// A [R, N] matrix of 4-bit codes becomes int32 words [R, N/8]. In word j of a row,
// bits 4i..4i+3 hold column 8j + kAwqOrder[i]. qweight packs codes^T ([K, N]),
// qzeros packs zeros^T ([G, N]), both with this rule.
#pragma once
#include <cstdint>

namespace awqkit {

inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
// The inverse: column 8j + c sits at nibble kAwqNibbleOf[c].
inline constexpr int kAwqNibbleOf[8] = {0, 4, 1, 5, 2, 6, 3, 7};

constexpr bool awq_tables_are_inverse() {
  for (int i = 0; i < 8; ++i)
    if (kAwqNibbleOf[kAwqOrder[i]] != i) return false;
  return true;
}
static_assert(awq_tables_are_inverse(), "kAwqNibbleOf must invert kAwqOrder");

// src is [N, R] (row n, column r) codes in torch-Linear layout; out is [R, N/8] words.
// Throws if N % 8 != 0 or any code > 15.
void pack_awq_transposed(const uint8_t* src, int64_t N, int64_t R, int32_t* out);
// Inverse: words [R, N/8] -> codes [N, R].
void unpack_awq_transposed(const int32_t* words, int64_t N, int64_t R, uint8_t* out);

}  // namespace awqkit

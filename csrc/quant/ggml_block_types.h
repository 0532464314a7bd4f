// GGUF block types whose reference quantizer awqkit reproduces bit for bit.
//
// llama.cpp's quantize_row_q4_0_ref / q4_1_ref / q8_0_ref (ggml/src/ggml-quants.c) are what
// `llama-quantize` runs without an importance matrix and what the `gguf` Python package
// reimplements. The AWQ scale and clip searches quantize with these rules when the target is a
// GGUF type (QuantSpec::rule), so the weights they optimise are the weights the file holds.
// One entry per type in kGgmlBlockTypes (ggml_block_types.cpp): adding a type is one row, its
// quantizer and its test. These are scalar only: the search costs are dominated by the
// quadratic forms, not by quantizing 32-weight blocks.
#pragma once
#include <cstdint>

#include "quant/quantize_kernels.h"

namespace awqkit {

struct GgmlBlockType {
  GroupRule rule;
  const char* name;  // as gguf.GGMLQuantizationType names it, lower case
  int ggml_type;     // GGML_TYPE_* (gguf.GGMLQuantizationType value)
  int bits;
  int block;         // weights per block (QK)
  bool has_min;      // y = d*q + m (Q4_1) rather than y = d*(q - zero)
  int zero;          // the code of 0.0 in awqkit's (code - zero) * scale form (0 with has_min)
  // One block of `block` finite floats -> codes (0..2^bits-1), the dequantized values
  // (nullable), the stored scale d and offset m (their float16 values; m = 0 without has_min).
  void (*quantize_block)(const float* x, uint8_t* codes, float* deq, float* d, float* m);
  // The same in the group-quantizer form the searches call (n == block).
  QuantizeGroupFn quantize_group;
  // The codes the reference would give with its scale d multiplied by f (f > 1: a coarser grid
  // than the block's range needs, so no clamping is involved), from 1/(d*f) unrounded; Q4_1
  // keeps its minimum. The clip search's refit tries these too (llama.cpp's imatrix quantizer,
  // make_qx_quants, tries such scales around the plain one).
  void (*codes_at_expanded_scale)(const float* x, float f, uint8_t* codes);
};

// The type of a ggml rule; nullptr for GroupRule::awq.
const GgmlBlockType* ggml_block_type(GroupRule rule);
// Every type, for the bindings (the Python table is checked against it).
const GgmlBlockType* ggml_block_types(int* count);

}  // namespace awqkit

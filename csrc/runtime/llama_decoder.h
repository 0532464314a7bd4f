// A Llama-family decoder stack run natively: per token, every layer's norms, INT4 linears
// (int4_linear::linear_forward), rotary embedding, KV cache and attention, with no Python
// and no torch between them. What it covers: pre-norm blocks of RMSNorm -> q/k/v (optional
// biases, optional per-head q/k RMSNorm as in Qwen3) -> RoPE -> causal grouped-query
// attention -> o -> residual, RMSNorm -> SiLU(gate) * up -> down -> residual, then the final
// norm. The embedding lookup and the output head stay with the caller (awqkit.model.decode_runtime).
//
// Rotary embedding: the caller passes cos and sin [context, head_dim] exactly as the model's
// own rotary module computes them (so every RoPE variant and scaling is the model's), and
// x_rot = x * cos + rotate_half(x) * sin as transformers applies it.
//
// Deterministic: the linears are (see linear.h); every attention row is computed whole by
// one thread. Results do not depend on the thread count.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "int4_linear/linear.h"
#include "int4_linear/packed_layout.h"
#include "runtime/decoder_ops.h"

namespace awqkit::runtime {

// One linear of a layer: INT4 packed (w.data set), or float32 weight [N, K] row-major (fw),
// for the layers a checkpoint keeps in full precision.
struct DecoderLinear {
  int4_linear::PackedView w{};
  const float* fw = nullptr;
  int64_t N = 0, K = 0;
  const float* bias = nullptr;  // [N] or null
};

// One stage reads one input and writes [rows, sum of the parts' N] (q|k|v, gate|up): one
// fused linear, or several whose outputs are laid side by side.
struct DecoderStage {
  std::vector<DecoderLinear> parts;
  int64_t width() const;
};

struct DecoderLayer {
  const float* attn_norm;  // [hidden]
  DecoderStage qkv;        // [q heads * d | kv heads * d | kv heads * d]
  const float* q_norm = nullptr;  // [d] per-head RMSNorm before RoPE (Qwen3), or null
  const float* k_norm = nullptr;
  DecoderStage o;          // [hidden]
  const float* mlp_norm;   // [hidden]
  DecoderStage gate_up;    // [intermediate | intermediate]
  DecoderStage down;       // [hidden]
};

// Tokens per call from which prefill_activation applies.
inline constexpr int64_t kPrefillRows = 16;

struct DecoderShape {
  int64_t hidden, heads, kv_heads, head_dim, intermediate, context;
  float eps, attn_scale;
};

class LlamaDecoder {
 public:
  // cos, sin: [context, head_dim]. Pointers are borrowed: the caller keeps every buffer alive.
  LlamaDecoder(const DecoderShape& shape, std::vector<DecoderLayer> layers, const float* final_norm,
               const float* cos, const float* sin);
  ~LlamaDecoder();
  // Runs M tokens (their embeddings x [M, hidden]) at positions length() .. length() + M - 1,
  // appends them to the cache and writes the final-normed hidden states of the last
  // out_rows rows to out [out_rows, hidden].
  void forward(const float* x, int64_t M, float* out, int64_t out_rows);
  // Keeps the first `length` cached positions (0: a fresh sequence).
  void truncate(int64_t length);
  // How the INT4 linears take x when a call runs at least kPrefillRows tokens (a prompt);
  // calls with fewer rows (decode) are always exact. automatic: 16-bit activations
  // (Activation::int16, two digits) where the exact digits product runs on VNNI without AMX
  // tiles (there the two digits are faster: a third fewer integer products), exact elsewhere.
  enum class Prefill : int { exact = 0, int8 = 1, int16 = 2, automatic = 3 };
  void set_prefill(Prefill p) { prefill_ = p; }
  Prefill prefill() const { return prefill_; }
  int64_t length() const { return length_; }
  const DecoderShape& shape() const { return shape_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  struct Buffers;
  // The context rounded up to whole key blocks (decoder_ops.h).
  int64_t cache_positions() const { return (shape_.context + kKeyBlock - 1) / kKeyBlock * kKeyBlock; }
  void run_stage(const DecoderStage& stage, const float* x, int64_t M, float* y);
  void linear(const DecoderLinear& lin, const float* x, int64_t M, float* y) const;
  int4_linear::Activation activation_for(int64_t M) const;  // how a call of M tokens feeds the INT4 linears
  void attention(const DecoderLayer& layer, int64_t l, float* qkv, int64_t M, float* y);

  DecoderShape shape_;
  std::vector<DecoderLayer> layers_;
  const float* final_norm_;
  const float *cos_, *sin_;
  int64_t length_ = 0;
  Prefill prefill_ = Prefill::automatic;
  int4_linear::Activation call_act_ = int4_linear::Activation::f32;  // activation_for(M) of the running forward
  std::vector<float> cache_;  // [layer][k|v][kv head][cache_positions()][head_dim], keys in key blocks
  std::unique_ptr<Buffers> buf_;
};

}  // namespace awqkit::runtime

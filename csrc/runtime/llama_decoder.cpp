#include "runtime/llama_decoder.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "common/amx_support.h"
#include "common/errors.h"
#include "common/kernel_table.h"
#include "int4_linear/linear.h"

namespace awqkit::runtime {

namespace {
// Attention rows x positions x head_dim below which one thread does the attention alone:
// entering a parallel region costs about as much as ~20k multiply-adds.
constexpr int64_t kParallelAttentionWork = 1 << 15;
// Tokens from which the per-row steps (norms, RoPE, SiLU, residual adds) are split over the
// threads; a decode step's single row stays on the calling thread.
constexpr int64_t kParallelRows = 16;

// y [M, N] = x [M, K] @ W.T + b for a float32 weight (a layer the checkpoint keeps unquantized).
void float_linear(const DecoderLinear& lin, const float* x, int64_t M, float* y) {
  const int64_t N = lin.N, K = lin.K;
#pragma omp parallel for schedule(static) if (M * N * K > (1 << 18))
  for (int64_t n = 0; n < N; ++n) {
    const float* wn = lin.fw + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * K;
      float s = 0.0f;
      for (int64_t k = 0; k < K; ++k) s += xm[k] * wn[k];
      y[m * N + n] = lin.bias ? s + lin.bias[n] : s;
    }
  }
}


// x * cos + rotate_half(x) * sin on one head, rotate_half(x) = [-x2, x1].
void rope(float* x, const float* cos, const float* sin, int64_t d) {
  const int64_t h = d / 2;
  for (int64_t i = 0; i < h; ++i) {
    const float x1 = x[i], x2 = x[i + h];
    x[i] = x1 * cos[i] + (-x2) * sin[i];
    x[i + h] = x2 * cos[i + h] + x1 * sin[i + h];
  }
}
}  // namespace

int4_linear::Activation LlamaDecoder::activation_for(int64_t M) const {
  using int4_linear::Activation;
  if (M < kPrefillRows) return Activation::f32;
  switch (prefill_) {
    case Prefill::int8: return Activation::int8;
    case Prefill::int16: return Activation::int16;
    case Prefill::automatic:
      return active_kernels().native_digits() && !amx_int8_active() ? Activation::int16 : Activation::f32;
    case Prefill::exact: break;
  }
  return Activation::f32;
}

void LlamaDecoder::linear(const DecoderLinear& lin, const float* x, int64_t M, float* y) const {
  if (lin.fw) return float_linear(lin, x, M, y);
  int4_linear::linear_forward(lin.w, x, M, lin.bias, y, int4_linear::Path::automatic, call_act_);
}

int64_t DecoderStage::width() const {
  int64_t n = 0;
  for (const DecoderLinear& p : parts) n += p.N;
  return n;
}

struct LlamaDecoder::Buffers {
  int64_t rows = 0;
  std::vector<float> x, norm, qkv, attn, o, gu, act, part, scores;
};

LlamaDecoder::LlamaDecoder(const DecoderShape& s, std::vector<DecoderLayer> layers, const float* final_norm,
                           const float* cos, const float* sin)
    : shape_(s), layers_(std::move(layers)), final_norm_(final_norm), cos_(cos), sin_(sin),
      buf_(std::make_unique<Buffers>()) {
  require(s.hidden > 0 && s.heads > 0 && s.kv_heads > 0 && s.head_dim > 0 && s.intermediate > 0 && s.context > 0,
          "decoder sizes must be positive");
  require(s.heads % s.kv_heads == 0, "query heads (", s.heads, ") must be a multiple of KV heads (", s.kv_heads, ")");
  require(s.head_dim % 2 == 0, "head_dim must be even for the rotary embedding, got ", s.head_dim);
  require(!layers_.empty(), "a decoder needs at least one layer");
  const int64_t qkv_width = (s.heads + 2 * s.kv_heads) * s.head_dim;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const DecoderLayer& L = layers_[l];
    auto check = [&](const DecoderStage& st, const char* name, int64_t K, int64_t N) {
      require(!st.parts.empty(), "layer ", l, ": ", name, " has no linear");
      for (const DecoderLinear& p : st.parts)
        require(p.K == K, "layer ", l, ": ", name, " takes ", p.K, " inputs, expected ", K);
      require(st.width() == N, "layer ", l, ": ", name, " has ", st.width(), " outputs, expected ", N);
    };
    check(L.qkv, "q/k/v", s.hidden, qkv_width);
    check(L.o, "o_proj", s.heads * s.head_dim, s.hidden);
    check(L.gate_up, "gate/up", s.hidden, 2 * s.intermediate);
    check(L.down, "down_proj", s.intermediate, s.hidden);
    require(L.attn_norm && L.mlp_norm, "layer ", l, ": a norm weight is missing");
    require((L.q_norm == nullptr) == (L.k_norm == nullptr), "layer ", l, ": q_norm and k_norm go together");
  }
  cache_.assign(static_cast<size_t>(layers_.size()) * 2 * s.kv_heads * cache_positions() * s.head_dim, 0.0f);
}

LlamaDecoder::~LlamaDecoder() = default;

void LlamaDecoder::truncate(int64_t length) {
  require(length >= 0 && length <= length_, "truncate(", length, "): the cache holds ", length_, " positions");
  length_ = length;
}

void LlamaDecoder::run_stage(const DecoderStage& stage, const float* x, int64_t M, float* y) {
  if (stage.parts.size() == 1) return linear(stage.parts[0], x, M, y);
  // Several linears: each into a scratch, then its columns into place.
  const int64_t W = stage.width();
  int64_t col = 0;
  for (const DecoderLinear& p : stage.parts) {
    buf_->part.resize(static_cast<size_t>(M * p.N));
    linear(p, x, M, buf_->part.data());
    for (int64_t m = 0; m < M; ++m) std::memcpy(y + m * W + col, buf_->part.data() + m * p.N, p.N * sizeof(float));
    col += p.N;
  }
}

void LlamaDecoder::attention(const DecoderLayer& L, int64_t l, float* qkv, int64_t M, float* y) {
  const DecoderShape& s = shape_;
  const int64_t d = s.head_dim, H = s.heads, KV = s.kv_heads, W = (H + 2 * KV) * d, C = cache_positions();
  const KernelTable& kt = active_kernels();
  float* kc = cache_.data() + static_cast<size_t>(l) * 2 * KV * C * d;
  float* vc = kc + KV * C * d;
  // q/k norms and the rotary embedding in place, then k and v into the cache.
#pragma omp parallel for schedule(static) if (M >= kParallelRows)
  for (int64_t m = 0; m < M; ++m) {
    const int64_t pos = length_ + m;
    float* row = qkv + m * W;
    for (int64_t h = 0; h < H + KV; ++h) {
      float* head = row + h * d;
      if (L.q_norm) kt.rms_norm(head, h < H ? L.q_norm : L.k_norm, d, s.eps, head);
      rope(head, cos_ + pos * d, sin_ + pos * d, d);
    }
    // Keys in blocks of kKeyBlock positions, [d][kKeyBlock] each (decoder_ops.h); values by row.
    float* kblock = kc + (pos / kKeyBlock) * d * kKeyBlock + pos % kKeyBlock;
    for (int64_t h = 0; h < KV; ++h) {
      const float* key = row + (H + h) * d;
      for (int64_t j = 0; j < d; ++j) kblock[h * C * d + j * kKeyBlock] = key[j];
      std::memcpy(vc + (h * C + pos) * d, row + (H + KV + h) * d, d * sizeof(float));
    }
  }
  const int64_t pairs = M * H, group = H / KV;
  const int64_t work = pairs * (length_ + M) * d;
  const int64_t threads = work > kParallelAttentionWork ? omp_get_max_threads() : 1;
  buf_->scores.resize(static_cast<size_t>(threads * C));
  float* scores = buf_->scores.data();
  // Round robin: a causal prompt's later rows attend to more positions, so contiguous chunks
  // would leave the last thread the most work. Each (row, head) is still one thread's.
#pragma omp parallel for schedule(static, 1) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < pairs; ++i) {
    const int64_t m = i / H, h = i % H, kvh = h / group;
    float* mine = scores + static_cast<int64_t>(omp_get_thread_num()) * C;
    kt.attend(qkv + m * W + h * d, kc + kvh * C * d, vc + kvh * C * d, length_ + m + 1, d, s.attn_scale, mine,
              y + m * H * d + h * d);
  }
}

void LlamaDecoder::forward(const float* x_in, int64_t M, float* out, int64_t out_rows) {
  const DecoderShape& s = shape_;
  require(M > 0, "forward needs at least one token");
  require(out_rows >= 1 && out_rows <= M, "out_rows must be in [1, ", M, "], got ", out_rows);
  require(length_ + M <= s.context, "the cache holds ", s.context, " positions: ", length_, " cached + ", M,
          " new tokens do not fit (build the decoder with a larger context)");
  const int64_t Hd = s.hidden, I = s.intermediate, A = s.heads * s.head_dim;
  const int64_t W = (s.heads + 2 * s.kv_heads) * s.head_dim;
  Buffers& b = *buf_;
  auto size = [&](std::vector<float>& v, int64_t n) { v.resize(static_cast<size_t>(n)); };
  size(b.x, M * Hd); size(b.norm, M * Hd); size(b.qkv, M * W); size(b.attn, M * A);
  size(b.o, M * Hd); size(b.gu, M * 2 * I); size(b.act, M * I);
  std::memcpy(b.x.data(), x_in, M * Hd * sizeof(float));
  const KernelTable& kt = active_kernels();
  call_act_ = activation_for(M);  // once per call: the ISA and AMX state cannot change during it
  float* x = b.x.data();
  const bool par = M >= kParallelRows;
  float *norm = b.norm.data(), *o = b.o.data(), *gu = b.gu.data(), *act = b.act.data();
  for (size_t l = 0; l < layers_.size(); ++l) {
    const DecoderLayer& L = layers_[l];
#pragma omp parallel for schedule(static) if (par)
    for (int64_t m = 0; m < M; ++m) kt.rms_norm(x + m * Hd, L.attn_norm, Hd, s.eps, norm + m * Hd);
    run_stage(L.qkv, norm, M, b.qkv.data());
    attention(L, static_cast<int64_t>(l), b.qkv.data(), M, b.attn.data());
    run_stage(L.o, b.attn.data(), M, o);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t i = m * Hd; i < (m + 1) * Hd; ++i) x[i] = x[i] + o[i];
      kt.rms_norm(x + m * Hd, L.mlp_norm, Hd, s.eps, norm + m * Hd);
    }
    run_stage(L.gate_up, norm, M, gu);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t m = 0; m < M; ++m) kt.silu_mul(gu + m * 2 * I, gu + m * 2 * I + I, I, act + m * I);
    run_stage(L.down, act, M, o);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < M * Hd; ++i) x[i] = x[i] + o[i];
  }
  for (int64_t r = 0; r < out_rows; ++r)
    kt.rms_norm(x + (M - out_rows + r) * Hd, final_norm_, Hd, s.eps, out + r * Hd);
  length_ += M;
}

}  // namespace awqkit::runtime

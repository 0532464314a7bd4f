#include "search/clip_search.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>

#include "common/errors.h"
#include "common/half.h"
#include "quant/ggml_block_types.h"
#include "quant/quantize_kernels.h"
#include "search/activation_stats.h"
#include "search/gram.h"
#include "search/tile_kernels.h"

namespace awqkit {

std::vector<double> group_gram_blocks(const MatrixView& x, int64_t stride, int64_t gs) {
  const int64_t K = x.cols, G = K / gs, gsp = gram_padded_width(gs);
  const int64_t n_used = (x.rows + stride - 1) / stride;
  constexpr int64_t kChunk = 256;
  std::vector<double> out(static_cast<size_t>(G * gs * gs));
#pragma omp parallel
  {
    std::vector<float> chunk(static_cast<size_t>(kChunk * gsp));
    std::vector<double> acc(static_cast<size_t>(gsp * gsp));
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < G; ++g) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = 0; t < n_used; t += kChunk) {
        const int64_t T = std::min(kChunk, n_used - t);
        load_token_chunk(x, t * stride, T, stride, g * gs, gs, gsp, chunk.data());
        gram_accumulate_upper(chunk.data(), T, gsp, 0, gsp / kTileRows, acc.data());
      }
      double* blk = out.data() + g * gs * gs;
      for (int64_t i = 0; i < gs; ++i)
        for (int64_t j = 0; j < gs; ++j) blk[i * gs + j] = j >= i ? acc[i * gsp + j] : acc[j * gsp + i];
    }
  }
  return out;
}

namespace {

// Least-squares refit of a GGUF block's stored d (and m) for fixed codes under the Gram
// block H: minimise (w - d a - m 1)^T H (w - d a - m 1), a the codes' levels. hw = H w and
// h1 = H 1 are precomputed. The fitted values are rounded to float16 (what the block stores)
// and deq rewritten the way dequantize_rows computes it; a degenerate or non-finite fit
// keeps the reference quantizer's values.
bool refit_block(const double* H, const std::vector<double>& hw, const std::vector<double>& h1,
                 const std::vector<uint8_t>& codes, const GgmlBlockType& t, int64_t gs,
                 std::vector<double>& ha, float* scale, float* offset, std::vector<float>& deq) {
  const double zero = t.zero;
  for (int64_t a = 0; a < gs; ++a) {
    double s = 0.0;
    for (int64_t b = 0; b < gs; ++b) s += H[a * gs + b] * (static_cast<double>(codes[b]) - zero);
    ha[a] = s;
  }
  double aha = 0.0, ahw = 0.0, ah1 = 0.0, oh1 = 0.0, ohw = 0.0;
  for (int64_t a = 0; a < gs; ++a) {
    const double lv = static_cast<double>(codes[a]) - zero;
    aha += lv * ha[a];
    ahw += lv * hw[a];
    ah1 += ha[a];
    oh1 += h1[a];
    ohw += hw[a];
  }
  double d, m = 0.0;
  if (t.has_min) {
    const double det = aha * oh1 - ah1 * ah1;
    if (!(det > 1e-12 * aha * oh1)) return false;
    d = (ahw * oh1 - ohw * ah1) / det;
    m = (aha * ohw - ah1 * ahw) / det;
  } else {
    if (!(aha > 0.0)) return false;
    d = ahw / aha;
  }
  const float dh = half_to_float(float_to_half(static_cast<float>(d)));
  const float mh = half_to_float(float_to_half(static_cast<float>(m)));
  if (!std::isfinite(dh) || !std::isfinite(mh)) return false;
  for (int64_t k = 0; k < gs; ++k) {
    const float level = static_cast<float>(codes[k]) - static_cast<float>(t.zero);
    deq[k] = t.has_min ? level * dh + mh : level * dh;
  }
  *scale = dh;
  *offset = t.has_min ? mh : 0.0f;
  return true;
}

}  // namespace

ClipOutput search_clip(const MatrixView& w, const double* gblocks, int64_t n_tokens, const ClipSpec& spec) {
  const int64_t N = w.rows, K = w.cols, gs = spec.quant.group_size, G = K / gs;
  require(spec.n_grid >= 1, "n_grid must be >= 1, got " + std::to_string(spec.n_grid));
  require(spec.n_shrink >= 1, "int(max_shrink * n_grid) must be >= 1 (no shrink to try)");
  require(n_tokens > 0, "no calibration tokens");
  const int64_t ns = spec.n_shrink, C0 = spec.asymmetric ? ns * ns : ns;
  const GgmlBlockType* block_type = ggml_block_type(spec.quant.rule);
  require(!spec.refit || block_type, "the scale refit is for GGUF block types (rule q4_0, q4_1, q8_0)");
  // With refit, candidates C0 .. c_plain - 1 are the expanded scales and the last one (c_plain) is the
  // plain quantization (no clip, no refit).
  require(spec.n_expand >= 0 && (spec.refit || spec.n_expand == 0), "n_expand needs the refit");
  const int64_t c_plain = C0 + spec.n_expand;
  const int64_t C = spec.refit ? c_plain + 1 : C0;
  // Rows per work item: enough (row, candidate) pairs to fill register tiles.
  const int64_t R = spec.asymmetric ? 12 : 48;
  const QuantizeGroupFn quantize = quantize_group_kernel(spec.quant);
  std::vector<float> factor(static_cast<size_t>(ns));
  for (int64_t i = 0; i < ns; ++i) factor[i] = static_cast<float>(1.0 - static_cast<double>(i) / spec.n_grid);

  ClipOutput out;
  out.max_val.resize(N * G);
  out.min_val.resize(N * G);
  out.err_before.resize(N * G);
  out.err_after.resize(N * G);
  out.shrink_max.resize(N * G);
  out.shrink_min.resize(N * G);
  if (spec.refit) {
    out.scale.resize(N * G);
    out.offset.resize(N * G);
    out.codes.resize(N * K);
  }
  const double inv_n = 1.0 / static_cast<double>(n_tokens);
  const int64_t n_row_blocks = (N + R - 1) / R;
  // Errors cannot leave the parallel region: the first row whose clipped group has a scale
  // that is not finite, and whether any error overflowed float32, are thrown after it.
  std::atomic<int64_t> overflow_row{N};
  std::atomic<bool> loss_overflow{false};

#pragma omp parallel
  {
    std::vector<float> E, buf(K), cur(gs), deq(gs), d_b, m_b;
    std::vector<uint8_t> codes(gs), codes_b, plain_codes(gs);
    std::vector<float> plain_deq(gs);
    std::vector<double> hw(gs), h1(gs), ha(gs);
    QuadraticFormScratch scratch;
    std::vector<double> err;
    GramPanels P;
    int64_t panels_of = -1;
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t b = 0; b < n_row_blocks; ++b) {
        if (panels_of != g) {
          P = build_gram_panels(gblocks + g * gs * gs, gs, gs);
          panels_of = g;
        }
        const int64_t r0 = b * R, nr = std::min(R, N - r0), Kp = P.Kp;
        const int64_t rows = round_up(nr * C, kTileRows);
        E.assign(static_cast<size_t>(rows * Kp), 0.0f);
        err.resize(rows);
        std::vector<float> lo_b(nr * C), hi_b(nr * C);
        d_b.assign(nr * C, 0.0f);
        m_b.assign(nr * C, 0.0f);
        if (spec.refit) codes_b.assign(nr * C * gs, 0);
        const double* H = gblocks + g * gs * gs;
        for (int64_t i = 0; i < nr; ++i) {
          const float* row;
          if (w.type == FloatType::f32) {
            row = static_cast<const float*>(w.data) + (r0 + i) * w.ld + g * gs;
          } else {
            const uint16_t* h = static_cast<const uint16_t*>(w.data) + (r0 + i) * w.ld + g * gs;
            for (int64_t k = 0; k < gs; ++k) buf[k] = half_to_float(h[k]);
            row = buf.data();
          }
          float maxv = row[0], minv = row[0], amax = std::fabs(row[0]);
          for (int64_t k = 1; k < gs; ++k) {
            maxv = std::fmax(maxv, row[k]);
            minv = std::fmin(minv, row[k]);
            amax = std::fmax(amax, std::fabs(row[k]));
          }
          if (spec.refit) {  // G w and G 1, shared by the candidates' least-squares fits
            for (int64_t a = 0; a < gs; ++a) {
              double sw = 0.0, s1 = 0.0;
              for (int64_t b = 0; b < gs; ++b) {
                sw += H[a * gs + b] * static_cast<double>(row[b]);
                s1 += H[a * gs + b];
              }
              hw[a] = sw;
              h1[a] = s1;
            }
          }
          float plain_scale = 0.0f, plain_offset = 0.0f;
          if (spec.refit) {  // the plain quantization: candidate c_plain, and the fallback of a failed refit
            block_type->quantize_block(row, plain_codes.data(), plain_deq.data(), &plain_scale, &plain_offset);
          }
          for (int64_t c = 0; c < C; ++c) {
            float hi, lo;
            if (spec.refit && c >= C0) {  // an expanded scale or the plain candidate: no clamping
              hi = maxv;
              lo = minv;
            } else if (spec.asymmetric) {
              hi = maxv * factor[c / ns];
              lo = minv * factor[c % ns];
            } else {
              hi = amax * factor[c];
              lo = -hi;
            }
            hi_b[i * C + c] = hi;
            lo_b[i * C + c] = lo;
            float scale, offset = 0.0f;
            if (spec.refit) {
              bool fitted = false;
              if (c == c_plain) {
                std::copy(plain_codes.begin(), plain_codes.end(), codes.begin());
              } else if (c >= C0) {
                block_type->codes_at_expanded_scale(row, 1.0f + static_cast<float>(c - C0 + 1) / 80.0f, codes.data());
              } else {
                for (int64_t k = 0; k < gs; ++k) cur[k] = std::fmin(std::fmax(row[k], lo), hi);
                block_type->quantize_block(cur.data(), codes.data(), deq.data(), &scale, &offset);
              }
              if (c != c_plain && (c >= C0 || std::isfinite(scale)))
                fitted = refit_block(H, hw, h1, codes, *block_type, gs, ha, &scale, &offset, deq);
              if (!fitted && (c == c_plain || c >= C0)) {  // the plain values (a failed expansion repeats them)
                std::copy(plain_codes.begin(), plain_codes.end(), codes.begin());
                std::copy(plain_deq.begin(), plain_deq.end(), deq.begin());
                scale = plain_scale;
                offset = plain_offset;
              }
              d_b[i * C + c] = scale;
              m_b[i * C + c] = offset;
              std::copy(codes.begin(), codes.end(), codes_b.begin() + (i * C + c) * gs);
            } else {
              for (int64_t k = 0; k < gs; ++k) cur[k] = std::fmin(std::fmax(row[k], lo), hi);
              uint8_t zero;
              quantize(cur.data(), gs, spec.quant, nullptr, deq.data(), &scale, &zero);
            }
            if (!std::isfinite(scale)) {
              int64_t first = overflow_row.load();
              while (r0 + i < first && !overflow_row.compare_exchange_weak(first, r0 + i)) {}
            }
            float* e = E.data() + (i * C + c) * Kp;
            for (int64_t k = 0; k < gs; ++k) e[k] = deq[k] - row[k];
          }
        }
        rowwise_quadratic_form(E.data(), rows, P, err.data(), scratch);
        for (int64_t i = 0; i < nr * C; ++i)
          if (!std::isfinite(err[i])) loss_overflow = true;
        for (int64_t i = 0; i < nr; ++i) {
          const double* e = err.data() + i * C;
          // The reference starts from an error of 1e9 and keeps the unclipped bound unless
          // a candidate is strictly below it; the asymmetric variant starts from candidate 0.
          int64_t best = 0;
          double best_err = spec.asymmetric ? e[0] * inv_n : 1e9;
          for (int64_t c = spec.asymmetric ? 1 : 0; c < C; ++c)
            if (e[c] * inv_n < best_err) {
              best_err = e[c] * inv_n;
              best = c;
            }
          const int64_t o = (r0 + i) * G + g;
          const int64_t plain = spec.refit ? c_plain : 0;
          out.max_val[o] = hi_b[i * C + best];
          out.min_val[o] = lo_b[i * C + best];
          out.err_before[o] = e[plain] * inv_n;
          out.err_after[o] = e[best] * inv_n;
          const int64_t shrink = best >= C0 ? (best == c_plain ? -1 : -1 - (best - C0 + 1)) : -2;
          out.shrink_max[o] = static_cast<int32_t>(shrink != -2 ? shrink : spec.asymmetric ? best / ns : best);
          out.shrink_min[o] = static_cast<int32_t>(shrink != -2 ? shrink : spec.asymmetric ? best % ns : best);
          if (spec.refit) {
            out.scale[o] = d_b[i * C + best];
            out.offset[o] = m_b[i * C + best];
            std::copy(codes_b.begin() + (i * C + best) * gs, codes_b.begin() + (i * C + best + 1) * gs,
                      out.codes.begin() + (r0 + i) * K + g * gs);
          }
        }
      }
  }
  if (overflow_row.load() < N) fail(scale_overflow_message("w", overflow_row.load(), spec.quant.fp16_scale));
  require(!loss_overflow.load(),
          "the clip objective overflows the search's float32 arithmetic (weight errors times the Gram blocks of "
          "X^T X): the activations are too large; scale them down (the losses all scale by the same factor, so "
          "the search's choice does not change)");
  return out;
}

}  // namespace awqkit

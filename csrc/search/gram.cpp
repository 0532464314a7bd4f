#include "search/gram.h"

#include <cfloat>
#include <cmath>
#include <sstream>

#include "common/errors.h"
#include "common/kernel_table.h"
#include "search/quadratic_form_amx.h"
#include "search/tile_kernels.h"

namespace awqkit {

GemmTileFn gemm_tile_kernel() { return active_kernels().gram_tile; }

GemmDotTileFn gemm_dot_tile_kernel() { return active_kernels().gram_dot_tile; }

double gram_search_limit() { return static_cast<double>(FLT_MAX) / 4.0; }

void require_gram_in_search_range(const double* G, int64_t K, int64_t ld) {
  const double limit = gram_search_limit();
  double worst = 0.0;
  bool finite = true;
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = i; j < K; ++j) {
      const double a = std::fabs(G[i * ld + j]);
      finite &= std::isfinite(a);
      if (a > worst) worst = a;
    }
  if (finite && worst <= limit) return;
  std::ostringstream os;
  os << "the Gram matrix X^T X of the activations ";
  if (finite)
    os << "reaches " << worst;
  else
    os << "contains NaN or Inf";
  os << ", beyond the float32 range of the search (its entries must stay below " << limit
     << "): the activations are too large; scale them down before collecting statistics "
        "(the losses all scale by the same factor, so the search's choice does not change)";
  fail(os.str());
}

void gram_accumulate_upper(const float* Xc, int64_t T, int64_t Kp, int64_t ib_begin,
                           int64_t ib_end, double* acc) {
  const GemmTileFn tile = gemm_tile_kernel();
  float C[kTileRows * kTileCols];
  for (int64_t ib = ib_begin; ib < ib_end; ++ib) {
    const int64_t i0 = ib * kTileRows;
    // First column tile that reaches the diagonal of these rows.
    for (int64_t j0 = i0 / kTileCols * kTileCols; j0 < Kp; j0 += kTileCols) {
      tile(Xc + i0, Kp, Xc + j0, Kp, T, C);
      for (int64_t r = 0; r < kTileRows; ++r) {
        double* a = acc + (i0 + r) * Kp + j0;
        const float* c = C + r * kTileCols;
        for (int64_t j = 0; j < kTileCols; ++j) a[j] += static_cast<double>(c[j]);
      }
    }
  }
}

GramPanels build_gram_panels(const double* G, int64_t K, int64_t ld, bool with_amx) {
  GramPanels P;
  P.K = K;
  P.Kp = round_up(K, kTileCols);
  const int64_t NJ = P.Kp / kTileCols;
  P.offset.resize(NJ);
  int64_t total = 0;
  for (int64_t J = 0; J < NJ; ++J) {
    P.offset[J] = total;
    total += (J + 1) * kTileCols * kTileCols;
  }
  P.data.assign(total, 0.0f);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t J = 0; J < NJ; ++J) {
    const int64_t j0 = J * kTileCols, kend = j0 + kTileCols;
    float* p = P.data.data() + P.offset[J];
    for (int64_t k = 0; k < kend && k < K; ++k) {
      const double f = k < j0 ? 2.0 : 1.0;
      for (int64_t c = 0; c < kTileCols && j0 + c < K; ++c) {
        const int64_t j = j0 + c;  // read the upper triangle only: G may hold nothing else
        p[k * kTileCols + c] = static_cast<float>(f * (k <= j ? G[k * ld + j] : G[j * ld + k]));
      }
    }
  }
  const KernelTable& kt = active_kernels();
  if (with_amx && amx_active()) {
    // Pair layout for AMX B tiles: (k, c) -> (k/2)*64 + 2c + (k%2) within the panel.
    P.hi.resize(P.data.size());
    P.lo.resize(P.data.size());
#pragma omp parallel
    {
      std::vector<float> pairs;
#pragma omp for schedule(dynamic, 4)
      for (int64_t J = 0; J < NJ; ++J) {
        const int64_t n = (J + 1) * kTileCols * kTileCols;
        const float* p = P.data.data() + P.offset[J];
        pairs.resize(n);
        for (int64_t k = 0; k < (J + 1) * kTileCols; ++k)
          for (int64_t c = 0; c < kTileCols; ++c) pairs[(k / 2) * 64 + 2 * c + (k % 2)] = p[k * kTileCols + c];
        kt.split_bf16(pairs.data(), n, P.hi.data() + P.offset[J], P.lo.data() + P.offset[J]);
      }
    }
  }
  return P;
}

void rowwise_quadratic_form(const float* E, int64_t rows, const GramPanels& P, double* out,
                            QuadraticFormScratch& qs) {
  constexpr int64_t KC = 256;  // k chunk: a B panel chunk is 32 KiB, stays in L1/L2
  const int64_t Kp = P.Kp, NJ = Kp / kTileCols, nmicro = rows / kTileRows;
  for (int64_t r = 0; r < rows; ++r) out[r] = 0.0;
  if (!P.hi.empty() && rows % kAmxRows == 0 && amx_active()) {
    qs.hi.resize(static_cast<size_t>(rows * Kp));
    qs.lo.resize(static_cast<size_t>(rows * Kp));
    qs.ctile.resize(32 * 32);
    const KernelTable& kt = active_kernels();
    kt.split_bf16(E, rows * Kp, qs.hi.data(), qs.lo.data());
    kt.quadratic_form_amx(E, qs.hi.data(), qs.lo.data(), rows, Kp, P.hi.data(), P.lo.data(),
                               P.offset.data(), qs.ctile.data(), out);
    return;
  }
  const GemmDotTileFn kernel = gemm_dot_tile_kernel();
  std::vector<float>& scratch = qs.pack;
  scratch.resize(static_cast<size_t>(nmicro * KC * kTileRows));
  float part[kTileRows];
  for (int64_t k0 = 0; k0 < Kp; k0 += KC) {
    const int64_t kl = KC < Kp - k0 ? KC : Kp - k0;
    // Pack the chunk of every 12-row micro panel k-major, once for all column tiles.
    for (int64_t m = 0; m < nmicro; ++m) {
      float* a = scratch.data() + m * KC * kTileRows;
      const float* e = E + m * kTileRows * Kp + k0;
      for (int64_t r = 0; r < kTileRows; ++r)
        for (int64_t k = 0; k < kl; ++k) a[k * kTileRows + r] = e[r * Kp + k];
    }
    for (int64_t J = k0 / kTileCols; J < NJ; ++J) {
      const int64_t kend = (J + 1) * kTileCols;
      const int64_t klen = kl < kend - k0 ? kl : kend - k0;
      const float* B = P.panel(J) + k0 * kTileCols;
      for (int64_t m = 0; m < nmicro; ++m) {
        kernel(scratch.data() + m * KC * kTileRows, kTileRows, B, kTileCols, klen,
               E + m * kTileRows * Kp + J * kTileCols, Kp, part);
        for (int64_t r = 0; r < kTileRows; ++r) out[m * kTileRows + r] += static_cast<double>(part[r]);
      }
    }
  }
}

}  // namespace awqkit

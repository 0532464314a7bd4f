// Gram-matrix building blocks of the search: accumulating X^T X from token chunks, and
// evaluating many row-wise quadratic forms e^T G e, the loss of a weight error e.
//
// Why: the AWQ loss mean((x W^T - x Wq^T)^2) equals sum_rows e^T (X^T X) e / (T*N) with
// e = W - Wq, so once G = X^T X is known a candidate costs O(N K^2), whatever T is.
#pragma once
#include <cstdint>
#include <vector>

namespace awqkit {

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Width that a token chunk is padded to for gram_accumulate_upper (12 and 32 both divide it).
inline int64_t gram_padded_width(int64_t K) { return round_up(K, 96); }

// acc[i*Kp + j] += sum_t Xc[t*Kp + i] * Xc[t*Kp + j] for every 12x32 tile of rows in
// [12*ib_begin, 12*ib_end) that touches the upper triangle (j >= i). Xc is a float chunk
// of T tokens zero-padded to Kp = gram_padded_width(K) columns; partial sums over the
// chunk are float, the running sum double. Entries below the diagonal are also written
// for tiles that straddle it; only j >= i is meaningful (callers mirror it).
// Each (i, j) is owned by one row block, so threads that split the row blocks never
// share an output and the result does not depend on the thread count.
void gram_accumulate_upper(const float* Xc, int64_t T, int64_t Kp, int64_t ib_begin,
                           int64_t ib_end, double* acc);

// The Gram matrix packed for quadratic forms, exploiting symmetry:
// e^T G e = sum over diagonal 32x32 tiles + 2 * sum over tiles strictly above them, so
// column tile J keeps only rows k < 32*(J+1) (twice the value above its diagonal tile).
// Panel J is [32*(J+1)][32] floats. Halves the flops of a full E*G.
struct GramPanels {
  int64_t K = 0, Kp = 0;  // Kp = K rounded up to 32; rows of E are padded to Kp
  std::vector<float> data;
  std::vector<int64_t> offset;  // start of panel J in data
  // Optional bf16 hi/lo split of the panels for the AMX path (see quadratic_form_amx.h), same offsets.
  std::vector<uint16_t> hi, lo;
  const float* panel(int64_t J) const { return data.data() + offset[J]; }
};

// Scratch of rowwise_quadratic_form, kept by each thread across calls.
struct QuadraticFormScratch {
  std::vector<float> pack, ctile;
  std::vector<uint16_t> hi, lo;
};

// Largest |G_ij| the search takes: the panels hold 2 * G_ij in float32 and the quadratic
// forms add such terms in float32, so the entries keep a factor of 4 below FLT_MAX.
double gram_search_limit();

// Throws unless every entry j >= i of the symmetric [K, K] matrix G (leading dimension ld)
// is finite and within gram_search_limit(), with a message that says what to do.
void require_gram_in_search_range(const double* G, int64_t K, int64_t ld);

// From a symmetric [K, K] double matrix with leading dimension ld (only j >= i is read).
// with_amx: also build the bf16 split panels when the AMX path is active.
GramPanels build_gram_panels(const double* G, int64_t K, int64_t ld, bool with_amx = false);

// Rows of E a block passed to rowwise_quadratic_form must be a multiple of.
inline constexpr int64_t kQuadRowMultiple = 96;  // 12-row register tiles and 32-row AMX blocks

// out[r] = e_r^T G e_r for rows r < rows of E ([rows, Kp] row-major, zero-padded beyond
// K; rows a multiple of 12, of 32 for the AMX path). Serial: callers parallelise over
// blocks of rows. Each row's sum is formed in a fixed order (k chunk, then column tile),
// float within a tile, double across. Uses AMX when P has the bf16 panels and AMX is active.
void rowwise_quadratic_form(const float* E, int64_t rows, const GramPanels& P, double* out,
                            QuadraticFormScratch& scratch);

}  // namespace awqkit

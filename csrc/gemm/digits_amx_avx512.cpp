// AMX-INT8 engine of the digits product (see digits_kernels.h) for many rows of x.
//
// Per 16-channel block and weight group the codes are unpacked once into tdpbsud's B
// layout (row kk = 4 inputs x 16 channels, one byte each: the even and the odd nibbles of
// each packed 64-byte run give two rows, matching the digits' even-then-odd order), then
// every 16-row tile of x meets them: per digit one A tile (16 rows x up to 64 digits) and
// one tdpbsud into an int32 C tile per digit. C is stored and the float epilogue of the
// scalar reference runs on it row by row, in the reference's order, so the output has the
// reference's bits. Loops are blocked so that the digits of a row chunk and group and the
// y of a row chunk x block chunk stay in L2 while the codes stream.
#include <immintrin.h>

#include <cstring>
#include <initializer_list>

#include "gemm/digits_kernels.h"

namespace awqkit::gemm::avx512 {
namespace {

#define AWQKIT_AMX_INT8_TARGET __attribute__((target("amx-tile,amx-int8")))

constexpr int64_t kRowTilesPerChunk = 8;  // 128 rows: digits per group 48 KB at group 128
constexpr int64_t kBlocksPerChunk = 32;   // 512 channels: y of a row chunk 256 KB

struct __attribute__((packed)) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tiles: 0-2 C (int32 16 x 16, one per digit), 3, 5, 6 A (16 rows x kc digit bytes, one
// per digit so that loads overlap the products), 4 B (kc / 4 rows x 64 code bytes).
AWQKIT_AMX_INT8_TARGET inline void configure_tiles(int64_t kc) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t : {0, 1, 2}) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  for (int t : {3, 5, 6}) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = static_cast<uint16_t>(kc);
  }
  cfg.rows[4] = static_cast<uint8_t>(kc / 4);
  cfg.colsb[4] = 64;
  _tile_loadconfig(&cfg);
}

// Largest tile depth (inputs) dividing the group: 64, 32, 16 or 8 (group_size % 8 == 0).
inline int64_t tile_depth(int64_t gs) {
  for (int64_t kc : {64, 32, 16}) if (gs % kc == 0) return kc;
  return 8;
}

// Codes of block-group hdr -> B rows: run r gives row 2r (even inputs) and 2r + 1 (odd).
inline void unpack_codes(const uint8_t* hdr, int64_t gs, uint8_t* bbuf) {
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  const uint8_t* codes = hdr + kGroupHeader;
  for (int64_t run = 0; run < gs / kRun; ++run) {
    const __m512i v = _mm512_loadu_si512(codes + run * 64);
    _mm512_storeu_si512(bbuf + run * 128, _mm512_and_si512(v, lo4));
    _mm512_storeu_si512(bbuf + run * 128 + 64, _mm512_and_si512(_mm512_srli_epi32(v, 4), lo4));
  }
}

inline __mmask16 lane_mask(int64_t n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

}  // namespace

AWQKIT_AMX_INT8_TARGET void gemm_digits_amx(const PackedView& w, const int8_t* digits, const float* step,
                                            const float* dsum, int64_t M, const float* bias, float* y,
                                            int64_t b0, int64_t b1, uint8_t* scratch) {
  const int64_t K = w.K, N = w.N, G = w.G, gs = w.group_size;
  const int64_t kc = tile_depth(gs), lda = kDigits * K;
  const int64_t row_tiles = amx_rows(M) / kAmxTileRows;
  uint8_t* bbuf = scratch;
  int32_t* cbuf = reinterpret_cast<int32_t*>(scratch + gs * 16);
  configure_tiles(kc);
  for (int64_t rc = 0; rc < row_tiles; rc += kRowTilesPerChunk) {
    const int64_t rc_end = rc + kRowTilesPerChunk < row_tiles ? rc + kRowTilesPerChunk : row_tiles;
    for (int64_t bc = b0; bc < b1; bc += kBlocksPerChunk) {
      const int64_t bc_end = bc + kBlocksPerChunk < b1 ? bc + kBlocksPerChunk : b1;
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t b = bc; b < bc_end; ++b) {
          const uint8_t* hdr = block_group(w, b, g);
          unpack_codes(hdr, gs, bbuf);
          const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr)));
          const __m512 z = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr + 32)));
          const int64_t n0 = b * kBlock;
          const __mmask16 mask = lane_mask(N - n0);
          for (int64_t rt = rc; rt < rc_end; ++rt) {
            const int8_t* a = digits + rt * kAmxTileRows * lda + g * gs;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            for (int64_t k0 = 0; k0 < gs; k0 += kc) {
              _tile_loadd(4, bbuf + k0 * 16, 64);
              _tile_loadd(3, a + k0, lda);
              _tile_loadd(5, a + K + k0, lda);
              _tile_loadd(6, a + 2 * K + k0, lda);
              _tile_dpbsud(0, 3, 4);
              _tile_dpbsud(1, 5, 4);
              _tile_dpbsud(2, 6, 4);
            }
            _tile_stored(0, cbuf, 64);
            _tile_stored(1, cbuf + 256, 64);
            _tile_stored(2, cbuf + 512, 64);
            const int64_t rows = M - rt * kAmxTileRows < kAmxTileRows ? M - rt * kAmxTileRows : kAmxTileRows;
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t m = rt * kAmxTileRows + r;
              const float* ds = dsum + (m * G + g) * kDigits;
              __m512 u[kDigits];
              for (int i = 0; i < kDigits; ++i)
                u[i] = _mm512_fnmadd_ps(z, _mm512_set1_ps(ds[i]),
                                        _mm512_cvtepi32_ps(_mm512_loadu_si512(cbuf + i * 256 + r * 16)));
              const __m512 v = _mm512_fmadd_ps(u[2], _mm512_set1_ps(65536.0f),
                                               _mm512_fmadd_ps(u[1], _mm512_set1_ps(256.0f), u[0]));
              float* yr = y + m * N + n0;
              __m512 acc = g == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, yr);
              acc = _mm512_fmadd_ps(v, _mm512_mul_ps(s, _mm512_set1_ps(step[m * G + g])), acc);
              if (g == G - 1 && bias) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, bias + n0));
              _mm512_mask_storeu_ps(yr, mask, acc);
            }
          }
        }
      }
    }
  }
  _tile_release();
}

}  // namespace awqkit::gemm::avx512

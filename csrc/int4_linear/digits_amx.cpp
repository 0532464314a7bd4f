// AMX-INT8 engine of the digits product (see digits_kernels.h) for many rows of x.
//
// Per 16-channel block and weight group the codes are unpacked once into tdpbssd's B
// layout (row kk = 4 inputs x 16 channels, one byte each: the even and the odd nibbles of
// each packed 64-byte run give two rows, matching the digits' even-then-odd order), then
// every 16-row tile of x meets them: per digit one A tile (16 rows x up to 64 digits) and
// one tdpbssd (codes as signed code - zero) into an int32 C tile per digit. C is stored and the float epilogue of the
// scalar reference runs on it row by row, in the reference's order, so the output has the
// reference's bits. Loops are blocked so that the digits of a row chunk and group and the
// y of a row chunk x block chunk stay in L2 while the codes stream. The _amx.cpp suffix gets
// AVX-512 (VNNI) and AMX flags from CMake; it runs only after amx_int8_active().
#include <immintrin.h>

#include <cstring>
#include <initializer_list>

#include "common/amx_support.h"
#include "int4_linear/digits_kernels.h"
#include "int4_linear/avx512_vnni_helpers.h"

namespace awqkit::int4_linear::amx {
using namespace avx512_vnni;  // the AVX-512 helpers that stage and finish the tiles
namespace {


constexpr int64_t kRowTilesPerChunk = 8;  // 128 rows: digits per group 48 KB at group 128
constexpr int64_t kBlocksPerChunk = 32;   // 512 channels: y of a row chunk 256 KB


// Tiles: 0-2 C (int32 16 x 16, one per digit), 3, 5, 6 A (16 rows x kc digit bytes, one
// per digit so that loads overlap the products), 4 and 7 B (kc / 4 rows x 64 code bytes:
// a group of up to 2 kc inputs stays in tiles for all row tiles).
inline void configure_tiles(int64_t kc) {
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
  for (int t : {4, 7}) {
    cfg.rows[t] = static_cast<uint8_t>(kc / 4);
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

// Largest tile depth (inputs) dividing the group: 64, 32, 16 or 8 (group_size % 8 == 0).
inline int64_t tile_depth(int64_t gs) {
  for (int64_t kc : {64, 32, 16}) if (gs % kc == 0) return kc;
  return 8;
}

// Codes of block-group hdr -> B rows of signed code - zero (-15..15, so the products are
// the reference's u_j with no correction): run r gives row 2r (even inputs) and 2r + 1 (odd).
inline void unpack_codes(const uint8_t* hdr, int64_t gs, uint8_t* bbuf) {
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  // zero of channel c (0..15, exact in fp16) in each byte of dword c.
  const __m512i z = _mm512_cvttps_epi32(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hdr + 32))));
  const __m512i zb = _mm512_mullo_epi32(z, _mm512_set1_epi32(0x01010101));
  const uint8_t* codes = hdr + kGroupHeader;
  for (int64_t run = 0; run < gs / kRun; ++run) {
    const __m512i v = _mm512_loadu_si512(codes + run * 64);
    _mm512_storeu_si512(bbuf + run * 128, _mm512_sub_epi8(_mm512_and_si512(v, lo4), zb));
    _mm512_storeu_si512(bbuf + run * 128 + 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi32(v, 4), lo4), zb));
  }
}


// C_i += A_i * B for the three digits i: A_i = the 16 x kc digit tile at a + i * dstride, B
// the code tile already in tile register BT. A macro: GCC's tile intrinsics paste the tile
// numbers into the instruction text, so they must be literal tokens.
#define AWQKIT_DIGIT_PRODUCTS(a, dstride, kc, BT) \
  do {                                            \
    _tile_loadd(3, (a), (kc));                    \
    _tile_loadd(5, (a) + (dstride), (kc));        \
    _tile_loadd(6, (a) + 2 * (dstride), (kc));    \
    _tile_dpbssd(0, 3, BT);                       \
    _tile_dpbssd(1, 5, BT);                       \
    _tile_dpbssd(2, 6, BT);                       \
  } while (0)

}  // namespace

void digits_to_amx_tiles(const int8_t* rows, int64_t n_rows, int64_t K, int64_t gs, int8_t* tiles) {
  const int64_t kc = tile_depth(gs), G = K / gs;
  for (int64_t r = 0; r < kAmxTileRows; ++r)
    for (int64_t g = 0; g < G; ++g)
      for (int i = 0; i < kDigits; ++i)
        for (int64_t k0 = 0; k0 < gs; k0 += kc) {
          int8_t* dst = tiles + (g * kDigits + i) * gs * kAmxTileRows + k0 * kAmxTileRows + r * kc;
          if (r < n_rows)
            std::memcpy(dst, rows + (r * kDigits + i) * K + g * gs + k0, static_cast<size_t>(kc));
          else
            std::memset(dst, 0, static_cast<size_t>(kc));
        }
}

void gemm_digits_amx(const PackedView& w, const int8_t* digits, const float* step,
                                            int64_t M, const float* bias, float* y, int64_t b0, int64_t b1,
                                            uint8_t* scratch) {
  const int64_t N = w.N, G = w.G, gs = w.group_size;
  const int64_t kc = tile_depth(gs), dstride = gs * kAmxTileRows;
  const int64_t row_tiles = amx_rows(M) / kAmxTileRows;
  const bool b_resident = gs <= 2 * kc;  // the group's codes fit tiles 4 and 7
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
          const int64_t n0 = b * kBlock;
          const __mmask16 mask = lane_mask(N - n0);
          if (b_resident) {
            _tile_loadd(4, bbuf, 64);
            if (gs == 2 * kc) _tile_loadd(7, bbuf + kc * 16, 64);
          }
          for (int64_t rt = rc; rt < rc_end; ++rt) {
            const int8_t* a = digits + (rt * G + g) * dstride * kDigits;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            if (b_resident) {  // one or two tiles of codes, loaded once per block-group
              AWQKIT_DIGIT_PRODUCTS(a, dstride, kc, 4);
              if (gs == 2 * kc) AWQKIT_DIGIT_PRODUCTS(a + kc * 16, dstride, kc, 7);
            } else {
              for (int64_t k0 = 0; k0 < gs; k0 += kc) {
                _tile_loadd(4, bbuf + k0 * 16, 64);
                AWQKIT_DIGIT_PRODUCTS(a + k0 * 16, dstride, kc, 4);
              }
            }
            _tile_stored(0, cbuf, 64);
            _tile_stored(1, cbuf + 256, 64);
            _tile_stored(2, cbuf + 512, 64);
            const int64_t rows = M - rt * kAmxTileRows < kAmxTileRows ? M - rt * kAmxTileRows : kAmxTileRows;
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t m = rt * kAmxTileRows + r;
              __m512 u[kDigits];
              for (int i = 0; i < kDigits; ++i) u[i] = _mm512_cvtepi32_ps(_mm512_loadu_si512(cbuf + i * 256 + r * 16));
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

}  // namespace awqkit::int4_linear::amx

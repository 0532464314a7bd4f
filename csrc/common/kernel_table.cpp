#include "common/kernel_table.h"

#include <stdexcept>

namespace awqkit {
namespace {

bool always() { return true; }

#if AWQKIT_X86_SIMD
// libgcc's probe also checks that the OS saves the wide registers (XGETBV).
bool has_avx2_fma_f16c() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

bool has_avx512_vnni() {
  return has_avx2_fma_f16c() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vnni");
}
#endif

// A level names only what it provides; resolve() fills the rest from the levels below.
std::vector<IsaLevel> build_levels() {
  std::vector<IsaLevel> levels;
  {
    KernelTable t{};
    t.quantize_group = scalar::quantize_group;
    t.gram_tile = scalar::gemm_tile;
    t.gram_dot_tile = scalar::gemm_dot_tile;
    t.gemv = gemm::scalar::gemv;
    t.split_digits = gemm::scalar::split_digits;
    t.gemv_digits = gemm::scalar::gemv_digits;
    t.quantize_act = gemm::scalar::quantize_act;
    t.gemm_int8 = gemm::scalar::gemm_int8;
    levels.push_back({Isa::scalar, "scalar", "any CPU", always, t});
  }
#if AWQKIT_X86_SIMD
  {
    KernelTable t{};
    t.quantize_group = avx2::quantize_group;
    t.gram_tile = avx2::gemm_tile;
    t.gram_dot_tile = avx2::gemm_dot_tile;
    t.gemv = gemm::avx2::gemv;
    levels.push_back({Isa::avx2, "avx2", "AVX2, FMA, F16C", has_avx2_fma_f16c, t});
  }
  {
    KernelTable t{};
    t.quantize_group = avx512::quantize_group;
    t.gram_tile = avx512::gemm_tile;
    t.gram_dot_tile = avx512::gemm_dot_tile;
    t.gemv = gemm::avx512::gemv;
    t.gemm = gemm::avx512::gemm;
    t.split_digits = gemm::avx512::split_digits;
    t.gemv_digits = gemm::avx512::gemv_digits;
    t.quantize_act = gemm::avx512::quantize_act;
    t.gemm_int8 = gemm::avx512::gemm_int8;
    // AMX tiles run beside AVX-512 code (the kernels stage and finish tiles with it).
    t.split_bf16 = avx512::split_bf16;
    t.quadratic_form_amx = avx512::quadratic_form_amx;
    t.digits_to_amx_tiles = gemm::avx512::digits_to_amx_tiles;
    t.gemm_digits_amx = gemm::avx512::gemm_digits_amx;
    levels.push_back({Isa::avx512, "avx512", "AVX-512 F, BW, DQ, VL and VNNI (+ AVX2, FMA, F16C)", has_avx512_vnni, t});
  }
#endif
  return levels;
}

template <typename Fn>
void fill(Fn& entry, Fn below) {
  if (!entry) entry = below;
}

// resolve() fills every field: a field added to KernelTable must be added there too.
static_assert(sizeof(KernelTable) == 13 * sizeof(void*), "KernelTable changed: update resolve()");

std::vector<KernelTable> resolve(const std::vector<IsaLevel>& levels) {
  std::vector<KernelTable> out;
  for (size_t i = 0; i < levels.size(); ++i) {
    KernelTable t = levels[i].kernels;
    if (i > 0) {
      const KernelTable& b = out[i - 1];
      fill(t.quantize_group, b.quantize_group);
      fill(t.gram_tile, b.gram_tile);
      fill(t.gram_dot_tile, b.gram_dot_tile);
      fill(t.gemv, b.gemv);
      fill(t.gemm, b.gemm);
      fill(t.split_digits, b.split_digits);
      fill(t.gemv_digits, b.gemv_digits);
      fill(t.quantize_act, b.quantize_act);
      fill(t.gemm_int8, b.gemm_int8);
      fill(t.split_bf16, b.split_bf16);
      fill(t.quadratic_form_amx, b.quadratic_form_amx);
      fill(t.digits_to_amx_tiles, b.digits_to_amx_tiles);
      fill(t.gemm_digits_amx, b.gemm_digits_amx);
    }
    out.push_back(t);
  }
  return out;
}

const std::vector<KernelTable>& resolved_tables() {
  static const std::vector<KernelTable> tables = resolve(isa_levels());
  return tables;
}

}  // namespace

const std::vector<IsaLevel>& isa_levels() {
  static const std::vector<IsaLevel> levels = build_levels();
  return levels;
}

const KernelTable& kernels_for(Isa isa) {
  const auto& tables = resolved_tables();
  const size_t i = static_cast<size_t>(isa);
  if (i >= tables.size()) throw std::invalid_argument("ISA level not compiled into this build");
  return tables[i];
}

const KernelTable& active_kernels() { return kernels_for(active_isa()); }

}  // namespace awqkit

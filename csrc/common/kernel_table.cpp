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
    t.gemv = int4_linear::scalar::gemv;
    t.split_digits = int4_linear::scalar::split_digits;
    t.gemv_digits = int4_linear::scalar::gemv_digits;
    t.quantize_act = int4_linear::scalar::quantize_act;
    t.gemm_int8 = int4_linear::scalar::gemm_int8;
    t.rms_norm = runtime::scalar::rms_norm;
    t.attend = runtime::scalar::attend;
    t.silu_mul = runtime::scalar::silu_mul;
    levels.push_back({Isa::scalar, "scalar", "any CPU", always, t});
  }
#if AWQKIT_X86_SIMD
  {
    KernelTable t{};
    t.quantize_group = avx2::quantize_group;
    t.gram_tile = avx2::gemm_tile;
    t.gram_dot_tile = avx2::gemm_dot_tile;
    t.gemv = int4_linear::avx2::gemv;
    levels.push_back({Isa::avx2, "avx2", "AVX2, FMA, F16C", has_avx2_fma_f16c, t});
  }
  {
    KernelTable t{};
    t.quantize_group = avx512_vnni::quantize_group;
    t.gram_tile = avx512_vnni::gemm_tile;
    t.gram_dot_tile = avx512_vnni::gemm_dot_tile;
    t.gemv = int4_linear::avx512_vnni::gemv;
    t.gemm = int4_linear::avx512_vnni::gemm;
    t.split_digits = int4_linear::avx512_vnni::split_digits;
    t.gemv_digits = int4_linear::avx512_vnni::gemv_digits;
    t.quantize_act = int4_linear::avx512_vnni::quantize_act;
    t.gemm_int8 = int4_linear::avx512_vnni::gemm_int8;
    t.rms_norm = runtime::avx512_vnni::rms_norm;
    t.attend = runtime::avx512_vnni::attend;
    t.silu_mul = runtime::avx512_vnni::silu_mul;
#if AWQKIT_AMX_KERNELS
    // AMX tiles (*_amx.cpp) run beside AVX-512 code (the kernels stage and finish tiles with
    // it), so they belong to this level; they run only where the CPU and OS grant the tiles
    // (common/amx_support.cpp) and AMX is enabled.
    t.split_bf16 = amx::split_bf16;
    t.quadratic_form_amx = amx::quadratic_form_amx;
    t.digits_to_amx_tiles = int4_linear::amx::digits_to_amx_tiles;
    t.gemm_digits_amx = int4_linear::amx::gemm_digits_amx;
#endif
    levels.push_back({Isa::avx512_vnni, "avx512_vnni", "AVX-512 F, BW, DQ, VL and VNNI (+ AVX2, FMA, F16C)",
                      has_avx512_vnni, t});
  }
#endif
  return levels;
}

template <typename Fn>
void fill(Fn& entry, Fn below) {
  if (!entry) entry = below;
}

// resolve() fills every field: a field added to KernelTable must be added to
// AWQKIT_KERNEL_TABLE_FIELDS too.
#define AWQKIT_COUNT_FIELD(f) +1
static_assert(sizeof(KernelTable) == (0 AWQKIT_KERNEL_TABLE_FIELDS(AWQKIT_COUNT_FIELD)) * sizeof(void*),
              "KernelTable changed: update AWQKIT_KERNEL_TABLE_FIELDS");
#undef AWQKIT_COUNT_FIELD

std::vector<KernelTable> resolve(const std::vector<IsaLevel>& levels) {
  std::vector<KernelTable> out;
  for (size_t i = 0; i < levels.size(); ++i) {
    KernelTable t = levels[i].kernels;
    if (i > 0) {
      const KernelTable& b = out[i - 1];
#define AWQKIT_FILL_FIELD(f) fill(t.f, b.f);
      AWQKIT_KERNEL_TABLE_FIELDS(AWQKIT_FILL_FIELD)
#undef AWQKIT_FILL_FIELD
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

std::vector<const char*> provided_kernels(const IsaLevel& level) {
  std::vector<const char*> out;
#define AWQKIT_LIST_FIELD(f) \
  if (level.kernels.f) out.push_back(#f);
  AWQKIT_KERNEL_TABLE_FIELDS(AWQKIT_LIST_FIELD)
#undef AWQKIT_LIST_FIELD
  return out;
}

}  // namespace awqkit

#include "common/amx_support.h"

#if AWQKIT_X86_SIMD
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "common/errors.h"
#include "common/kernel_table.h"

namespace awqkit {
namespace {

// CPUID.(7,0):EDX bit 24 AMX-TILE, 22 AMX-BF16, 25 AMX-INT8.
unsigned amx_cpuid_edx() {
#if AWQKIT_X86_SIMD
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  return d;
#else
  return 0;
#endif
}

bool probe_tiles() {
  const KernelTable& best = kernels_for(detected_isa());
  if (!((amx_cpuid_edx() >> 24) & 1u) || !(best.has_amx_bf16() || best.has_amx_int8())) return false;
#if AWQKIT_X86_SIMD && defined(__linux__) && defined(SYS_arch_prctl)
  // Linux hands out the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA).
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return false;
#endif
}

bool tiles_granted() {
  static const bool ok = probe_tiles();
  return ok;
}

// Starts on only where some AMX path can run: a flag that said "on" on a CPU without AMX
// made use_amx(False) fail on exit, when it put back the "on" it had read.
std::atomic<bool>& enabled_flag() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("AWQKIT_AMX");
    const bool wanted = !(env && std::strcmp(env, "0") == 0);
    return wanted && (amx_supported() || amx_int8_supported());
  }()};
  return on;
}

}  // namespace

bool amx_supported() {
  static const bool ok = ((amx_cpuid_edx() >> 22) & 1u) && tiles_granted();
  return ok;
}

bool amx_int8_supported() {
  static const bool ok = ((amx_cpuid_edx() >> 25) & 1u) && tiles_granted();
  return ok;
}

bool amx_enabled() { return enabled_flag().load(std::memory_order_relaxed); }

void set_amx_enabled(bool on) {
  require(!on || amx_supported() || amx_int8_supported(), "AMX is not available on this CPU/OS");
  enabled_flag().store(on, std::memory_order_relaxed);
}

// AMX belongs to the levels whose table carries AMX kernels (they stage tiles with AVX-512).
bool amx_active() { return amx_enabled() && amx_supported() && active_kernels().has_amx_bf16(); }

bool amx_int8_active() { return amx_enabled() && amx_int8_supported() && active_kernels().has_amx_int8(); }

}  // namespace awqkit

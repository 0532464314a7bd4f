#include "search/amx.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "common/cpu_features.h"
#include "common/errors.h"

namespace awqkit {
namespace {

bool probe_amx() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
  if (!tile || !bf16 || detected_isa() != Isa::avx512) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
  // Linux hands out the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA).
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return false;
#endif
}

std::atomic<bool>& enabled_flag() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("AWQKIT_AMX");
    return !(env && std::strcmp(env, "0") == 0);
  }()};
  return on;
}

}  // namespace

bool amx_supported() {
  static const bool ok = probe_amx();
  return ok;
}

bool amx_enabled() { return enabled_flag().load(std::memory_order_relaxed); }

void set_amx_enabled(bool on) {
  require(!on || amx_supported(), "AMX-BF16 is not available on this CPU/OS");
  enabled_flag().store(on, std::memory_order_relaxed);
}

bool amx_active() { return amx_enabled() && amx_supported() && active_isa() == Isa::avx512; }

}  // namespace awqkit

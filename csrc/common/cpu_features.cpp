#include "common/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace awqkit {
namespace {

Isa probe_cpu() {
  __builtin_cpu_init();
  // libgcc's probe also checks that the OS saves the wide registers (XGETBV).
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return avx512 ? Isa::avx512 : avx2 ? Isa::avx2 : Isa::scalar;
}

// The best level the CPU has, lowered by AWQKIT_ISA: the ceiling for the whole process, so that
// a capped run (CI's AVX2 pass) never climbs back to the CPU's own level through set_isa().
Isa initial_isa() {
  Isa best = probe_cpu();
  if (const char* env = std::getenv("AWQKIT_ISA")) {
    if (*env) {
      Isa wanted;
      try {
        wanted = parse_isa(env);
      } catch (const std::invalid_argument&) {
        return best;  // an unknown name must not make the import fail; set_isa() reports it
      }
      if (static_cast<int>(wanted) < static_cast<int>(best)) best = wanted;
    }
  }
  return best;
}

Isa ceiling_isa() {
  static const Isa isa = initial_isa();
  return isa;
}

std::atomic<int>& active_level() {
  static std::atomic<int> level{static_cast<int>(ceiling_isa())};
  return level;
}

}  // namespace

Isa detected_isa() {
  static const Isa isa = probe_cpu();
  return isa;
}

Isa active_isa() { return static_cast<Isa>(active_level().load(std::memory_order_relaxed)); }

Isa max_isa() { return ceiling_isa(); }

void set_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(detected_isa()))
    throw std::invalid_argument(std::string("this CPU does not support ISA '") + isa_name(isa) +
                                "' (best available: '" + isa_name(detected_isa()) + "')");
  if (static_cast<int>(isa) > static_cast<int>(ceiling_isa()))
    throw std::invalid_argument(std::string("ISA '") + isa_name(isa) + "' is above the cap AWQKIT_ISA='" +
                                isa_name(ceiling_isa()) + "' set for this process");
  active_level().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  throw std::invalid_argument("unknown ISA '" + name + "' (expected scalar, avx2 or avx512)");
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (int i = 0; i <= static_cast<int>(ceiling_isa()); ++i) out.push_back(static_cast<Isa>(i));
  return out;
}

}  // namespace awqkit

#include "common/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "common/kernel_table.h"

namespace awqkit {
namespace {

// The highest level of the fallback chain whose features this CPU has (each level needs the
// ones below it too).
Isa probe_cpu() {
  Isa best = Isa::scalar;
  for (const IsaLevel& level : isa_levels()) {
    if (!level.cpu_has()) break;
    best = level.isa;
  }
  return best;
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

Isa max_isa() { return ceiling_isa(); }

Isa active_isa() { return static_cast<Isa>(active_level().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  if (static_cast<size_t>(isa) >= isa_levels().size())
    throw std::invalid_argument("this build has no ISA level " + std::to_string(static_cast<int>(isa)));
  if (static_cast<int>(isa) > static_cast<int>(detected_isa()))
    throw std::invalid_argument(std::string("this CPU does not support ISA '") + isa_name(isa) + "' (it needs " +
                                isa_levels()[static_cast<size_t>(isa)].requires + "; best available: '" +
                                isa_name(detected_isa()) + "')");
  if (static_cast<int>(isa) > static_cast<int>(ceiling_isa()))
    throw std::invalid_argument(std::string("ISA '") + isa_name(isa) + "' is above the cap AWQKIT_ISA='" +
                                isa_name(ceiling_isa()) + "' set for this process");
  active_level().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  const auto& levels = isa_levels();
  const size_t i = static_cast<size_t>(isa);
  return i < levels.size() ? levels[i].name : "unknown";
}

Isa parse_isa(const std::string& name) {
  // Compatibility: the avx512_vnni level was called "avx512" (it always required VNNI).
  if (name == "avx512") return parse_isa("avx512_vnni");
  std::string known;
  for (const IsaLevel& level : isa_levels()) {
    if (name == level.name) return level.isa;
    known += (known.empty() ? "" : ", ") + std::string(level.name);
  }
  throw std::invalid_argument("unknown ISA '" + name + "' (this build has: " + known + ")");
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (int i = 0; i <= static_cast<int>(ceiling_isa()); ++i) out.push_back(static_cast<Isa>(i));
  return out;
}

}  // namespace awqkit

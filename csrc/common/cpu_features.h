// Run-time choice of the ISA level the kernels dispatch to.
//
// The levels, what each needs and the kernels each provides are one table
// (common/kernel_table.h). The best level the CPU (and OS) support is picked once, lowered by
// the AWQKIT_ISA environment variable if set (a ceiling for the process); tests lower it
// further with set_isa() to run every path.
#pragma once
#include <string>
#include <vector>

namespace awqkit {

// Positions in the fallback chain of kernel_table.cpp (each level falls back to the one before).
enum class Isa : int { scalar = 0, avx2 = 1, avx512_vnni = 2 };

// Highest level this CPU supports (each level's needs: IsaLevel::requires).
Isa detected_isa();
// detected_isa() lowered by AWQKIT_ISA: the highest level this process may use.
Isa max_isa();
// Level kernels dispatch to now.
Isa active_isa();
// Force a level; throws std::invalid_argument if the CPU lacks it or it is above max_isa().
void set_isa(Isa isa);

const char* isa_name(Isa isa);
// A level's name, or an alias of one ("avx512": avx512_vnni, its name before 0.2); throws
// std::invalid_argument.
Isa parse_isa(const std::string& name);
std::vector<Isa> available_isas();       // scalar .. max_isa()

}  // namespace awqkit

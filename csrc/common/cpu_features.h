// Run-time choice of the SIMD instruction set.
//
// Each kernel exists as a scalar reference (baseline x86-64) and, where it pays, as
// AVX2 and AVX-512 variants compiled in their own translation units. The best level
// the CPU (and OS) support is picked once, lowered by the AWQKIT_ISA environment
// variable if set; tests lower it further with set_isa() to run every path.
#pragma once
#include <string>
#include <vector>

namespace awqkit {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

// Highest level this CPU supports (AVX2 = AVX2+FMA+F16C; AVX-512 = F+BW+DQ+VL+VNNI).
Isa detected_isa();
// detected_isa() lowered by AWQKIT_ISA: the highest level this process may use.
Isa max_isa();
// Level kernels dispatch to now.
Isa active_isa();
// Force a level; throws std::invalid_argument if the CPU lacks it or it is above max_isa().
void set_isa(Isa isa);

const char* isa_name(Isa isa);
Isa parse_isa(const std::string& name);  // throws std::invalid_argument
std::vector<Isa> available_isas();       // scalar .. max_isa()

}  // namespace awqkit

// Native probes of the machine's limits, used by benchmarks/bench_gemm.py to put the
// kernels' numbers in proportion: streaming-read bandwidth and fp32 FMA peak.
#pragma once
#include <cstdint>

namespace awqkit::gemm::probes {

// Reads n bytes (n % 64 == 0, 64-byte aligned) once with AVX-512 loads, OpenMP static
// split over the current thread count; returns a checksum so nothing is elided.
double stream_read(const uint8_t* buf, int64_t n);
// Runs iters x 24 independent 16-lane FMAs per thread; returns the flops done.
double fma_peak(int64_t iters);

}  // namespace awqkit::gemm::probes

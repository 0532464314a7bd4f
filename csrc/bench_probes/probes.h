// Native probes of the machine's limits, used by benchmarks/bench_gemm.py to put the
// kernels' numbers in proportion: streaming-read bandwidth, the per-call read ceiling of a decode GEMV,
// and fp32 FMA peak.
#pragma once
#include <cstdint>

namespace awqkit::bench_probes {

// Reads n bytes (n % 64 == 0, 64-byte aligned) once with AVX-512 loads, OpenMP static
// split over the current thread count; returns a checksum so nothing is elided.
double stream_read(const uint8_t* buf, int64_t n);
// A decode call's reads without its arithmetic: the blocks of one packed layer (block_bytes
// % 64 == 0, 64-byte aligned), split over the threads as the GEMV kernels split them, in
// one parallel region per call (none on one thread). The per-call ceiling of those kernels.
double read_blocks(const uint8_t* data, int64_t blocks, int64_t block_bytes);
// Runs iters x 24 independent 16-lane FMAs per thread; returns the flops done.
double fma_peak(int64_t iters);

}  // namespace awqkit::bench_probes

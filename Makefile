# Quick start (fresh Debian 12, Python 3.11, as root):
#   make demo   # install everything, then run the main job on the embedded default
#   make test   # install everything, then run the whole test suite (notebooks included)
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DATA_DIR ?= $(abspath ../shared/data)
export AWQKIT_DATA_DIR ?= $(DATA_DIR)

# The tests that need only numpy (no torch, no model): run again capped at AVX2 and under the sanitizers.
NUMPY_TESTS := $(filter-out tests/test_model_%,$(wildcard tests/test_*.py))
SANITIZE_DIR := build/sanitize
# Model-level tests whose native code has no numpy-level test (the decode runtime, csrc/runtime/);
# they need torch, which `make test` installs before it runs sanitize.
SANITIZE_MODEL_TESTS := tests/test_model_decode_runtime.py

.PHONY: demo test test-avx2 install deps-system dev lint sanitize check-portable bench clean

deps-system:
	@if ! [ -f /usr/include/eigen3/Eigen/Core ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q libeigen3-dev g++ cmake; \
	  else sudo apt-get update -q && sudo apt-get install -y -q libeigen3-dev g++ cmake; fi; \
	fi

# The benchmark probes' module (awqkit._bench_probes, CMake AWQKIT_BENCH_PROBES) is built here for
# the tests, notebook 04 and make bench; a wheel built with the defaults does not ship it.
install: deps-system
	$(PIP) install -q --config-settings=cmake.define.AWQKIT_BENCH_PROBES=ON ".[torch,test,notebooks,lint]"
	$(PIP) install -q --no-deps autoawq==0.2.9  # only its pure-torch unpacking code is used (interop test)
	# transformers 5 + gptqmodel loading a checkpoint on the CPU (tests/test_model_interop.py): pure
	# Python (kernels are built at run time, the CPU one is torch's), --no-deps so torch stays as installed
	$(PIP) install -q --no-deps gptqmodel==7.6.0 pypcre==0.6.4 logbar==0.4.15 accelerate==1.15.0 threadpoolctl==3.8.0 \
	  device-smi==0.5.7 tokenicer==0.0.14 defuser==0.0.28

demo: install
	$(PYTHON) -m awqkit demo

test: install
	$(MAKE) --no-print-directory lint
	$(PYTHON) -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=900 tests notebooks
	$(MAKE) --no-print-directory test-avx2
	$(MAKE) --no-print-directory sanitize
	$(MAKE) --no-print-directory check-portable

# ruff (sources, tests, benchmarks, notebooks) and mypy on the Python API; configuration in
# pyproject.toml. make install installs both (the [lint] extra).
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

# The numpy-level tests again with the kernels capped at AVX2 (AWQKIT_ISA is a ceiling for the
# process): the paths that CPUs without AVX-512 take stay green on every CI machine.
test-avx2:
	AWQKIT_ISA=avx2 $(PYTHON) -m pytest -q -p no:cacheprovider $(NUMPY_TESTS)

# AddressSanitizer + UndefinedBehaviorSanitizer build of the module, in its own copy of the
# package under $(SANITIZE_DIR)/site, and the numpy-level tests against it. Python is not
# instrumented: libasan is preloaded (with libstdc++, whose __cxa_throw ASan must find at start
# or every C++ exception aborts), and leak checking is off (the interpreter's own allocations
# at exit are not ours). --capture=sys: a report on stderr must reach the log, not die in
# pytest's captured file descriptor when the sanitizer halts the process.
sanitize: deps-system
	$(PIP) install -q "numpy>=1.24" "pytest>=8" "hypothesis>=6.100" "pybind11>=2.12,<4"
	rm -rf $(SANITIZE_DIR)/site && mkdir -p $(SANITIZE_DIR)/site
	cp -r python/awqkit $(SANITIZE_DIR)/site/ && rm -f $(SANITIZE_DIR)/site/awqkit/_core*.so $(SANITIZE_DIR)/site/awqkit/_bench_probes*.so
	cmake -S . -B $(SANITIZE_DIR)/cmake -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAWQKIT_SANITIZE=ON -DAWQKIT_BENCH_PROBES=ON \
	  -DAWQKIT_OUTPUT_DIR=$(abspath $(SANITIZE_DIR))/site/awqkit \
	  -Dpybind11_DIR=$$($(PYTHON) -m pybind11 --cmakedir) -DPython_EXECUTABLE=$$(command -v $(PYTHON)) >/dev/null
	cmake --build $(SANITIZE_DIR)/cmake -j 2
	LD_PRELOAD="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  PYTHONPATH=$(SANITIZE_DIR)/site $(PYTHON) -m pytest -q -p no:cacheprovider --capture=sys $(NUMPY_TESTS) $(SANITIZE_MODEL_TESTS)

# In-tree build for development: the module lands in python/awqkit/, use PYTHONPATH=python.
dev: deps-system
	cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DAWQKIT_INPLACE=ON -DAWQKIT_BENCH_PROBES=ON \
	  -Dpybind11_DIR=$$($(PYTHON) -m pybind11 --cmakedir) -DPython_EXECUTABLE=$$(command -v $(PYTHON)) >/dev/null
	cmake --build build/dev

# Another architecture builds with the scalar kernels only: every file CMake keeps off x86-64
# is compiled for aarch64 (AWQKIT_X86_SIMD=0), and the objects must not need an x86 kernel.
PORTABLE_DIR := build/portable-aarch64
check-portable: deps-system
	@command -v aarch64-linux-gnu-g++ >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q g++-aarch64-linux-gnu >/dev/null || { apt-get update -q && apt-get install -y -q g++-aarch64-linux-gnu >/dev/null; }; \
	  else sudo apt-get install -y -q g++-aarch64-linux-gnu >/dev/null; fi; }
	rm -rf $(PORTABLE_DIR) && mkdir -p $(PORTABLE_DIR)
	@set -e; for f in $$(find csrc -name '*.cpp' | grep -v -E '_(avx2|avx512_vnni|amx)\.cpp$$' | sort); do \
	  aarch64-linux-gnu-g++ -std=c++17 -O1 -fopenmp -fPIC -Wall -DAWQKIT_X86_SIMD=0 -DEIGEN_DONT_PARALLELIZE \
	    -Icsrc -I/usr/include/eigen3 $$($(PYTHON) -m pybind11 --includes) -c $$f -o $(PORTABLE_DIR)/$$(echo $$f | tr / _).o; \
	done
	@if aarch64-linux-gnu-nm -C --undefined-only $(PORTABLE_DIR)/*.o | grep -E 'awqkit::.*(avx2|avx512_vnni|amx|bench_probes)::'; then \
	  echo "check-portable: the scalar-only build still needs the x86 symbols above"; exit 1; fi
	@echo "check-portable: ok (csrc builds for aarch64 with the scalar kernels only)"

bench: install
	$(PYTHON) benchmarks/bench_quant.py

clean:
	rm -rf build python/awqkit/_core*.so python/awqkit/_bench_probes*.so

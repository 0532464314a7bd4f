# Quick start (fresh Debian 12, Python 3.11, as root):
#   make demo   # install everything, then run the main job on the embedded default
#   make test   # install everything, then run the whole test suite (notebooks included)
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DATA_DIR ?= $(abspath ../shared/data)
export AWQKIT_DATA_DIR ?= $(DATA_DIR)

.PHONY: demo test install deps-system dev bench clean

deps-system:
	@if ! [ -f /usr/include/eigen3/Eigen/Core ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q libeigen3-dev g++ cmake; \
	  else sudo apt-get update -q && sudo apt-get install -y -q libeigen3-dev g++ cmake; fi; \
	fi

install: deps-system
	$(PIP) install -q ".[torch,test,notebooks]"
	$(PIP) install -q --no-deps autoawq==0.2.9  # only its pure-torch unpacking code is used (interop test)

demo: install
	$(PYTHON) -m awqkit demo

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=900 tests notebooks

# In-tree build for development: the module lands in python/awqkit/, use PYTHONPATH=python.
dev: deps-system
	cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DAWQKIT_INPLACE=ON \
	  -Dpybind11_DIR=$$($(PYTHON) -m pybind11 --cmakedir) -DPython_EXECUTABLE=$$(command -v $(PYTHON)) >/dev/null
	cmake --build build/dev

bench: install
	$(PYTHON) benchmarks/bench_quant.py

clean:
	rm -rf build python/awqkit/_core*.so

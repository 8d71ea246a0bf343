# Everything a fresh machine needs: `make demo`, `make test`. Both create .venv when missing, install the
# pinned dependencies, build the extension with pip (no build isolation: it compiles against the torch it
# runs with) and rebuild only when the sources changed.
# `make cuda-build` does the same in a second environment, .venv-cuda, with a CUDA build of torch: it
# compiles the CUDA kernels too (nvcc needed, no GPU) and runs the test suite against that build.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=
CUDA_VENV ?= .venv-cuda
CUDA_TORCH_VERSION ?= 2.14.1
CUDA_ARCH_LIST ?= 9.0
CUDA_MAX_JOBS ?= 2
CUDA_PY := $(CUDA_VENV)/bin/python

SOURCES := setup.py pyproject.toml $(shell find csrc torch_manualbp -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py' | grep -v _build_config.py)

.PHONY: test demo install cuda-build clean

$(VENV)/.deps:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==$(TORCH_VERSION) ninja pybind11 pytest hypothesis numpy setuptools wheel
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps .
	touch $@

install: $(VENV)/.built

# pytest runs from tests/ so that the installed package is imported, not the source folder.
test: $(VENV)/.built
	cd tests && ../$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

demo: $(VENV)/.built
	cd examples && ../$(PY) -m torch_manualbp demo

$(CUDA_VENV)/.deps:
	test -x $(CUDA_PY) || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q torch==$(CUDA_TORCH_VERSION) ninja pybind11 pytest hypothesis numpy setuptools wheel
	$(CUDA_PY) -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is not a CUDA build'"
	touch $@

# FORCE_CUDA=1: fail, saying why, rather than quietly build without the CUDA kernels.
$(CUDA_VENV)/.built: $(CUDA_VENV)/.deps $(SOURCES)
	FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CUDA_ARCH_LIST)" MAX_JOBS=$(CUDA_MAX_JOBS) \
		$(CUDA_PY) -m pip install -q --no-build-isolation --no-deps .
	touch $@

cuda-build: $(CUDA_VENV)/.built
	cd tests && ../$(CUDA_PY) -c "from torch_manualbp import _C; assert _C.built_with_cuda(), 'built without CUDA kernels'"
	cd tests && ../$(CUDA_PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf build dist *.egg-info torch_manualbp/*.so torch_manualbp/_build_config.py

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

SOURCES := setup.py pyproject.toml cuda_build_choice.py $(shell find csrc torch_manualbp -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py' | grep -v _build_config.py)

.PHONY: test test-simd sanitize demo install cuda-build cuda-resources test-torch wheel-check clean

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

# `make test-simd`: the suites that run the CPU kernels, again at every other SIMD level that this build compiled
# and this CPU can execute (tools/test_simd_levels.py: ATEN_CPU_CAPABILITY=default / avx2 / avx512, each run
# named by its level; a level the CPU cannot execute is skipped with the reason printed). `make test` runs the
# native level. The kernels differ per level (the exponential of csrc/cpu/fast_exp.h, vector widths, partial
# vectors): without this an AVX-512 machine never runs the AVX2 code, nor any machine the scalar code.
# Left out there: the slow tests (past 2**31 elements), LinearCrossEntropy's gradcheck/gradgradcheck (its
# forward-mode and double backward are native composites; its kernels' float64 values and gradients are
# checked over the same option grid by test_matches_composite_over_option_grid) and the test that itself
# starts a process at the DEFAULT level.
SIMD_TEST_FILES ?= test_linear_sigmoid.py test_softmax_cross_entropy.py test_softmax_cross_entropy_options.py \
	test_linear_cross_entropy.py test_vocab_parallel.py \
	test_properties.py test_extreme.py test_blocking_edges.py test_class_index_checks.py
SIMD_PYTEST_ARGS ?= -q -m "not slow" -k "not test_gradcheck_and_gradgradcheck and not test_forced_default_simd_level"
test-simd: $(VENV)/.built
	cd tests && ../$(PY) ../tools/test_simd_levels.py $(SIMD_PYTEST_ARGS) $(SIMD_TEST_FILES)

# `make sanitize`: the extension built with -fsanitize=address,undefined (-O0, frame pointers; setup.py,
# TORCH_MANUALBP_SANITIZE=1) into build/sanitize, apart from the normal build, then the tests run against
# it with the sanitizer runtimes preloaded (python and torch are not instrumented). Every report aborts
# the run (halt_on_error, -fno-sanitize-recover): it passes with zero reports only; --capture=sys leaves
# the sanitizers' stderr uncaptured, so the report shows although the process dies. LeakSanitizer is off
# (CPython leaks by design at exit). It runs the suites that drive the C++ code with every kind of
# argument (each layer's values, gradients, options and errors, the modules, opcheck, double backward, the
# extremes, blocking edges, class-index checks, requested gradients, properties); the cross-cutting suites
# that add torch machinery around the same kernel calls (compile, export, transforms, autocast, threads,
# command line, distributed, install) run in `make test` only: under -O0 and ASan they would take most of
# CI's time for no C++ path of their own. Left out as impossible under ASan:
#   -m "not slow"      tensors past 2**31 elements: ASan's shadow memory and -O0 make them far too slow
#   test_leaks.py      resident memory grows under ASan without a leak (freed memory sits in quarantine)
# The property tests and the class-index checks run a second time on the portable (DEFAULT) kernels,
# ATEN_CPU_CAPABILITY=default.
SANITIZE_DIR := build/sanitize
SANITIZE_PYTEST_ARGS ?= -m "not slow" test_linear_sigmoid.py test_linear_sigmoid_module.py test_softmax_cross_entropy.py \
	test_softmax_cross_entropy_options.py test_linear_cross_entropy.py test_linear_cross_entropy_module.py \
	test_opcheck.py test_double_backward.py test_extreme.py test_blocking_edges.py test_class_index_checks.py \
	test_requested_gradients.py test_properties.py
SANITIZE_ENV = LD_PRELOAD="$$(c++ -print-file-name=libasan.so) $$(c++ -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	PYTHONPATH=$(CURDIR)/$(SANITIZE_DIR)/lib TORCH_MANUALBP_HYPOTHESIS_PROFILE=sanitize

sanitize: $(VENV)/.deps
	TORCH_MANUALBP_SANITIZE=1 $(PY) setup.py -q build --build-base $(SANITIZE_DIR) --build-lib $(SANITIZE_DIR)/lib
	cd tests && $(SANITIZE_ENV) ../$(PY) -c "from torch_manualbp._build_config import BUILD_CONFIG as c; assert c['sanitize'], c"
	cd tests && $(SANITIZE_ENV) ../$(PY) -m pytest -q --capture=sys $(SANITIZE_PYTEST_ARGS)
	cd tests && $(SANITIZE_ENV) ATEN_CPU_CAPABILITY=default ../$(PY) -m pytest -q --capture=sys test_properties.py test_class_index_checks.py

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
	cd tests && ../$(CUDA_PY) -m torch_manualbp check
	cd tests && ../$(CUDA_PY) -m pytest -q $(PYTEST_ARGS)

# `make cuda-resources`: the registers, stack and shared memory of every CUDA kernel, read with cuobjdump from
# the built module (release) and from the .cu files compiled to device code alone with the debug build's
# nvcc flags (TORCH_MANUALBP_DEBUG=1: -O0 -g -G; no host compilation, no link), checked against each
# kernel's __launch_bounds__. Fails when a kernel has none or its registers would not fit the block.
cuda-resources: $(CUDA_VENV)/.built
	$(CUDA_PY) tools/cuda_resources.py --jobs $(CUDA_MAX_JOBS)

# What CI runs against the two ends of the supported torch range (`make test` runs everything against the pinned
# release): each layer's values, gradients (gradcheck, gradgradcheck), options and errors, the modules, double
# backward, torch.compile and export, the build and install checks, the CUDA tests' CPU half and opcheck.
# Left to `make test`: the cross-cutting suites whose torch-facing surface these already cover (properties,
# threads, leaks, blocking edges, command line, distributed) and the large-memory tests.
RANGE_PYTEST_ARGS := -m "not slow" test_linear_sigmoid.py test_linear_sigmoid_module.py test_softmax_cross_entropy.py \
	test_softmax_cross_entropy_options.py test_linear_cross_entropy.py test_linear_cross_entropy_module.py \
	test_double_backward.py test_compile.py test_export.py test_transforms.py test_autocast.py test_opcheck.py \
	test_cuda.py test_build_config.py test_install.py test_vocab_parallel.py

# `make test-torch TORCH_VERSION=2.4.1 VENV=.venv-torch-2.4.1`: the same build and suite against another torch
# release, in its own environment (the oldest supported one in CI: README, Install). The registry's torch
# is a CUDA build of several GB; where its CUDA major differs from the nvcc on PATH, the build is CPU-only
# with setup.py's warning, as a user's would be. REMOVE_VENV=1 deletes the environment and build folder
# afterwards (disk). info and check first: what a user runs to see that an install works.
REMOVE_VENV ?=
test-torch: $(VENV)/.built
	cd tests && ../$(PY) -m torch_manualbp info
	cd tests && ../$(PY) -m torch_manualbp check
	cd tests && ../$(PY) -m pytest -q $(PYTEST_ARGS)
	if [ "$(REMOVE_VENV)" = 1 ]; then rm -rf $(VENV) build/torch-$(TORCH_VERSION)*; fi

# `make wheel-check`: the sdist holds what a build needs (.ci/check_sdist.py lists it against git); the wheel
# of `pip wheel --no-build-isolation .` pins the torch it was compiled against (Requires-Dist: torch==X.Y.Z)
# and, installed with that torch into a fresh environment, passes `python -m torch_manualbp check`.
WHEEL_DIR := dist
WHEEL_VENV ?= .venv-wheel
wheel-check: $(VENV)/.built
	rm -rf $(WHEEL_DIR) $(WHEEL_VENV)
	$(PIP) install -q build
	$(PY) -m build --sdist --no-isolation --outdir $(WHEEL_DIR) . > /dev/null
	$(PY) .ci/check_sdist.py $(WHEEL_DIR)/torch_manualbp-*.tar.gz
	$(PIP) wheel -q --no-build-isolation --no-deps --wheel-dir $(WHEEL_DIR) .
	$(PY) .ci/check_wheel_pin.py $(WHEEL_DIR)/torch_manualbp-*.whl
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install -q $(WHEEL_DIR)/torch_manualbp-*.whl
	cd $(WHEEL_DIR) && ../$(WHEEL_VENV)/bin/python -m torch_manualbp check
	rm -rf $(WHEEL_VENV)

clean:
	rm -rf build dist *.egg-info torch_manualbp/*.so torch_manualbp/_build_config.py

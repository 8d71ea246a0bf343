# Everything a fresh machine needs: `make demo`, `make test`. Both create .venv when missing, install the
# pinned dependencies, build the extension with pip (no build isolation: it compiles against the torch it
# runs with) and rebuild only when the sources changed.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

SOURCES := setup.py pyproject.toml $(shell find csrc torch_manualbp -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py' | grep -v _build_config.py)

.PHONY: test demo install clean

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

clean:
	rm -rf build dist *.egg-info torch_manualbp/*.so torch_manualbp/_build_config.py

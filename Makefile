# Two commands: `make demo` (set up, then run the bundled detector on the sample video) and
# `make test` (set up, then lint, type-check and run the test suite). Both bootstrap .venv from python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

COMPAT := .venv-numpy1
COMPAT_STAMP := $(COMPAT)/.installed

.PHONY: demo test lint setup clean test-numpy1 protos tools gpu-test image-smoke conformance gpu-report

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# regenerate trtserve/v1/*_pb2*.py from protos/ (a test checks the committed files match)
protos: $(STAMP)
	$(BIN)/python -m trtserve.protogen

demo: $(STAMP)
	$(BIN)/trtserve demo --out build/demo

lint: $(STAMP)
	$(BIN)/ruff check trtserve calibrators tests
	$(BIN)/mypy trtserve calibrators

# JetPack's TensorRT bindings are built against numpy 1.x: the library must keep working there too.
$(COMPAT_STAMP): pyproject.toml
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT)/bin/python -m pip install --quiet 'numpy<2' 'opencv-python-headless<4.12' -e '.[dev]'
	touch $(COMPAT_STAMP)

test-numpy1: $(COMPAT_STAMP)
	$(COMPAT)/bin/python -c 'import numpy, sys; sys.exit(numpy.__version__ >= "2")'
	$(COMPAT)/bin/python -m pytest -q -p no:cacheprovider tests/unit

# perf_analyzer (PyPI perf-analyzer, run through Debian 13's loader where glibc is older than 2.38) under
# build/perf-analyzer, once: tests/tools/install_perf_analyzer.sh.
# Debian packages the tests use: prometheus (promtool, and a server for the metrics integration test),
# shellcheck (docker/entrypoint.sh), gcc and binutils (tests/conformance compiles a stand-in of TensorRT's libraries
# and reads NVIDIA's bindings with nm / readelf). Installed once, when missing. Kustomize is not installed: Debian's only one
# (inside kubernetes-client 1.20) is v2.0.3, too old; tests/deploy uses `kubectl kustomize` where the machine has
# kustomize v4+ and otherwise its own renderer, which is checked against the real one wherever that exists.
tools: $(STAMP)
	@bash tests/tools/install_perf_analyzer.sh build/perf-analyzer || \
	  echo "perf_analyzer could not be installed (see above): tests/integration/serving/test_perf_analyzer.py fails"
	@missing=""; \
	command -v promtool >/dev/null && command -v prometheus >/dev/null || missing="prometheus"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	command -v nm >/dev/null && command -v readelf >/dev/null || missing="$$missing binutils"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	fi

# NVIDIA's real TensorRT bindings (8.6.1, 10.3, 10.13, 11.4 from PyPI, cached in build/conformance; needs gcc and
# binutils) imported against a stand-in of TensorRT's libraries: trtserve's calls and the contract doubles checked
# against each release's API. Downloads once, then offline and well under a minute.
conformance: export TRTSERVE_REQUIRE_TOOLS := 1
conformance: $(STAMP) tools
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/conformance

test: export TRTSERVE_REQUIRE_TOOLS := 1
test: lint tools test-numpy1 conformance
	$(BIN)/python -m pytest -q tests --ignore=tests/conformance

# The real-GPU tier (TensorRT engines, CUDA provider): on a Jetson or in the NGC TensorRT container, skipped
# elsewhere with the reason. Its venv sees the system site-packages: TensorRT's bindings come from JetPack / NGC.
GPU_VENV := .venv-gpu
$(GPU_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet -e '.[dev,gpu]'
	touch $(GPU_VENV)/.installed

gpu-test: $(GPU_VENV)/.installed
	$(GPU_VENV)/bin/python -m pytest -q -rs -s tests/gpu

# On a GPU host: the GPU tier, then one table of TensorRT version / precision / DLA with trtserve's and trtexec's
# frames/s for the same ONNX (add ARGS=--dla on a Jetson with DLA cores)
gpu-report: $(GPU_VENV)/.installed
	$(GPU_VENV)/bin/python -m tests.gpu.run_gpu_tier --json build/gpu-report.json $(ARGS)

# opt-in, root on Debian, minutes: build the CPU image with buildah (no daemon) and check it serves (not in `test`)
image-smoke:
	docker/buildah-smoke.sh

clean:
	rm -rf $(VENV) $(COMPAT) $(GPU_VENV) build

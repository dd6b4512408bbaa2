# Two commands: `make demo` (set up, then run the bundled detector on the sample video) and
# `make test` (set up, then lint, type-check and run the test suite). Both bootstrap .venv from python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

COMPAT := .venv-numpy1
COMPAT_STAMP := $(COMPAT)/.installed

.PHONY: demo test lint setup clean test-numpy1 protos deploy-tools image-smoke

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

# tests/deploy: shellcheck (Debian package) checks docker/entrypoint.sh. Kustomize is not installed here: Debian's
# only one (inside kubernetes-client 1.20) is v2.0.3, too old; tests/deploy uses `kubectl kustomize` where the machine
# has kustomize v4+ and otherwise its own renderer, which is checked against the real one wherever that exists.
deploy-tools:
	@command -v shellcheck >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      shellcheck) >/dev/null 2>&1 || echo "deploy-tools: could not install shellcheck; its test is skipped"; \
	  else echo "deploy-tools: no shellcheck and no root apt-get; its test is skipped"; fi; }

test: lint test-numpy1 deploy-tools
	$(BIN)/python -m pytest -q tests

# opt-in, root on Debian, minutes: build the CPU image with buildah (no daemon) and check it serves (not in `test`)
image-smoke:
	docker/buildah-smoke.sh

clean:
	rm -rf $(VENV) $(COMPAT) build

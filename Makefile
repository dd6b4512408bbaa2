# Two commands: `make demo` (set up, then run the bundled detector on the sample video) and
# `make test` (set up, then lint, type-check and run the test suite). Both bootstrap .venv from python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/trtserve demo --out build/demo

lint: $(STAMP)
	$(BIN)/ruff check trtserve calibrators tests
	$(BIN)/mypy trtserve calibrators

test: lint
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build

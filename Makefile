# opsagent: `make run` starts the daemon locally, `make test` runs the whole suite
# (installing and starting every real service it needs when missing).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= deploy/local.yaml

.PHONY: run test lint services bench soak clean screenshots

$(BIN)/python:
	PYTHON=$(PYTHON) scripts/run-prereqs.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	mkdir -p var
	$(BIN)/opsagent run --config $(CONFIG)

services:
	scripts/ensure-services.sh

lint: $(VENV)/.dev
	$(BIN)/ruff check opsagent opsagent_testing tests benchmarks
	$(BIN)/mypy

test: $(VENV)/.dev services lint
	$(BIN)/pytest -q

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@ $(VENV)/.dev $(VENV)/.runtime

bench: $(VENV)/.dev $(VENV)/.bench services
	$(BIN)/python -m benchmarks $(ARGS)

soak: $(VENV)/.dev services
	OPSAGENT_SOAK=1 $(BIN)/pytest -q tests/faults -k soak

screenshots: $(VENV)/.dev services
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) var .pytest_cache

# The two commands: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PACKAGES := alliance fhir_mappings server referral imaging teleconsult portal

.PHONY: run test fuzz install install-dev lint typecheck bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/activate
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make run: install, migrate the embedded database under ./var/, seed the demo alliance, serve.
## HOST and PORT choose where it listens; ALLIANCE_BASE_URL follows them unless it is given.
HOST ?= 127.0.0.1
PORT ?= 8000
run: export ALLIANCE_DEMO ?= true
run: export ALLIANCE_BASE_URL ?= http://$(HOST):$(PORT)
run: install
	mkdir -p var
	$(BIN)/alliance db upgrade
	$(BIN)/alliance seed-demo
	$(BIN)/alliance serve --host $(HOST) --port $(PORT)

## make test: install the dev tools, lint, type-check, and run every test this machine can run.
test: install-dev lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

## make fuzz: the generated tests alone (Schemathesis over /openapi.json, Hypothesis over every
## FHIR type and search parameter) with many more examples, drawn at random each run
## (HYPOTHESIS_PROFILE=fuzz; ALLIANCE_FUZZ_EXAMPLES=N sets how many, default 100).
fuzz: install-dev
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_api_fuzz.py tests/test_fhir_fuzz.py $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check $(PACKAGES) migrations tests bench
	$(BIN)/ruff format --check $(PACKAGES) migrations tests bench
	$(BIN)/lint-imports --no-cache   # .importlinter: what may import what (ARCHITECTURE.md)

typecheck: install-dev
	$(BIN)/mypy

bench: install-dev
	$(PY) bench/fhir_read.py
	$(PY) bench/fhir_load.py
	$(PY) bench/dicomweb_ingest.py
	$(PY) bench/imaging_orthanc.py
	$(PY) bench/teleconsult_find.py
	$(PY) bench/notify_latency.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# The two commands of the README: `make run` and `make test`. Everything they need is installed
# into .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= .headwater
CONFIG ?= examples/headwater.yaml

.PHONY: run test lint types unit bench bench-pipeline bench-dedupe bench-processing bench-identity bench-delivery bench-setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run

## run: start Headwater on embedded storage with the demo source (Ctrl-C stops it)
run: $(VENV)/.run
	$(BIN)/headwater up --config $(CONFIG) --data $(DATA)

## test: lint, type-check and run the whole suite (starts the servers tests need)
test: $(VENV)/.dev
	scripts/ensure-services.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

types: $(VENV)/.dev
	$(BIN)/mypy

## unit: the fast tests only
unit: $(VENV)/.dev
	$(BIN)/pytest tests/unit

## bench: the gateway benchmark against nginx and a FastAPI baseline (installs nginx, wrk)
bench: $(VENV)/.dev
	scripts/bench-setup.sh
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/gateway.py

## bench-pipeline: gateway -> JetStream and processor throughput against the embedded log (wrk, NATS)
bench-pipeline: $(VENV)/.dev
	scripts/bench-setup.sh
	scripts/ensure-services.sh
	$(BIN)/python bench/pipeline.py

## bench-processing: one processor with dedupe and a 20-rule tracking plan vs pass-through (Redis)
bench-processing: $(VENV)/.dev
	scripts/ensure-services.sh redis
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/processing.py

## bench-dedupe: dedupe memory per remembered messageId (10 million ids) and claims/s (Redis)
bench-dedupe: $(VENV)/.dev
	scripts/ensure-services.sh
	$(BIN)/python bench/dedupe.py

## bench-identity: identity resolution and profiles with 1M profiles vs pass-through; /traits p99
bench-identity: $(VENV)/.dev
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/identity.py

## bench-delivery: webhook throughput of one router, isolation from a failing destination, e2e p99
bench-delivery: $(VENV)/.dev
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/delivery.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

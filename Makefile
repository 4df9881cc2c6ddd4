# The two commands of the README: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test lint typecheck imports unit proto perf image clean

setup:
	@scripts/setup.sh

# A running lab is kept and converged to the sample; FRESH=1 starts over.
demo: setup
	@$(BIN)/python -m meshctl.demo $(if $(FRESH),--fresh)

test: setup lint typecheck imports unit

lint:
	@echo "== ruff"
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

typecheck:
	@echo "== mypy --strict"
	@$(BIN)/mypy

imports:
	@echo "== import-linter"
	@$(BIN)/lint-imports --no-cache

unit:
	@echo "== pytest"
	@$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Regenerates mesh/api/**/*_pb2*.py from the .proto sources (the generated code is committed).
proto: setup
	@PY=$(BIN)/python scripts/gen-proto.sh

perf: setup
	@$(BIN)/python -m perf.run_all

# One image for every component (Dockerfile), with docker or podman if the machine has one.
IMAGE ?= ambient-mesh:0.1.0
image:
	@builder=$$(command -v docker || command -v podman); \
	if [ -z "$$builder" ]; then \
	  echo "make image: no container builder (docker or podman) on this machine; install one, or build the Dockerfile elsewhere" >&2; exit 1; \
	fi; \
	echo "== $$builder build -t $(IMAGE) ."; $$builder build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache build *.egg-info

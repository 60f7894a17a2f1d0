# miniGPT: `make demo` runs the whole pipeline on the shipped smoke sample; `make test` runs the suite.
# Both create .venv on first use. TORCH picks the torch build: torch==2.13.0 is a CPU wheel on a
# CPU-only machine of ours, and PyPI's default (CUDA) build on a Linux GPU machine; for another CUDA
# version: make install TORCH="torch --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := out/demo

.PHONY: install test lint format demo bench clean

$(STAMP): pyproject.toml requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/bench_train.py

clean:
	rm -rf $(DEMO) out/cache

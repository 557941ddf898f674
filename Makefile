# Two entry points, both safe on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hf_fedzo-installed

.PHONY: setup test lint demo

# torch is installed first and pinned so no dependency can pull a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,plots,assets]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q
	$(BIN)/ruff check hf_fedzo tests recipes benchmarks

lint: setup
	$(BIN)/ruff check hf_fedzo tests recipes benchmarks

# The offline demo (real SmolLM2 on VADER movie sentences) is not built yet: say so instead of failing oddly.
demo:
	@echo "make demo: not available yet - the offline demo arrives with the task-alignment issue (recipes)." >&2
	@exit 2

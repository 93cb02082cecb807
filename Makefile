# cbuap-runner: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install data run test test-full lint bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,joblib,slurm,timm,imagenet,study]'
	touch $@

install: $(STAMP) ## create .venv (if missing) and install the package with its test tools

data: ## obtain the default data (Fashion-MNIST): Debian's dataset-fashion-mnist where apt exists and no copy is found
	@if [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || [ -d data/fashion_mnist ]; then \
	  echo "Fashion-MNIST found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || echo "apt could not install dataset-fashion-mnist; the first run will try torchvision's download"; \
	else \
	  echo "no local Fashion-MNIST: the first run downloads it with torchvision"; \
	fi

run: install data ## run the main job (CB-UAP against a small CNN on Fashion-MNIST); pass overrides with ARGS="..."
	$(BIN)/python -m cbuap_runner $(ARGS)

test: install data ## the fast test suite (what CI runs)
	$(BIN)/python -m pytest -m "not slow" -q -n auto --durations=10 $(PYTEST_ARGS)

test-full: install data ## every test, the slow ones included
	$(BIN)/python -m pytest -q -n auto $(PYTEST_ARGS)

lint: install ## ruff over the sources, tests and scripts
	$(BIN)/ruff check src tests scripts

bench: install data ## the performance suite (prints a table, writes outputs/bench.json)
	$(BIN)/python scripts/bench.py $(ARGS)

clean: ## remove caches and build leftovers (keeps outputs/ and .venv)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

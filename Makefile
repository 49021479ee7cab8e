# Two commands: `make run` (the main job) and `make test` (lint, types, tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PACKAGES := cli configs state routers nodes graphs testing
PROMPT ?=
export PROMPT

.PHONY: setup run demo test lint typecheck pytest bench clean

# Create the virtualenv and install modelyard with its dev tools (editable).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch's CPU build first: any other torch pulls several GB of CUDA packages.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,semantic]'
	touch $@

setup: $(VENV)/.installed

# With PROMPT="...": route it to your configured models (Ollama by default).
# Without: the offline demo against the local protocol server.
run: setup
ifeq ($(strip $(PROMPT)),)
	$(BIN)/modelyard demo
else
	$(BIN)/modelyard run "$$PROMPT"
endif

demo: setup
	$(BIN)/modelyard demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy sees the package as installed (modelyard.configs -> configs/ ...) through symlinks.
typecheck: setup
	@mkdir -p .mypy-src/modelyard
	@for p in $(PACKAGES); do ln -sfn ../../$$p .mypy-src/modelyard/$$p; done
	MYPYPATH=.mypy-src $(BIN)/mypy --namespace-packages --explicit-package-bases -p modelyard

pytest: setup
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: setup
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/adaptation.py
	$(BIN)/python bench/chaos.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/turns.py
	$(BIN)/python bench/classify.py
	$(BIN)/python bench/distributed.py

clean:
	rm -rf $(VENV) .mypy-src .pytest_cache .mypy_cache .ruff_cache *.egg-info

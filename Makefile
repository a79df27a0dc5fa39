# The README's commands. `make run` creates .venv (first time: ~2-3 min, mostly torch) and runs the main job;
# `make test` runs the test suite (two pytest-xdist workers, each module's tests on one); `make lint` checks style
# and formatting (ruff). They export the project's tracking URI, because `mlflow run` otherwise creates its run in
# its own default store.
VENV ?= .venv
PYTHON ?= python3
SUBSET ?= full
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns/mlflow.db
export MLFLOW_EXPERIMENT_NAME ?= imagenet-transfer
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

run: setup
	mlflow run . -e pretrain --env-manager local --experiment-name imagenet-transfer -P subset=$(SUBSET)

test: setup
	python -m pytest -q -n 2 --dist loadscope

lint: setup
	ruff check .
	ruff format --check .

bench: setup
	python bench/subsets.py
	python bench/synth.py
	python bench/throughput.py
	python bench/input_pipeline.py --device cpu

# multitag: every target builds .venv from requirements.lock first when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# GPU=1 (`make install GPU=1`, then any target): TensorFlow's CUDA build from requirements-gpu.lock
# in place of tensorflow-cpu; training then uses mixed precision and XLA (modeling/train.py).
GPU ?= 0
STAMP := $(VENV)/.installed-from-lock$(if $(filter 1,$(GPU)),-gpu,)
export KERAS_HOME ?= $(CURDIR)/.keras
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
SHARED_WEIGHTS := $(wildcard ../shared/weights/*.h5)

.PHONY: install weights demo test lock prefect-up prefect-down serve bench clean

install: $(STAMP)

# Offline ImageNet weights (../shared/weights) where Keras looks before downloading.
weights:
	@mkdir -p $(KERAS_HOME)/models
	@for f in $(SHARED_WEIGHTS); do ln -sf "$$(realpath $$f)" $(KERAS_HOME)/models/; done

# The stamp is older than the lock when the lock changed: reinstall exactly the pinned set.
# --compile-bytecode writes every package's .pyc once: uv leaves them out by default, and where
# Python may not write them (PYTHONDONTWRITEBYTECODE, a read-only venv) every process, each
# training subprocess and smoke test included, compiled TensorFlow, Keras and MLflow anew
# (21 s to import them, 6.6 s compiled).
$(STAMP): requirements.lock requirements-gpu.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==0.13.8
	$(BIN)/uv pip sync --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
ifeq ($(GPU),1)
	$(BIN)/uv pip uninstall --python $(BIN)/python tensorflow-cpu
	$(BIN)/uv pip install --compile-bytecode --python $(BIN)/python -r requirements-gpu.lock
endif
	rm -f $(VENV)/.installed-from-lock*
	touch $(STAMP)

lock:
	uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock
	uv pip compile scripts/gpu.in -c requirements.lock --python-version 3.11 --python-platform x86_64-unknown-linux-gnu -o requirements-gpu.lock

demo: install weights
	$(BIN)/multitag pipeline --source synthetic

test: install weights
	bash scripts/install_test_deps.sh
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -ra -n auto --maxprocesses 3 --dist loadfile --no-loadscope-reorder --durations 25 $(PYTEST_ARGS)

serve: install
	$(BIN)/multitag serve

prefect-up: install
	bash scripts/prefect_up.sh

prefect-down:
	bash scripts/prefect_down.sh

bench: install weights
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/serve.py --runtime
	$(BIN)/python bench/feedback_screen.py

clean:
	rm -rf $(VENV) .pytest_cache

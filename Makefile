# Two commands set everything up: `make repro` (the ablation study) and `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1

HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: setup lock repro full smoke verify-repro test test-fast bench bench-compare bench-ratios lint ui mlflow-server clean

# The install runs only when requirements.txt, requirements.lock or pyproject.toml changed since the
# last one. requirements.lock pins every distribution pip resolved (a constraints file).
setup:
	@want=$$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1); \
	if [ -x $(VENV)/bin/python ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$want" ]; then \
	  echo "setup: .venv is up to date"; \
	else \
	  set -e; \
	  [ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV); \
	  $(VENV)/bin/python -m pip install -q -r requirements.txt -c requirements.lock 2> >(grep -v "is ignored: it is neither" >&2); \
	  $(VENV)/bin/python -m pip install -q --no-deps -e . 2> >(grep -v "is ignored: it is neither" >&2); \
	  echo "$$want" > $(STAMP); \
	  echo "setup: installed into .venv"; \
	fi

# Resolve requirements.txt afresh in a throw-away venv and pin what pip chose.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
	{ echo "# Every distribution pip resolved from requirements.txt, at its exact version (make lock)."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > requirements.lock
	rm -rf $(LOCK_VENV)

repro: setup
	dvc repro

# The powered study of every variant (full.yaml) as a DVC experiment named "full": hours, not minutes.
full: setup
	python -m pipeline.profile full.yaml

# The whole graph at a tiny size (smoke.yaml), in a temporary copy of the workspace.
smoke: setup
	python -m pipeline.smoke

# The smoke grid again in a temporary copy, compared byte for byte with reference/smoke-<this CPU class>.json.
verify-repro: setup
	python -m pipeline.verify_repro

# Two workers (pytest-xdist): the end-to-end tests spend most of their time starting processes whose
# imports are single-threaded, so two of them share the two cores. A file's tests stay on one worker
# (--dist loadfile), as its module fixtures expect, and files go out in collection order
# (--no-loadscope-reorder), which tests/conftest.py starts with the end-to-end files, so that the
# longest do not start last. WORKERS=0 runs in one process.
WORKERS ?= 2
XDIST = -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test: setup
	python -m pytest --benchmark-disable $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	python -m pytest --benchmark-disable -m "not slow" $(XDIST) $(PYTEST_ARGS)

# Timings saved under .benchmarks/ with the machine's description; bench-compare fails when a median
# is 25% slower than the last saved run; bench-ratios sets the ratios against the goals of
# tests/benchmarks/README.md. By hand, not in CI: timing there is noise.
bench: setup
	python -m pytest --benchmark-only --benchmark-autosave tests/benchmarks $(PYTEST_ARGS)

bench-compare: setup
	python -m pytest --benchmark-only --benchmark-compare --benchmark-compare-fail=median:25% tests/benchmarks $(PYTEST_ARGS)

bench-ratios: setup
	python -m tests.benchmarks.ratios $(ROWS)

lint: setup
	ruff check dsts pipeline tests
	ruff format --check dsts pipeline tests

# A moved or copied workspace: point the store's artifact locations back at ./mlartifacts first.
ui: setup
	python -m pipeline.relocate_mlflow --uri sqlite:///$(CURDIR)/mlflow.db
	mlflow ui --host $(HOST) --port $(PORT) --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

# A shared tracking server for several trainers (torchrun ranks, DVC queue workers, machines).
# MLFLOW_BACKEND: any SQLAlchemy URI (postgresql://user:pass@host/db); MLFLOW_ARTIFACTS: a folder or an
# object-store URI (s3://bucket/path). Point trainers at it with MLFLOW_TRACKING_URI=http://HOST:PORT.
MLFLOW_BACKEND ?= sqlite:///$(CURDIR)/mlflow.db
MLFLOW_ARTIFACTS ?= $(CURDIR)/mlartifacts
MLFLOW_WORKERS ?= 1
mlflow-server: setup
	python -m pipeline.relocate_mlflow --uri "$(MLFLOW_BACKEND)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
	mlflow server --host $(HOST) --port $(PORT) --workers $(MLFLOW_WORKERS) \
	  --backend-store-uri "$(MLFLOW_BACKEND)" --artifacts-destination "$(MLFLOW_ARTIFACTS)"

clean:
	rm -rf runs reports data/generated .pytest_cache .benchmarks

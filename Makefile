# goae — the two commands of the README are `make repro` (main job) and `make test` (tests).
# `make setup` is idempotent: it (re)builds .venv only when the requirement files change.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.goae-installed
export HF_HUB_OFFLINE ?= 1
export DVC_NO_ANALYTICS ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export OMP_WAIT_POLICY ?= PASSIVE
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup test test-fast repro smoke ci golden bench clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# All tests (tiny configs, CPU). Fixture tests read ../shared/fixtures (skip without it, fail under CI).
test: setup
	TORCH_HOME=$$(mktemp -d) $(PY) -m pytest -q -n 2 --dist loadfile --timeout=900

test-fast: setup
	TORCH_HOME=$$(mktemp -d) $(PY) -m pytest -q -m "not slow" --timeout=300

# Main job: the DVC pipeline on the committed params.yaml (embedded tiny world by default).
repro: setup
	dvc repro

# CI smoke: the whole pipeline in a temporary clone with the committed params.
smoke: setup
	$(PY) tools/smoke_pipeline.py

golden: setup
	$(PY) -m goae.eg3d.golden ../shared/fixtures/eg3d
	$(PY) -m goae.eg3d.golden ../shared/fixtures/eg3d_8xdc
	$(PY) -m goae.golden ../shared/fixtures/goae

bench: setup
	$(PY) benchmarks/eg3d_forward.py

clean-venv:
	rm -rf $(VENV)

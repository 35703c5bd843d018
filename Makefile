# Everything runs from the project's own virtual environment, .venv, which uv fills
# from the committed lock (uv.lock): what passed yesterday installs again today. uv
# itself lives in .tools (a pinned release from PyPI), so only python3.11 is needed.
# `make lock` refreshes the lock on purpose; `make lint` fails when it and the
# pyproject files disagree.

PYTHON ?= python3.11
UV_VERSION := 0.13.8
VENV   := .venv
BIN    := $(VENV)/bin
UV     := .tools/bin/uv
# uv finds python3.11 on the PATH and never downloads an interpreter of its own
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
SYNC   := $(UV) sync --frozen --quiet

.DEFAULT_GOAL := help
.PHONY: help install demo demo-env quickstart test lint lock clean bench bench-batch bench-peers test-music test-modelport

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(UV):
	@echo "make: installing uv $(UV_VERSION) into .tools"
	@$(PYTHON) -m venv .tools
	@.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

install: $(UV)  ## .venv with modelport, the music example and the dev tools, from uv.lock
	@echo "make: installing modelport, examples/music and the dev tools from uv.lock"
	@$(SYNC) --all-packages

demo-env: $(UV)
	@echo "make: installing the music demo from uv.lock (no dev tools)"
	@# --inexact: a .venv that `make install` filled keeps its dev tools
	@$(SYNC) --inexact --no-default-groups --package modelport-music

demo: demo-env  ## The music recommender on http://127.0.0.1:8000 (music up)
	$(BIN)/music up

quickstart: $(UV)  ## Train, register, promote and load one model (modelport quickstart)
	@echo "make: installing modelport with scikit-learn from uv.lock"
	@$(SYNC) --inexact --no-default-groups --extra sklearn
	$(BIN)/modelport quickstart

lint: install  ## The lock matches pyproject.toml, ruff, mypy (strict), the layers
	$(UV) lock --check --quiet
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports

lock: $(UV)  ## Refresh uv.lock to the newest releases the pyproject files allow
	$(UV) lock --upgrade

# Lint and both suites run, each even when an earlier one failed; the target fails if any did.
test: install  ## Lint, then every test: modelport's, then the music example's
	@status=0; \
	$(MAKE) --no-print-directory lint || status=1; \
	$(MAKE) --no-print-directory test-modelport || status=1; \
	$(MAKE) --no-print-directory test-music || status=1; \
	exit $$status

test-modelport: install  ## modelport's tests
	$(BIN)/pytest

test-music: install  ## The music example (examples/music): ruff, mypy, its tests
	cd examples/music && ../../$(BIN)/ruff check src tests && ../../$(BIN)/mypy && ../../$(BIN)/pytest

clean:  ## Remove the virtual environments and caches (not ./.modelport)
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache

bench: install  ## Serving benchmark (needs wrk): modelport vs FastAPI vs raw predict
	$(BIN)/python bench/serving.py

bench-batch: install  ## Batch benchmark (needs PostgreSQL): modelport batch vs a plain read
	$(BIN)/python bench/batch.py

# The peers' harness (../shared/peerbench) builds a venv per peer from PyPI (on the first
# run; reused while its requirements stay the same), modelport's from this working tree,
# and writes .peerbench/results.md. Its knobs pass through: PEERS, CONCS, DUR, WARMUP, ...
# It runs from a copy in .peerbench/harness, with modelport's own service file in place of
# the harness's (bench/peers/modelport.yaml: modelport's documented defaults).
PEERBENCH ?= ../shared/peerbench
PEERS     ?= fastapi bentoml_batch mlserver_batch litserve modelport modelport_v2
bench-peers:  ## modelport beside FastAPI, BentoML, MLServer, LitServe (about 25 minutes)
	@test -x $(PEERBENCH)/run_all.sh || { echo "make: no peer harness at $(PEERBENCH) (PEERBENCH=...)"; exit 2; }
	rm -rf .peerbench/harness && mkdir -p .peerbench && cp -r $(PEERBENCH) .peerbench/harness
	chmod -R u+w .peerbench/harness && cp bench/peers/modelport.yaml .peerbench/harness/servers/
	PEERS="$(PEERS)" MODELPORT_SRC="$(CURDIR)" PEERBENCH_DIR="$(CURDIR)/.peerbench" \
		.peerbench/harness/run_all.sh
	@echo "make: the table is in .peerbench/results.md"

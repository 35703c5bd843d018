# Everything runs from the project's own virtual environment, which this Makefile
# creates (python3.11 -m venv) and fills (pip install -e '.[dev]'). The stamp file
# makes later runs skip the install until pyproject.toml changes.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo quickstart test lint clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install modelport with its dev tools

# the reference system (examples/music) installs into the same environment
MUSIC_STAMP := $(VENV)/.music-installed

$(MUSIC_STAMP): examples/music/pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -e 'examples/music[web-test]'
	touch $(MUSIC_STAMP)

demo: $(MUSIC_STAMP)  ## The music recommender on http://127.0.0.1:8000 (music up)
	$(BIN)/music up

quickstart: $(STAMP)  ## Train, register, promote and load one model (modelport quickstart)
	$(BIN)/modelport quickstart

lint: $(STAMP)  ## ruff and mypy (strict)
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: lint $(MUSIC_STAMP)  ## Lint, then every test: modelport's, then the music example's
	$(BIN)/pytest
	$(MAKE) --no-print-directory test-music

clean:  ## Remove the virtual environment and caches (not ./.modelport)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench
bench: $(STAMP)  ## Serving benchmark (needs wrk): modelport vs FastAPI vs raw predict
	$(BIN)/python bench/serving.py

.PHONY: bench-batch
bench-batch: $(STAMP)  ## Batch benchmark (needs PostgreSQL): modelport batch vs a plain read
	$(BIN)/python bench/batch.py


.PHONY: test-music
test-music: $(MUSIC_STAMP)  ## The music example (examples/music): ruff, mypy, its tests
	cd examples/music && ../../$(BIN)/ruff check src tests && ../../$(BIN)/mypy && ../../$(BIN)/pytest

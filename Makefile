# One command to set up and run the main job, one to set up and run the tests.
# Python 3.11 first (torch's pinned wheels are in this workplace's local store for it), else 3.12.
PYTHON ?= $(firstword $(shell command -v python3.11 python3.12 2>/dev/null) python3)
VENV := .venv
BIN := $(VENV)/bin
MODELS ?= hub
BATCH ?= sample

.PHONY: setup browser run run-tiny test ui docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-cache-dir --upgrade pip

# torch and torchvision are pinned in pyproject.toml (they install from the local wheel store).
# No pip cache: the venv is already about 6.5 GB (torch's CUDA build), a second copy of every
# downloaded wheel is disk a small machine may not have.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-cache-dir -e ".[dev]"
	touch $@

# The browser tests drive Debian's chromium (Playwright's own browser download cannot work offline).
# Installed when missing and we are root (CI, these machines); elsewhere the tests say how.
CHROMIUM := $(firstword $(shell command -v chromium chromium-browser 2>/dev/null))
browser:
	@if [ -z "$(CHROMIUM)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

setup: $(VENV)/.installed

run: setup
	$(BIN)/pixelsift run --batch $(BATCH) --models $(MODELS)

run-tiny:
	$(MAKE) run MODELS=tiny

ui: setup
	$(BIN)/pixelsift ui --models $(MODELS)

test: setup browser
	$(BIN)/python -m pytest -q

docs: setup
	$(BIN)/python -m dagster_project.config_reference > docs/configuration.md
	$(BIN)/python -m evals.column_reference

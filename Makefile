# Front door: `make run` serves on port 7860, `make test` runs the whole suite. Both install into .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint lint-tools typecheck pytest bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime static/vendor/htmx.min.js  ## install and start the service on port 7860 with the embedded voice
	$(BIN)/python -m service --port $${PORT:-7860}

lint-tools: $(VENV)/.test  ## shellcheck and hadolint for the deployment files (idempotent)
	bash scripts/install_lint_tools.sh $(VENV)

lint: lint-tools  ## ruff; shellcheck and hadolint on the deployment files
	$(BIN)/ruff check service tests bench scripts
	$(BIN)/ruff format --check service tests bench scripts
	PATH="$(CURDIR)/$(BIN):$$PATH" shellcheck start_unified_container.sh scripts/*.sh
	PATH="$(CURDIR)/$(BIN):$$PATH" hadolint Dockerfile

# the web UI's front-end assets (htmx, from the npm registry; git-ignored) and the browser its tests drive
static/vendor/htmx.min.js: scripts/install_frontend_assets.sh
	bash scripts/install_frontend_assets.sh

/usr/bin/chromium:
	bash scripts/install_browser.sh

typecheck: $(VENV)/.test  ## mypy --strict
	$(BIN)/mypy

pytest: $(VENV)/.test lint-tools static/vendor/htmx.min.js /usr/bin/chromium  ## the test suite alone
	$(BIN)/pytest

test: lint typecheck pytest  ## install test dependencies, then lint, type-check and run every test

bench: $(VENV)/.test  ## lifecycle benchmarks (writes figures to stdout)
	$(BIN)/python bench/lifecycle.py

clean:  ## remove the virtual environment
	rm -rf $(VENV)

# Front door: `make run` serves on port 7860, `make test` runs the whole suite. Both install into .venv first,
# exactly what uv.lock holds for them (docs/operations.md, "Installs").
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# uv itself, pinned with hashes in scripts/uv-requirements.txt, in a virtualenv of its own
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# the container's Python environment (CUDA torch and all), built from the same lock, for the tests of the real
# Step-Audio-EditX code
CONTAINER_VENV := .venv-container
# the Step-Audio-EditX checkouts those tests import: every folder under STEP_AUDIO_CHECKOUTS that holds tts.py
STEP_AUDIO_CHECKOUTS ?= $(wildcard $(CURDIR)/../shared/step-audio-editx)
# OpenAI's published schemas the tests validate responses against (tests/support/openai_reference.py)
OPENAI_REFERENCE ?= $(wildcard $(CURDIR)/../shared/reference/openai-speech-openapi.json)

# uv uses this interpreter and never downloads one; the lock must agree with pyproject.toml (--locked)
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
# Python writes its bytecode caches (git-ignored __pycache__, in .venv and here) even where the environment says not
# to (PYTHONDONTWRITEBYTECODE=1 on this project's machines): without them every server, worker and test process
# compiles Litestar, numpy and the rest from source again, a second of CPU per process start (docs/benchmarks.md)
export PYTHONDONTWRITEBYTECODE :=
SYNC := $(UV) sync --locked --quiet

.PHONY: run test lint typecheck pytest prerequisites container-env bench lock sync-test clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(UV): scripts/uv-requirements.txt
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --no-deps --require-hashes -r scripts/uv-requirements.txt

run: $(UV) static/vendor/htmx.min.js  ## install the service's locked set and start it on port 7860 with the embedded voice
	$(SYNC)
	$(BIN)/python -m service --port $${PORT:-7860}

sync-test: $(UV)  ## install the test set from the lock (fails if uv.lock and pyproject.toml disagree)
	$(SYNC) --group test

container-env: $(UV)  ## build .venv-container, the container's locked environment (CUDA builds; several GB)
	UV=$(UV) UV_PROJECT_ENVIRONMENT=$(CONTAINER_VENV) bash scripts/container_env.sh --quiet

lock: $(UV)  ## bring uv.lock in line with pyproject.toml; UPGRADE=1 takes the newest releases it allows
	$(UV) lock $(if $(UPGRADE),--upgrade)

lint: sync-test  ## ruff; the layers' import contracts; shellcheck and hadolint (locked wheels) on the deployment files
	$(BIN)/ruff check service tests bench scripts
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff format --check service tests bench scripts
	$(BIN)/shellcheck start_unified_container.sh scripts/*.sh
	$(BIN)/hadolint Dockerfile

typecheck: sync-test  ## mypy --strict
	$(BIN)/mypy

# the web UI's front-end assets (htmx, from the npm registry; git-ignored), and the Debian packages the tests use
static/vendor/htmx.min.js: scripts/install_frontend_assets.sh
	bash scripts/install_frontend_assets.sh

/usr/bin/chromium /usr/bin/sox /usr/bin/strace &: scripts/install_system_packages.sh
	bash scripts/install_system_packages.sh

prerequisites: sync-test container-env static/vendor/htmx.min.js /usr/bin/chromium /usr/bin/sox /usr/bin/strace

pytest: prerequisites  ## the test suite alone
	UV="$(CURDIR)/$(UV)" CONTAINER_PYTHON="$(CURDIR)/$(CONTAINER_VENV)/bin/python" \
	STEP_AUDIO_CHECKOUTS="$(STEP_AUDIO_CHECKOUTS)" OPENAI_REFERENCE="$(OPENAI_REFERENCE)" $(BIN)/pytest

# lint and mypy use the CPU while the downloads for the tests run beside them; then the suite
test: $(UV)  ## install the test set, then lint, type-check and run every test
	$(MAKE) --no-print-directory -j4 --output-sync=target lint typecheck prerequisites
	$(MAKE) --no-print-directory pytest

bench: sync-test  ## lifecycle benchmarks (writes figures to stdout)
	$(BIN)/python bench/lifecycle.py

clean:  ## remove the virtual environments
	rm -rf $(VENV) $(TOOLS) $(CONTAINER_VENV)

"""The container's Python environment on this machine: `.venv-container`, which `make test` builds from uv.lock
(scripts/container_env.sh, the same command the Dockerfile runs) and names in CONTAINER_PYTHON."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CONTAINER_PYTHON_ENV = "CONTAINER_PYTHON"


def container_python() -> Path:
    """Its interpreter; a skip when CONTAINER_PYTHON is unset (pytest run by hand), a failure when it is wrong."""
    value = os.environ.get(CONTAINER_PYTHON_ENV)
    if not value:
        pytest.skip(f"{CONTAINER_PYTHON_ENV} is not set: `make test` builds the container's environment and sets it")
    python = Path(value)
    assert python.is_file(), f"{CONTAINER_PYTHON_ENV}={value} does not exist: run `make container-env`"
    return python

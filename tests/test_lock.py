"""Installs come from uv.lock: the lock agrees with pyproject.toml, and this virtualenv holds the locked test set,
exactly (docs/operations.md, "Installs")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from service.settings import PROJECT_ROOT

PROJECT = "speech-server"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;]+)")


def canonicalize_name(name: str) -> str:
    """The name as package indexes compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def uv() -> str:
    """The uv that `make` installed (`UV`), else one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.fail("uv is not installed: run the tests with `make test`, which installs it into .tools/")
    return found


def run_uv(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([uv(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def test_the_lock_agrees_with_pyproject() -> None:
    result = run_uv("lock", "--check", "--offline")
    assert result.returncode == 0, result.stderr


def locked_test_set() -> dict[str, str]:
    result = run_uv("export", "--locked", "--offline", "--group", "test", "--no-hashes", "--no-emit-project")
    assert result.returncode == 0, result.stderr
    pins = (_PIN.match(line) for line in result.stdout.splitlines())
    return {canonicalize_name(pin[1]): pin[2] for pin in pins if pin}


def installed() -> dict[str, str]:
    """What the virtualenv's site-packages hold. Not sys.path: once a test in this process has imported Ray, it has
    its vendored copies of psutil and colorama (ray/thirdparty_files) on the path, which are no installs."""
    found = metadata.distributions(path=sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}))
    return {canonicalize_name(dist.metadata["Name"]): dist.version for dist in found}


def test_the_virtualenv_holds_exactly_the_locked_test_set() -> None:
    present = installed()
    assert present.pop(PROJECT, None) is not None, "the project itself is not installed"
    assert present == locked_test_set()

"""The import contracts in pyproject.toml ([tool.importlinter]) hold for the code, and each one would catch the
import it forbids: checked on a copy of the package with one such import added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_code_keeps_every_contract() -> None:
    result = lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "added_import", "contract"),
    [
        ("service/lazy_loader.py", "import service.controllers.errors", "http → speech/models → lifecycle"),
        ("service/models/catalog.py", "import service.speech.service", "http → speech/models → lifecycle"),
        ("service/lifecycle/worker_client.py", "import service.worker.__main__", "the worker's entry point"),
        ("service/engines/piper.py", "import service.engines.step_audio", "engines import only engines.base"),
        ("service/engines/piper.py", "import service.settings", "an engine knows nothing of the server"),
        ("service/lazy_loader.py", "import litestar", "imports no HTTP and no torch"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, added_import: str, contract: str) -> None:
    shutil.copytree(PROJECT_ROOT / "service", tmp_path / "service")
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{added_import}\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert any(contract in line for line in broken), result.stdout

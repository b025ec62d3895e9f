"""The Step-Audio-EditX adapter against a stand-in checkout: which arguments reach the upstream classes for every
mode and variant, the audio files they get, the output rate, and the errors. The real model was not run here."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import soundfile

from service.app import create_app
from service.lazy_loader import ModelPolicy
from service.models.catalog import Catalog, ModelSpec
from service.settings import Settings
from tests.conftest import WITHOUT_SPARES, AppClient, ClientFactory, serve
from tests.support.checkouts import english_voice
from tests.support.step_audio_standin import StandIn, write_standin

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("step-audio-standin")]

TRANSCRIPT = "This is the reference voice speaking."


def wav(seconds: float = 1.0, rate: int = 16000, channels: int = 1) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    output = io.BytesIO()
    soundfile.write(output, np.stack([tone] * channels, axis=1), rate, format="WAV")
    return output.getvalue()


def step_model(standin: StandIn, variant: str = "bnb", **options: Any) -> ModelSpec:
    return ModelSpec.create(
        f"sa-{variant}",
        "step-audio",
        {
            "project_dir": str(standin.checkout),
            "models_dir": str(standin.models),
            "variant": variant,
            "require_cuda": False,
            **options,
        },
        ModelPolicy(idle_timeout=300),
    )


def with_a_spare(tmp_path: Path) -> Settings:
    """Settings that keep one Step-Audio-EditX spare, as the server's defaults do (the tests' default keeps none)."""
    return Settings(data_dir=tmp_path / "data", warm_spares=("transformers=0", "step-audio=1"))


async def status_once(client: AppClient, settled: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """sa-bnb's status once `settled` holds for it (a bounded wait)."""
    with anyio.fail_after(60):
        while True:
            status: dict[str, Any] = (await client.get("/api/v1/models/sa-bnb/status")).json()
            if settled(status):
                return status
            await anyio.sleep(0.1)


@dataclass(frozen=True)
class Reference:
    audio: bytes
    transcript: str
    seconds: float


def reference() -> Reference:
    """The library voice the clones use: upstream's own English example (real speech, 44.1 kHz) when a checkout is
    there (STEP_AUDIO_CHECKOUTS), else a 2 s stereo tone at 44.1 kHz."""
    voice = english_voice()
    if voice is not None:
        return Reference(voice.read(), voice.transcript, voice.seconds)
    return Reference(wav(2.0, 44100, channels=2), TRANSCRIPT, 2.0)


async def add_voice(client: AppClient, name: str = "narrator") -> None:
    voice = reference()
    response = await client.post(
        "/v1/voices",
        data={"name": name, "transcript": voice.transcript},
        files={"audio": ("ref.wav", voice.audio, "audio/wav")},
    )
    assert response.status_code == 201, response.text


def decoded(content: bytes) -> tuple[np.ndarray[Any, Any], int]:
    audio, rate = soundfile.read(io.BytesIO(content))
    return audio, rate


# ---- discovery (server side, nothing loaded) and loading


class TestDiscoveryAndLoading:
    """Each test gets a stand-in of its own: these change its folders, or load it afresh."""

    @pytest.fixture
    def standin(self, tmp_path: Path) -> StandIn:
        return write_standin(tmp_path / "upstream")

    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        """Without the start-up import probe, unless a test is about it: each costs a process importing torch."""
        return Settings(data_dir=tmp_path / "data", probe_engines=False, warm_spares=WITHOUT_SPARES)

    def test_every_complete_variant_folder_becomes_a_model(self, standin: StandIn) -> None:
        catalog = Catalog.from_settings(Settings(step_audio_dir=standin.checkout))
        assert {"step-audio-editx-base", "step-audio-editx-bnb", "step-audio-editx-awq"} <= set(catalog.specs)
        assert catalog.resolve("step-audio-editx").id == "step-audio-editx-bnb"
        assert catalog.unavailable == {}
        spec = catalog.specs["step-audio-editx-awq"]
        assert (spec.engine, spec.capabilities.sample_rate, spec.capabilities.device) == ("step-audio", 24000, "cuda")
        assert "whisper" in spec.capabilities.edit_options["style"]

    def test_missing_folders_are_reported_with_the_reason_not_served(self, standin: StandIn) -> None:
        (standin.models / "Step-Audio-EditX-AWQ-4bit" / "CosyVoice-300M-25Hz" / "hift.pt").unlink()
        (standin.models / "Step-Audio-EditX-bnb-4bit" / "config.json").unlink()
        catalog = Catalog.from_settings(Settings(step_audio_dir=standin.checkout, step_audio_variant="awq"))
        assert "step-audio-editx-awq" not in catalog.specs
        assert "hift.pt is missing" in catalog.unavailable["step-audio-editx-awq"]
        assert "config.json is missing" in catalog.unavailable["step-audio-editx-bnb"]
        assert catalog.resolve("step-audio-editx").id == "step-audio-editx-base"

    def test_a_missing_funasr_folder_is_reported_because_upstream_would_download(self, standin: StandIn) -> None:
        (standin.models / "Step-Audio-Tokenizer" / "dengcunqin").rename(standin.models / "elsewhere")
        catalog = Catalog.from_settings(Settings(step_audio_dir=standin.checkout))
        assert not any(spec.engine == "step-audio" for spec in catalog.specs.values())
        assert all("downloads it from the ModelScope hub" in reason for reason in catalog.unavailable.values())

    @pytest.mark.slow
    async def test_funasr_models_that_did_not_register_make_the_checkout_unavailable_at_start_up(
        self, make_client: ClientFactory, standin: StandIn, tmp_path: Path
    ) -> None:
        """funasr_detach drops its submodules' import errors: the start-up probe finds the model missing and why,
        and the warm spare, which fails the same imports, is given up instead of retried every back-off."""
        package = standin.checkout / "funasr_detach"
        (package / "register.py").write_text("class T:\n    model_classes = {'Paraformer': 1}\n\n\ntables = T()\n")
        streaming = package / "models" / "paraformer_streaming"
        streaming.mkdir()
        (streaming / "__init__.py").write_text("")
        (streaming / "model.py").write_text("import six_is_not_installed\n")
        async with make_client(with_a_spare(tmp_path), (step_model(standin),)) as client:
            status = await status_once(
                client, lambda now: now["engine_probe"] != "pending" and not now["warm_spares"]["configured"]
            )
            listed = (await client.get("/api/v1/models/unavailable")).json()
            offered = [model["id"] for model in (await client.get("/v1/models")).json()["data"]]
            refused = await client.post("/api/v1/models/sa-bnb/load")
        assert status["engine_probe"] == "failed"
        reason = listed["sa-bnb"]
        assert status["warm_spares"]["ready"] == 0
        assert status["warm_spares"]["last_error"].startswith("no spares are kept: the import probe failed: ")
        assert "FunASR's ParaformerStreaming is not registered" in reason
        assert "importing funasr_detach.models.paraformer_streaming.model fails" in reason
        assert "six_is_not_installed" in reason
        assert "sa-bnb" not in offered
        assert refused.status_code == 503
        assert reason in refused.json()["error"]["message"]
        assert standin.calls() == []

    @pytest.mark.slow
    async def test_with_a_warm_spare_its_imports_answer_the_start_up_probe_and_serve_the_first_load(
        self, make_client: ClientFactory, standin: StandIn, tmp_path: Path
    ) -> None:
        """The probe imports what a spare imports: with a spare kept, the spare's imports are the probe's answer,
        and no second process imports torch and the checkout at start-up."""
        async with make_client(with_a_spare(tmp_path), (step_model(standin),)) as client:
            status = await status_once(
                client, lambda now: now["engine_probe"] != "pending" and now["warm_spares"]["ready"]
            )
            (spare,) = status["warm_spares"]["pids"]
            assert status["engine_probe"] == "passed"
            assert standin.importing_pids() == [spare]
            loaded = await client.post("/api/v1/models/sa-bnb/load")
            assert loaded.status_code == 200, loaded.text
            assert (await client.get("/api/v1/models/sa-bnb/status")).json()["pid"] == spare
            assert standin.importing_pids() == [spare]

    @pytest.mark.slow
    async def test_unavailable_variants_are_listed_by_the_api(
        self, make_client: ClientFactory, standin: StandIn, tmp_path: Path
    ) -> None:
        (standin.checkout / "tts.py").unlink()
        async with make_client(
            Settings(step_audio_dir=standin.checkout, data_dir=tmp_path / "d", warm_spares=WITHOUT_SPARES)
        ) as client:
            body = (await client.get("/api/v1/models/unavailable")).json()
        assert set(body) == {"step-audio-editx-base", "step-audio-editx-bnb", "step-audio-editx-awq"}
        assert all("tts.py is missing" in reason for reason in body.values())

    # ---- loading

    @pytest.mark.slow
    async def test_without_a_gpu_the_load_fails_cleanly_and_says_why(
        self, make_client: ClientFactory, standin: StandIn, tmp_path: Path
    ) -> None:
        async with make_client(
            Settings(
                step_audio_dir=standin.checkout,
                data_dir=tmp_path / "d",
                probe_engines=False,
                warm_spares=WITHOUT_SPARES,
            )
        ) as client:
            await add_voice(client)
            response = await client.post(
                "/v1/audio/speech", json={"model": "step-audio-editx", "input": "Hi", "voice": "narrator"}
            )
            assert response.status_code == 503
            message = response.json()["error"]["message"]
            assert "needs an NVIDIA GPU" in message
            assert "Traceback" not in message
            status = (await client.get("/api/v1/models/step-audio-editx-bnb/status")).json()
            assert status["state"] == "failed"
            assert "needs an NVIDIA GPU" in status["last_error"]
            assert status["pid"] is None
        assert standin.calls() == []

    @pytest.mark.slow
    @pytest.mark.parametrize(
        ("variant", "folder", "quantization"),
        [
            ("base", "Step-Audio-EditX", None),
            ("bnb", "Step-Audio-EditX-bnb-4bit", "int4"),
            ("awq", "Step-Audio-EditX-AWQ-4bit", "awq-4bit"),
        ],
    )
    async def test_each_variant_loads_its_folder_with_its_quantization(
        self,
        make_client: ClientFactory,
        standin: StandIn,
        settings: Settings,
        variant: str,
        folder: str,
        quantization: str | None,
    ) -> None:
        async with make_client(settings, (step_model(standin, variant),)) as client:
            response = await client.post(f"/api/v1/models/sa-{variant}/load")
            assert response.status_code == 200, response.text
        (tokenizer,) = standin.calls_named("StepAudioTokenizer")
        assert tokenizer["encoder_path"] == str(standin.models / "Step-Audio-Tokenizer")
        assert tokenizer["model_source"] == "local"
        assert tokenizer["funasr_exists"] is True
        (tts,) = standin.calls_named("StepAudioTTS")
        assert tts["model_path"] == str(standin.models / folder)
        assert tts["quantization_config"] == quantization
        assert (tts["model_source"], tts["device_map"], tts["torch_dtype"]) == ("local", "cuda", "torch.bfloat16")
        assert tts["tokenizer"] == "StepAudioTokenizer"


# ---- cloning through the OpenAI route


@pytest.fixture(scope="module")
def shared_standin(tmp_path_factory: pytest.TempPathFactory) -> StandIn:
    return write_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="module")
async def step_client(shared_standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AppClient]:
    """One server for the rest of this module, its stand-in model loaded once and a library voice added."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), probe_engines=False, warm_spares=WITHOUT_SPARES)
    async with serve(create_app(settings, (step_model(shared_standin, default_voice="narrator"),))) as client:
        await add_voice(client)
        assert (await client.post("/api/v1/models/sa-bnb/load")).status_code == 200
        yield client


@pytest.fixture
def standin(shared_standin: StandIn, step_client: AppClient) -> StandIn:
    """The loaded stand-in, its record of calls emptied for the test."""
    shared_standin.forget_calls()
    return shared_standin


@pytest.mark.slow
async def test_clone_sends_the_voice_clip_and_transcript_and_returns_24_khz(
    step_client: AppClient, standin: StandIn
) -> None:
    response = await step_client.post(
        "/v1/audio/speech",
        json={"model": "sa-bnb", "input": "Say this.", "voice": "narrator", "response_format": "wav"},
    )
    assert response.status_code == 200, response.text
    assert (response.headers["x-mode"], response.headers["x-voice"]) == ("clone", "narrator")
    audio, rate = decoded(response.content)
    assert rate == 24000
    assert len(audio) / rate == pytest.approx(0.5 + 0.05 * len("Say this."), abs=0.01)
    (clone,) = standin.calls_named("clone")
    assert clone["prompt_text"] == reference().transcript
    assert clone["target_text"] == "Say this."
    assert clone["prompt"]["exists"] is True
    assert (clone["prompt"]["rate"], clone["prompt"]["channels"]) == (24000, 1)
    assert clone["prompt"]["seconds"] == pytest.approx(reference().seconds, abs=0.01)
    assert not Path(clone["prompt"]["path"]).exists()


@pytest.mark.slow
async def test_openai_voice_names_use_the_model_s_default_voice(step_client: AppClient, standin: StandIn) -> None:
    response = await step_client.post("/v1/audio/speech", json={"model": "sa-bnb", "input": "Hi.", "voice": "alloy"})
    assert response.status_code == 200
    assert response.headers["x-voice"] == "narrator"


@pytest.mark.slow
async def test_instructions_and_speed_become_edits_after_the_clone(step_client: AppClient, standin: StandIn) -> None:
    response = await step_client.post(
        "/v1/audio/speech",
        json={
            "model": "sa-bnb",
            "input": "Lovely day.",
            "voice": "narrator",
            "instructions": "sound happy and whisper",
            "speed": 1.6,
            "response_format": "wav",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-edits"] == "emotion=happy,style=whisper,speed=more faster"
    calls = [call["call"] for call in standin.calls() if call["call"] in ("clone", "edit")]
    assert calls == ["clone", "edit", "edit", "edit"]
    edits = standin.calls_named("edit")
    assert [(edit["edit_type"], edit["edit_info"]) for edit in edits] == [
        ("emotion", "happy"),
        ("style", "whisper"),
        ("speed", "more faster"),
    ]
    assert all(edit["audio_text"] == "Lovely day." and edit["text"] is None for edit in edits)
    assert edits[1]["input"]["seconds"] == pytest.approx(edits[0]["input"]["seconds"] + 0.25, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"instructions": "emotion=ecstatic"}, "instructions"),
        ({"instructions": "tell a joke"}, "instructions"),
        ({"voice": "nobody"}, "voice"),
        ({"voice": "../etc"}, "voice"),
    ],
)
async def test_bad_clone_requests_are_400_before_any_model_work(
    step_client: AppClient, standin: StandIn, body: dict[str, str], param: str
) -> None:
    response = await step_client.post(
        "/v1/audio/speech", json={"model": "sa-bnb", "input": "Hi.", "voice": "narrator", **body}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert standin.calls() == []


# ---- editing


async def edit(client: AppClient, mode: str, **fields: Any) -> Any:
    data = {"mode": mode, "transcript": "What the clip says.", "model": "sa-bnb", **fields}
    return await client.post(
        "/v1/audio/edit",
        data={key: str(value) for key, value in data.items()},
        files={"audio": ("clip.flac", wav(1.5, 22050), "audio/wav")},
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "fields", "edit_info", "text"),
    [
        ("emotion", {"edit_info": "sad"}, "sad", None),
        ("style", {"edit_info": "act_coy"}, "act_coy", None),
        ("speed", {"edit_info": "more slower"}, "more slower", None),
        ("paralinguistic", {"text": "What [Laughter] the clip says."}, None, "What [Laughter] the clip says."),
        ("denoise", {}, None, None),
        ("vad", {"edit_info": "ignored"}, None, None),
    ],
)
async def test_every_edit_mode_reaches_the_upstream_edit_with_its_arguments(
    step_client: AppClient,
    standin: StandIn,
    mode: str,
    fields: dict[str, str],
    edit_info: str | None,
    text: str | None,
) -> None:
    response = await edit(step_client, mode, **fields)
    assert response.status_code == 200, response.text
    assert response.headers["x-mode"] == mode
    (call,) = standin.calls_named("edit")
    assert (call["edit_type"], call["edit_info"], call["text"]) == (mode, edit_info, text)
    assert call["audio_text"] == "What the clip says."
    assert (call["input"]["rate"], call["input"]["seconds"]) == (24000, pytest.approx(1.5, abs=0.01))
    audio, rate = decoded(response.content)
    assert rate == 24000
    assert len(audio) / rate == pytest.approx(1.75, abs=0.01)


@pytest.mark.slow
async def test_n_edit_iter_edits_the_previous_output_again(step_client: AppClient, standin: StandIn) -> None:
    response = await edit(step_client, "style", edit_info="whisper", n_edit_iter=3)
    assert response.status_code == 200
    inputs = [call["input"]["seconds"] for call in standin.calls_named("edit")]
    assert inputs == pytest.approx([1.5, 1.75, 2.0], abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "fields", "param"),
    [
        ("emotion", {"edit_info": "ecstatic"}, "edit_info"),
        ("emotion", {}, "edit_info"),
        ("sing", {}, "mode"),
        ("paralinguistic", {}, "text"),
        ("style", {"edit_info": "whisper", "n_edit_iter": 6}, "n_edit_iter"),
        ("emotion", {"edit_info": "happy", "transcript": " "}, "transcript"),
        ("emotion", {"edit_info": "happy", "model": "piper-joe"}, "model"),
    ],
)
async def test_bad_edits_are_400_naming_the_field(
    step_client: AppClient, standin: StandIn, mode: str, fields: dict[str, Any], param: str
) -> None:
    response = await edit(step_client, mode, **fields)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert standin.calls_named("edit") == []


@pytest.mark.slow
async def test_a_non_audio_upload_is_400(step_client: AppClient) -> None:
    response = await step_client.post(
        "/v1/audio/edit", data={"mode": "denoise"}, files={"audio": ("clip.wav", b"not audio at all", "audio/wav")}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_audio"


# ---- the fork's step_audio extension


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.slow
async def test_step_audio_extension_edit_with_base64_audio(step_client: AppClient, standin: StandIn) -> None:
    response = await step_client.post(
        "/v1/audio/speech",
        json={
            "model": "sa-bnb",
            "input": "unused",
            "response_format": "wav",
            "metadata": {"client": "fork"},
            "step_audio": {
                "mode": "emotion",
                "edit_info": "angry",
                "audio_text": "The clip.",
                "intensity": 2.0,
                "input_audio_base64": b64(wav(1.0, 16000)),
                "n_edit_iter": 2,
            },
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-ignored-fields"] == "step_audio.intensity"
    edits = standin.calls_named("edit")
    assert [(call["edit_type"], call["edit_info"], call["audio_text"]) for call in edits] == [
        ("emotion", "angry", "The clip.")
    ] * 2


@pytest.mark.slow
async def test_step_audio_extension_clone_with_a_prompt_clip(step_client: AppClient, standin: StandIn) -> None:
    response = await step_client.post(
        "/v1/audio/speech",
        json={
            "model": "sa-bnb",
            "input": "Clone me.",
            "response_format": "wav",
            "step_audio": {
                "mode": "clone",
                "prompt_text": "Prompt words.",
                "prompt_audio_base64": "data:audio/wav;base64," + b64(wav(1.0, 48000)),
            },
        },
    )
    assert response.status_code == 200, response.text
    (clone,) = standin.calls_named("clone")
    assert (clone["prompt_text"], clone["target_text"], clone["prompt"]["rate"]) == (
        "Prompt words.",
        "Clone me.",
        24000,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extension", "param"),
    [
        ({"mode": "clone", "prompt_audio_base64": b64(wav())}, "step_audio.prompt_text"),
        (
            {"mode": "clone", "prompt_text": "x", "prompt_audio_url": "http://169.254.169.254/x.wav"},
            "step_audio.prompt_audio_url",
        ),
        ({"mode": "emotion", "edit_info": "happy", "audio_text": "x"}, "step_audio.input_audio_base64"),
        (
            {"mode": "emotion", "edit_info": "happy", "audio_text": "x", "input_audio_base64": "!!"},
            "step_audio.input_audio_base64",
        ),
        (
            {"mode": "style", "edit_info": "loud", "audio_text": "x", "input_audio_base64": b64(wav())},
            "step_audio.edit_info",
        ),
        ({"mode": "emotion", "edit_info": "happy", "input_audio_base64": b64(wav())}, "step_audio.audio_text"),
        ({"mode": "emotion", "n_edit_iter": 9}, "step_audio.n_edit_iter"),
    ],
)
async def test_step_audio_extension_errors(
    step_client: AppClient, standin: StandIn, extension: dict[str, Any], param: str
) -> None:
    response = await step_client.post(
        "/v1/audio/speech", json={"model": "sa-bnb", "input": "x", "step_audio": extension}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert standin.calls() == []


@pytest.mark.slow
async def test_the_fork_s_multipart_upload_route(step_client: AppClient, standin: StandIn) -> None:
    payload = {
        "model": "sa-bnb",
        "input": "From a form.",
        "response_format": "wav",
        "step_audio": {"mode": "clone", "prompt_text": "Prompt words."},
    }
    response = await step_client.post(
        "/v1/audio/speech/upload",
        data={"payload": json.dumps(payload)},
        files={"prompt_audio_file": ("p.wav", wav(1.0, 24000), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    (clone,) = standin.calls_named("clone")
    assert clone["target_text"] == "From a form."
    bad = await step_client.post("/v1/audio/speech/upload", files={"payload": (None, "{not json")})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "payload"

"""Speech requests before any model work: keep_alive parsing and SpeechPlanner.plan's validation."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from anyio.abc import TaskGroup

from service.audio.decode import AudioDecoder
from service.audio.encode import AudioFormat
from service.controllers.errors import as_api_error
from service.engines.base import AudioClip, SynthesisRequest
from service.errors import InvalidRequest
from service.lazy_loader import LazyLoader, ModelPolicy, Placement, UnknownModel
from service.library.voices import VoiceLibrary
from service.lifecycle.worker_client import SpeechWorker
from service.metrics import Metrics
from service.models.catalog import Catalog, ModelSpec
from service.settings import Settings
from service.speech.planner import SpeechPlan, parse_keep_alive
from service.speech.schema import SpeechRequest, VoiceReference
from service.speech.service import SpeechService
from tests.support.audio import tone
from tests.support.engines import TONE_ENGINE

pytestmark = pytest.mark.anyio

# ---- keep_alive


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        (-1, -1.0),
        ("0", 0.0),
        ("-1", -1.0),
        ("45", 45.0),
        ("1.5", 1.5),
        (" 90 ", 90.0),
        ("10m", 600.0),
        ("10M", 600.0),
        ("30s", 30.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("2m500ms", 120.5),
        ("-5m", -300.0),
        ("+5m", 300.0),
    ],
)
def test_parse_keep_alive(value: str | float | None, expected: float | None) -> None:
    result = parse_keep_alive(value)

    assert result == expected
    assert result is None or isinstance(result, float)


@pytest.mark.parametrize(
    "value",
    ["", " ", "soon", "10x", "m", "10 m", "1h 30m", "ten minutes", "10m!", "1.2.3", "-", "h1", "5-"],
)
def test_parse_keep_alive_rejects_bad_strings(value: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_keep_alive(value)

    error = raised.value
    assert as_api_error(error).status == 400
    assert error.param == "keep_alive"
    assert error.code == "invalid_value"


@pytest.mark.parametrize("value", ["--5", "+-5"])
def test_parse_keep_alive_rejects_repeated_signs(value: str) -> None:
    """'+-5' would otherwise mean +5 seconds and '--5' minus five."""
    with pytest.raises(InvalidRequest) as raised:
        parse_keep_alive(value)

    assert raised.value.param == "keep_alive"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_parse_keep_alive_rejects_non_finite_numbers(value: float) -> None:
    with pytest.raises(InvalidRequest, match="finite") as raised:
        parse_keep_alive(value)

    assert as_api_error(raised.value).status == 400
    assert raised.value.param == "keep_alive"


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e999"])
def test_parse_keep_alive_rejects_non_finite_strings(value: str) -> None:
    """A string must not get round the check numbers get (NaN would silently keep the model loaded forever)."""
    with pytest.raises(InvalidRequest) as raised:
        parse_keep_alive(value)

    assert as_api_error(raised.value).status == 400
    assert raised.value.param == "keep_alive"


# ---- plan


async def _never_launch(model: str, placement: Placement, task_group: TaskGroup) -> SpeechWorker:
    raise AssertionError(f"planning must not start a worker ({model})")


def service(
    max_input_chars: int = 100, *, ignore_unsupported_instructions: bool = True, voices: VoiceLibrary | None = None
) -> SpeechService:
    tone = ModelSpec.create(
        "tone", TONE_ENGINE, {"sample_rate": 16000, "voices": ["low", "high"]}, ModelPolicy(idle_timeout=300.0)
    )
    catalog = Catalog.from_settings(Settings(), [tone])
    loader: LazyLoader[SpeechWorker] = LazyLoader({}, _never_launch)
    voices = voices or VoiceLibrary(Path(tempfile.mkdtemp()), [])
    decoder = AudioDecoder(24000, max_seconds=30, max_bytes=1 << 20, url_prefixes=())
    return SpeechService(
        catalog,
        loader,
        Metrics(),
        voices,
        decoder,
        max_input_chars,
        ignore_unsupported_instructions=ignore_unsupported_instructions,
    )


def synthesis(plan: SpeechPlan) -> SynthesisRequest:
    assert isinstance(plan.request, SynthesisRequest)
    return plan.request


async def test_plan_defaults() -> None:
    plan = await service().planner.plan(SpeechRequest(model="tts-1", input="Hello."))

    assert plan.spec.id == "piper-joe"
    assert synthesis(plan).text == "Hello."
    assert synthesis(plan).voice == "joe"
    assert synthesis(plan).speed == 1.0
    assert plan.audio_format is AudioFormat.MP3
    assert plan.output_rate == 22050
    assert plan.keep_alive is None


async def test_plan_with_every_field() -> None:
    request = SpeechRequest(
        model="tone", input="Hi", voice="high", response_format="opus", speed=1.5, sample_rate=44100, keep_alive="2m"
    )

    plan = await service().planner.plan(request)

    assert plan.spec.id == "tone"
    assert synthesis(plan).voice == "high"
    assert synthesis(plan).speed == 1.5
    assert plan.audio_format is AudioFormat.OPUS
    assert plan.output_rate == 48000
    assert plan.keep_alive == 120.0


@pytest.mark.parametrize(("model", "voice"), [("tone", "low"), ("piper-joe", "joe")])
async def test_openai_voice_names_mean_the_default_voice(model: str, voice: str) -> None:
    plan = await service().planner.plan(SpeechRequest(model=model, input="Hi", voice="alloy"))

    assert synthesis(plan).voice == voice


async def test_pcm_defaults_to_24khz() -> None:
    plan = await service().planner.plan(SpeechRequest(model="tone", input="Hi", response_format="pcm"))
    assert plan.output_rate == 24000


@pytest.mark.parametrize(
    ("request_", "param", "code"),
    [
        (SpeechRequest(model="tone", input="   "), "input", "invalid_value"),
        (SpeechRequest(model="tone", input="x" * 101), "input", "string_above_max_length"),
        (SpeechRequest(model="tone", input="Hi", voice="joe"), "voice", "invalid_value"),
        (SpeechRequest(model="tone", input="Hi", keep_alive="forever"), "keep_alive", "invalid_value"),
    ],
)
async def test_plan_rejects(request_: SpeechRequest, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await service().planner.plan(request_)

    assert as_api_error(raised.value).status == 400
    assert (raised.value.param, raised.value.code) == (param, code)


async def test_instructions_a_model_cannot_follow_are_ignored_and_said_so_by_default() -> None:
    plan = await service().planner.plan(SpeechRequest(model="tone", input="Hi", instructions="whisper"))
    assert plan.ignored_fields == ("instructions",)
    assert synthesis(plan).instructions is None


async def test_instructions_a_model_cannot_follow_are_refused_when_set_to_refuse() -> None:
    with pytest.raises(InvalidRequest) as raised:
        await service(ignore_unsupported_instructions=False).planner.plan(
            SpeechRequest(model="tone", input="Hi", instructions="whisper")
        )
    assert (raised.value.param, raised.value.code) == ("instructions", "unsupported_value")


async def test_a_library_voice_on_a_model_that_cannot_clone_is_a_400_that_says_so() -> None:
    voices = VoiceLibrary(Path(tempfile.mkdtemp()), [])
    voices.add("narrator", AudioClip(tone(1.0, 24000), 24000), "Hello.")
    with pytest.raises(InvalidRequest, match="cannot clone") as raised:
        await service(voices=voices).planner.plan(
            SpeechRequest(model="tone", input="Hi", voice=VoiceReference("narrator"))
        )
    assert raised.value.param == "voice"


async def test_plan_accepts_input_at_the_limit() -> None:
    plan = await service(max_input_chars=5).planner.plan(SpeechRequest(model="tone", input="x" * 5))
    assert synthesis(plan).text == "xxxxx"


async def test_plan_unknown_model() -> None:
    with pytest.raises(UnknownModel):
        await service().planner.plan(SpeechRequest(model="nope", input="Hi"))

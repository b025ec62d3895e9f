"""The OpenAI-compatible routes, in-process, with the real Piper voice and test engines in in-memory workers (two
tests in real worker processes: a real load's time, and one load for concurrent requests)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import anyio
import numpy as np
import openai
import pytest
import soundfile

from service.audio.encode import AudioFormat
from service.lazy_loader import SlotState
from service.models.catalog import OPENAI_MODEL_ALIASES, OPENAI_VOICES
from service.settings import Settings
from service.speech.service import AUDIO_FRAMES_PER_SECOND
from tests.conftest import AppClient, ClientFactory, tone_model
from tests.support.openai_reference import REFERENCE_ENV, enum_of, reference, validate

pytestmark = [pytest.mark.anyio, pytest.mark.in_process]


def speech(**fields: Any) -> dict[str, Any]:
    return {"model": "tts-1", "input": "Hello there. This is a test.", **fields}


async def test_models_lists_every_model_and_the_openai_aliases(client: AppClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    ids = [entry["id"] for entry in response.json()["data"]]
    assert "piper-joe" in ids
    assert {"tts-1", "tts-1-hd"} <= set(ids)
    assert response.json()["object"] == "list"


async def test_each_listed_model_and_alias_is_retrieved_by_the_official_client(client: AppClient) -> None:
    listed = (await client.get("/v1/models")).json()["data"]
    openai_client = openai.AsyncOpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client)

    retrieved = [(await openai_client.models.retrieve(entry["id"])).model_dump() for entry in listed]

    assert retrieved == [entry | {"shutdown_date": None} for entry in listed]
    alias = await openai_client.models.retrieve("tts-1")
    assert (alias.id, alias.object, alias.owned_by) == ("tts-1", "model", "alias:piper-joe")


async def test_retrieving_an_unknown_model_is_openai_s_404(client: AppClient) -> None:
    response = await client.get("/v1/models/no-such-model")

    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "model", "model_not_found")
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize("model", ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15"])
async def test_every_published_speech_model_name_means_the_default_model(client: AppClient, model: str) -> None:
    listed = {entry["id"]: entry for entry in (await client.get("/v1/models")).json()["data"]}
    response = await client.post("/v1/audio/speech", json=speech(model=model, response_format="wav"))

    assert listed[model]["owned_by"] == "alias:piper-joe"
    assert response.status_code == 200, response.text
    assert response.headers["x-model"] == "piper-joe"


@pytest.mark.parametrize("voice", ["marin", "cedar", "fable", "onyx", "nova"])
async def test_every_openai_voice_name_means_the_model_s_default_voice(client: AppClient, voice: str) -> None:
    response = await client.post("/v1/audio/speech", json=speech(voice=voice, response_format="wav"))

    assert response.status_code == 200, response.text
    assert response.headers["x-voice"] == "joe"


@pytest.mark.slow
@pytest.mark.real_processes  # the load it times is a worker's (in-memory Piper loads once per process)
async def test_first_request_loads_the_model_and_says_so(client: AppClient) -> None:
    assert client.loader.state("piper-joe") is SlotState.UNLOADED
    cold = await client.post("/v1/audio/speech", json=speech(response_format="wav"))
    warm = await client.post("/v1/audio/speech", json=speech(response_format="wav"))
    assert cold.status_code == warm.status_code == 200
    assert cold.headers["x-cold-start"] == "true"
    assert float(cold.headers["x-model-load-seconds"]) > 0
    assert warm.headers["x-cold-start"] == "false"
    audio, rate = soundfile.read(io.BytesIO(cold.content))
    assert rate == 22050
    assert len(audio) / rate == pytest.approx(float(cold.headers["x-audio-seconds"]), abs=0.01)
    assert np.abs(audio).max() > 0.1
    assert client.loader.state("piper-joe") is SlotState.LOADED


@pytest.mark.parametrize(
    ("response_format", "media_type"),
    [("mp3", "audio/mpeg"), ("opus", "audio/ogg"), ("flac", "audio/flac"), ("wav", "audio/wav")],
)
async def test_every_format_decodes_to_the_spoken_audio(
    client: AppClient, response_format: str, media_type: str
) -> None:
    response = await client.post("/v1/audio/speech", json=speech(response_format=response_format))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == int(response.headers["x-sample-rate"])
    assert len(audio) / rate == pytest.approx(float(response.headers["x-audio-seconds"]), rel=0.06)


async def test_mp3_is_the_default_and_pcm_is_24_khz_like_openai(client: AppClient) -> None:
    default = await client.post("/v1/audio/speech", json=speech())
    assert default.headers["content-type"] == "audio/mpeg"
    pcm = await client.post("/v1/audio/speech", json=speech(response_format="pcm"))
    assert pcm.headers["x-sample-rate"] == "24000"
    samples = len(pcm.content) // 2
    assert samples / 24000 == pytest.approx(float(pcm.headers["x-audio-seconds"]), rel=0.01)


async def test_streamed_audio_arrives_in_pieces_decodes_and_releases_the_model(client: AppClient) -> None:

    text = "First sentence here. Second sentence here. Third sentence here."
    async with client.stream(
        "POST", "/v1/audio/speech", json=speech(input=text, stream_format="audio", response_format="mp3")
    ) as response:
        assert response.status_code == 200
        pieces = [piece async for piece in response.aiter_raw() if piece]
    assert len(pieces) >= 3
    audio, _ = soundfile.read(io.BytesIO(b"".join(pieces)))
    assert len(audio) > 22050
    snapshot = await client.loader.snapshot("piper-joe")
    assert (snapshot.in_flight, snapshot.queued) == (0, 0)


async def test_server_sent_events_carry_base64_audio_then_done(client: AppClient) -> None:
    response = await client.post("/v1/audio/speech", json=speech(stream_format="sse", response_format="pcm"))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [event["type"] for event in events][-1] == "speech.audio.done"
    assert all(event["type"] == "speech.audio.delta" for event in events[:-1])
    assert len(events) >= 3


async def test_openai_voice_names_mean_the_default_voice_and_speed_changes_length(
    client: AppClient,
) -> None:
    normal = await client.post("/v1/audio/speech", json=speech(voice="alloy", response_format="wav"))
    fast = await client.post("/v1/audio/speech", json=speech(voice="joe", speed=2.0, response_format="wav"))
    assert normal.headers["x-voice"] == fast.headers["x-voice"] == "joe"
    assert float(fast.headers["x-audio-seconds"]) < 0.7 * float(normal.headers["x-audio-seconds"])


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "input": "hi"}, 404, "model"),
        ({"model": "tts-1", "input": ""}, 400, "input"),
        ({"model": "tts-1", "input": "   "}, 400, "input"),
        ({"model": "tts-1", "input": "x" * 5000}, 400, "input"),
        ({"model": "tts-1", "input": "hi", "voice": "nobody"}, 400, "voice"),
        ({"model": "tts-1", "input": "hi", "response_format": "ogg"}, 400, "response_format"),
        ({"model": "tts-1", "input": "hi", "speed": -1}, 400, "speed"),
        ({"model": "tts-1", "input": "hi", "speed": 9}, 400, "speed"),
        ({"model": "tts-1", "input": "hi", "keep_alive": "soon"}, 400, "keep_alive"),
        ({"model": "tts-1", "input": "hi", "stream_format": "video"}, 400, "stream_format"),
        ({"model": "tts-1", "input": 5}, 400, "input"),
        ({"input": "hi"}, 400, "model"),
    ],
)
async def test_bad_input_gets_a_4xx_naming_the_field_and_loads_nothing(
    client: AppClient, body: dict[str, Any], status: int, param: str
) -> None:
    response = await client.post("/v1/audio/speech", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param
    assert param in error["message"] or status == 404
    assert client.loader.state("piper-joe") is SlotState.UNLOADED


@pytest.mark.parametrize("stream_format", [None, "audio"])
async def test_input_with_nothing_speakable_is_a_400_not_an_empty_file(
    client: AppClient, stream_format: str | None
) -> None:
    response = await client.post("/v1/audio/speech", json=speech(input="...", stream_format=stream_format))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_audio"
    snapshot = await client.loader.snapshot("piper-joe")
    assert (snapshot.in_flight, snapshot.queued) == (0, 0)


async def test_malformed_json_is_a_400(client: AppClient) -> None:
    response = await client.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


async def test_keep_alive_zero_unloads_the_model_after_the_request(client: AppClient) -> None:
    response = await client.post("/v1/audio/speech", json=speech(keep_alive=0, response_format="pcm"))
    assert response.status_code == 200
    loader = client.loader
    with anyio.fail_after(5):
        while loader.state("piper-joe") is not SlotState.UNLOADED:
            await anyio.sleep(0.01)
    status = (await client.get("/api/v1/models/status")).json()["piper-joe"]
    assert status["last_unload_reason"] == "keep_alive"


async def test_keep_alive_duration_shows_in_the_status(client: AppClient) -> None:
    await client.post("/v1/audio/speech", json=speech(keep_alive="10m", response_format="pcm"))
    status = (await client.get("/api/v1/models/status")).json()["piper-joe"]
    assert status["keep_alive"] == 600
    assert 590 < status["time_until_unload"] <= 600


@pytest.mark.slow
@pytest.mark.real_processes
async def test_concurrent_cold_requests_cause_one_load_in_a_real_worker(
    make_client: ClientFactory, tmp_path: Any
) -> None:
    loads = tmp_path / "loads.txt"
    model = tone_model("tone", loads_file=str(loads), load_seconds=0.5)
    async with make_client(Settings(), (model,)) as client:
        results: list[int] = []

        async def request() -> None:
            response = await client.post(
                "/v1/audio/speech", json={"model": "tone", "input": "x", "response_format": "pcm"}
            )
            results.append(response.status_code)

        async with anyio.create_task_group() as group:
            for _ in range(12):
                group.start_soon(request)
    assert results == [200] * 12
    assert len(loads.read_text().split()) == 1


async def test_a_failed_load_answers_503_with_the_reason_and_the_status_keeps_it(
    make_client: ClientFactory,
) -> None:
    async with make_client(Settings(), (tone_model("broken", fail_load="weights missing"),)) as client:
        response = await client.post("/v1/audio/speech", json={"model": "broken", "input": "x"})
        assert response.status_code == 503
        assert "weights missing" in response.json()["error"]["message"]
        status = (await client.get("/api/v1/models/status")).json()["broken"]
        assert status["state"] == "failed"
        assert "weights missing" in status["last_error"]
        assert status["pid"] is None


async def test_engine_input_errors_are_400_and_engine_failures_keep_the_worker(make_client: ClientFactory) -> None:
    async with make_client(Settings(), (tone_model(),)) as client:
        refused = await client.post("/v1/audio/speech", json={"model": "tone", "input": "bad-input"})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "input"
        failed = await client.post("/v1/audio/speech", json={"model": "tone", "input": "engine-error"})
        assert failed.status_code == 500
        assert "asked to fail" in failed.json()["error"]["message"]
        fine = await client.post("/v1/audio/speech", json={"model": "tone", "input": "ok", "response_format": "wav"})
        assert fine.status_code == 200
        assert fine.headers["x-cold-start"] == "false"


async def test_a_full_house_answers_503_with_retry_after(make_client: ClientFactory) -> None:
    settings = Settings(max_loaded_models=1, capacity_wait=0.3)
    models = (tone_model("slow", chunks=40, chunk_seconds=0.05), tone_model("other"))
    async with make_client(settings, models) as client:

        async def slow_request() -> None:
            await client.post("/v1/audio/speech", json={"model": "slow", "input": "x"})

        async with anyio.create_task_group() as group:
            group.start_soon(slow_request)
            loader = client.loader
            with anyio.fail_after(10):
                while (await loader.snapshot("slow")).in_flight == 0:
                    await anyio.sleep(0.01)
            response = await client.post("/v1/audio/speech", json={"model": "other", "input": "x"})
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert "no room" in response.json()["error"]["message"]


def openai_client(client: AppClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client, max_retries=0)


def test_the_server_knows_every_voice_and_model_the_reference_publishes() -> None:
    if reference() is None:
        pytest.skip(f"no OpenAI reference document ({REFERENCE_ENV})")
    assert set(enum_of("VoiceIdsShared")) <= set(OPENAI_VOICES)
    assert set(enum_of("CreateSpeechRequest", "model")) == set(OPENAI_MODEL_ALIASES)
    assert set(enum_of("CreateSpeechRequest", "response_format")) == {str(f) for f in AudioFormat}


@pytest.mark.parametrize(
    "fields",
    [{"model": model} for model in OPENAI_MODEL_ALIASES]
    + [{"voice": voice} for voice in OPENAI_VOICES]
    + [{"voice": {"id": "alloy"}}]
    + [{"response_format": str(audio_format)} for audio_format in AudioFormat]
    + [{"speed": 0.25}, {"speed": 4.0}]
    + [{"model": "gpt-4o-mini-tts", "instructions": "Speak like a pirate."}],
    ids=json.dumps,
)
async def test_every_value_the_published_request_allows_works_through_the_official_client(
    client: AppClient, fields: dict[str, Any]
) -> None:
    request = {"model": "tts-1", "voice": "alloy", "input": "Hello there.", **fields}
    response = await openai_client(client).audio.speech.create(**request)
    assert response.response.status_code == 200
    assert len(response.content) > 100
    assert response.response.headers["x-model"] == "piper-joe"


async def test_instructions_the_model_cannot_follow_are_ignored_with_a_header_by_default(client: AppClient) -> None:
    response = await client.post("/v1/audio/speech", json=speech(model="gpt-4o-mini-tts", instructions="Be calm."))
    assert response.status_code == 200
    assert response.headers["x-ignored-fields"] == "instructions"


async def test_instructions_are_refused_when_the_server_is_set_to_refuse(
    make_client: ClientFactory, tmp_path: Any
) -> None:
    async with make_client(Settings(data_dir=tmp_path / "data", unsupported_instructions="refuse")) as client:
        response = await client.post("/v1/audio/speech", json=speech(instructions="Be calm."))
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "instructions"
        assert client.loader.state("piper-joe") is SlotState.UNLOADED


async def test_server_sent_events_match_the_published_event_schema_and_count_usage(client: AppClient) -> None:
    text = "Hello there. This is a test."
    response = await client.post(
        "/v1/audio/speech", json=speech(input=text, stream_format="sse", response_format="pcm")
    )
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    for event in events:
        validate("CreateSpeechResponseStreamEvent", event)
    pcm = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    usage = events[-1]["usage"]
    # the 24 kHz pcm stream resamples the engine's 22.05 kHz audio, so its length may differ by a few samples
    assert abs(usage["output_tokens"] - len(pcm) / 2 / 24000 * AUDIO_FRAMES_PER_SECOND) <= 1
    assert usage["input_tokens"] == len(text)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_model_list_and_model_match_the_published_schemas(client: AppClient) -> None:
    listed = (await client.get("/v1/models")).json()
    validate("ListModelsResponse", listed)
    for entry in listed["data"]:
        validate("Model", (await client.get(f"/v1/models/{entry['id']}")).json())


@pytest.mark.skipif(reference() is None, reason=f"no OpenAI reference document ({REFERENCE_ENV})")
async def test_every_error_matches_the_published_error_response(make_client: ClientFactory, tmp_path: Any) -> None:
    async with make_client(Settings(data_dir=tmp_path / "data", api_keys=("secret",))) as client:
        key = {"Authorization": "Bearer secret"}
        answers = [
            await client.post("/v1/audio/speech", json=speech()),
            await client.post("/v1/audio/speech", json=speech(model="nope"), headers=key),
            await client.post("/v1/audio/speech", json={"input": "hi"}, headers=key),
            await client.post("/v1/audio/speech", content=b"{not json", headers=key),
            await client.post("/v1/audio/speech", json=speech(speed=9), headers=key),
            await client.get("/v1/models/nope", headers=key),
            await client.get("/v1/no-such-route", headers=key),
            await client.delete("/v1/models", headers=key),
            await client.post("/v1/voices", headers=key),
        ]
        assert sorted({answer.status_code for answer in answers}) == [400, 401, 404, 405]
        for answer in answers:
            validate("ErrorResponse", answer.json())


async def test_model_aliases_setting_maps_published_names_to_any_model(
    make_client: ClientFactory, tmp_path: Any
) -> None:
    settings = Settings(data_dir=tmp_path / "data", model_aliases=("gpt-4o-mini-tts=tone", "narrator=tone"))
    async with make_client(settings, (tone_model(),)) as client:
        aliased = await client.post("/v1/audio/speech", json=speech(model="gpt-4o-mini-tts", response_format="wav"))
        own = await client.post("/v1/audio/speech", json=speech(model="narrator", response_format="wav"))
        plain = await client.post("/v1/audio/speech", json=speech(model="tts-1", response_format="wav"))
        assert aliased.headers["x-model"] == own.headers["x-model"] == "tone"
        assert plain.headers["x-model"] == "piper-joe"
        card = await openai_client(client).models.retrieve("gpt-4o-mini-tts")
        assert card.owned_by == "alias:tone"

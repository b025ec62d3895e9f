"""OpenAI's custom voices and voice consents over HTTP, with the official `openai` client: in-process for the
routes' behaviour (answers checked against OpenAI's published schemas and parsed by the package's own models), and
once end to end against a real server whose Step-Audio-EditX stand-in clones a custom voice."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import soundfile
from openai.types.audio import Voice, VoiceConsent, VoiceConsentDeleted, VoiceDeleted

from service.lazy_loader import ModelPolicy
from service.models.catalog import ModelSpec
from service.settings import Settings
from tests.conftest import WITHOUT_SPARES, AppClient, ClientFactory, ServerProcess
from tests.support.audio import RATE, wav_bytes
from tests.support.disks import small_disk
from tests.support.openai_reference import reference, validate
from tests.support.step_audio_standin import StandIn, write_standin

pytestmark = [pytest.mark.anyio, pytest.mark.in_process]

StartServer = Callable[..., ServerProcess]
MISSING_CONSENT = "cons_" + "0" * 32
MISSING_VOICE = "voice_" + "0" * 32


def official(client: AppClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client, max_retries=0)


def conforms(schema: str, body: Any) -> None:
    """`body` checked against the schema of OpenAI's reference document, where it is on this machine
    (OPENAI_REFERENCE, which `make test` sets)."""
    if reference() is not None:
        validate(schema, body)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI-shaped error of a response, checked against the reference's ErrorResponse."""
    body = response.json()
    conforms("ErrorResponse", body)
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["type"] == ("invalid_request_error" if response.status_code < 500 else "server_error")
    return error


def checked_voice(body: dict[str, Any]) -> Voice:
    """A Voice object as the package reads it, and as the reference has it but for `type`, which the package has
    and the reference's VoiceResource (additionalProperties: false) lacks."""
    assert body["type"] == "audio_sample"
    conforms("VoiceResource", {key: value for key, value in body.items() if key != "type"})
    return Voice.model_validate(body)


def checked_consent(body: dict[str, Any]) -> VoiceConsent:
    conforms("VoiceConsentResource", body)
    return VoiceConsent.model_validate(body)


async def create_consent(client: AppClient, name: str = "Jo Doe", language: str = "en-US") -> dict[str, Any]:
    response = await client.post(
        "/v1/audio/voice_consents",
        data={"name": name, "language": language},
        files={"recording": ("consent.wav", wav_bytes(1.0), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def create_voice(client: AppClient, consent: str | None, **fields: str) -> httpx.Response:
    data = {"name": "My voice", **fields} | ({"consent": consent} if consent is not None else {})
    return await client.post(
        "/v1/audio/voices", data=data, files={"audio_sample": ("sample.wav", wav_bytes(1.5), "audio/wav")}
    )


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []


async def test_the_official_client_manages_consents_and_custom_voices(client: AppClient) -> None:
    openai_client = official(client)
    consent = await openai_client.audio.voice_consents.create(
        recording=("consent.wav", wav_bytes(1.0), "audio/wav"), name="Jo Doe", language="en-US"
    )
    assert consent.id.startswith("cons_")
    assert (consent.object, consent.name, consent.language) == ("audio.voice_consent", "Jo Doe", "en-US")
    retrieved = await client.get(f"/v1/audio/voice_consents/{consent.id}")
    assert checked_consent(retrieved.json()) == consent
    renamed = await openai_client.audio.voice_consents.update(consent.id, name="Jo Bloggs")
    assert renamed == consent.model_copy(update={"name": "Jo Bloggs"})
    assert await openai_client.audio.voice_consents.retrieve(consent.id) == renamed

    voice = await openai_client.audio.voices.create(
        audio_sample=("sample.wav", wav_bytes(1.5), "audio/wav"),
        consent=consent.id,
        name="Jo's narration",
        extra_body={"transcript": "What the sample says."},
    )
    assert voice.id.startswith("voice_")
    assert (voice.object, voice.name, voice.type) == ("audio.voice", "Jo's narration", "audio_sample")
    assert voice.created_at >= consent.created_at
    assert checked_voice((await client.get(f"/v1/audio/voices/{voice.id}")).json()) == voice
    listed = (await client.get("/v1/audio/voices")).json()
    assert [checked_voice(entry) for entry in listed["data"]] == [voice]
    assert (listed["first_id"], listed["last_id"], listed["has_more"]) == (voice.id, voice.id, False)

    with pytest.raises(openai.ConflictError) as in_use:
        await openai_client.audio.voice_consents.delete(consent.id)
    assert in_use.value.body is not None
    assert voice.id in str(in_use.value)

    deleted = await openai_client.audio.voices.delete(voice.id)
    assert deleted == VoiceDeleted(id=voice.id, deleted=True, object="audio.voice.deleted")
    with pytest.raises(openai.NotFoundError):
        await openai_client.audio.voices.delete(voice.id)
    assert await openai_client.audio.voice_consents.retrieve(consent.id) == renamed
    raw = await client.delete(f"/v1/audio/voice_consents/{consent.id}")
    conforms("VoiceConsentDeletedResource", raw.json())
    assert VoiceConsentDeleted.model_validate(raw.json()) == VoiceConsentDeleted(
        id=consent.id, deleted=True, object="audio.voice_consent"
    )
    with pytest.raises(openai.NotFoundError):
        await openai_client.audio.voice_consents.retrieve(consent.id)


async def test_consents_are_listed_newest_first_in_pages_that_follow_after(client: AppClient) -> None:
    made = [(await create_consent(client, f"Speaker {index}"))["id"] for index in range(5)]
    newest_first = list(reversed(made))

    first = (await client.get("/v1/audio/voice_consents", params={"limit": 2})).json()
    conforms("VoiceConsentListResource", first)
    assert ([entry["id"] for entry in first["data"]], first["has_more"]) == (newest_first[:2], True)
    assert (first["object"], first["first_id"], first["last_id"]) == ("list", newest_first[0], newest_first[1])
    last = (await client.get("/v1/audio/voice_consents", params={"after": newest_first[3], "limit": 2})).json()
    conforms("VoiceConsentListResource", last)
    assert ([entry["id"] for entry in last["data"]], last["has_more"]) == (newest_first[4:], False)
    empty = (await client.get("/v1/audio/voice_consents", params={"after": newest_first[4]})).json()
    conforms("VoiceConsentListResource", empty)
    assert (empty["data"], empty["first_id"], empty["last_id"], empty["has_more"]) == ([], None, None, False)

    paged = [consent.id async for consent in official(client).audio.voice_consents.list(limit=2)]
    assert paged == newest_first
    everything = (await client.get("/v1/audio/voice_consents")).json()
    assert [entry["id"] for entry in everything["data"]] == newest_first

    for limit in ["0", "101", "ten"]:
        refused = await client.get("/v1/audio/voice_consents", params={"limit": limit})
        assert (refused.status_code, error_of(refused)["param"]) == (400, "limit"), limit
    unknown = await client.get("/v1/audio/voice_consents", params={"after": MISSING_CONSENT})
    assert (unknown.status_code, error_of(unknown)["param"]) == (400, "after")


async def test_custom_voices_are_listed_newest_first_in_pages_and_only_they(client: AppClient) -> None:
    plain = await client.post(
        "/v1/voices",
        data={"name": "plain", "transcript": "Hi."},
        files={"audio": ("clip.wav", wav_bytes(1.0), "audio/wav")},
    )
    assert plain.status_code == 201, plain.text
    consent = (await create_consent(client))["id"]
    made = [(await create_voice(client, consent, name=f"Voice {index}")).json()["id"] for index in range(3)]

    first = (await client.get("/v1/audio/voices", params={"limit": 2})).json()
    assert ([entry["id"] for entry in first["data"]], first["has_more"]) == ([made[2], made[1]], True)
    rest = (await client.get("/v1/audio/voices", params={"after": first["last_id"]})).json()
    assert ([entry["id"] for entry in rest["data"]], rest["has_more"]) == ([made[0]], False)
    assert [checked_voice(entry).name for entry in [*first["data"], *rest["data"]]] == ["Voice 2", "Voice 1", "Voice 0"]
    library_voice = await client.get("/v1/audio/voices/plain")
    assert (library_voice.status_code, error_of(library_voice)["param"]) == (404, "voice_id")
    unknown = await client.get("/v1/audio/voices", params={"after": "plain"})
    assert (unknown.status_code, error_of(unknown)["param"]) == (400, "after")


async def test_designing_a_voice_from_a_prompt_is_a_clear_400(client: AppClient) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await official(client).audio.voices.create(name="Deep", prompt="a deep, calm voice", type="prompt")
    assert refused.value.status_code == 400
    assert refused.value.param == "type"
    assert refused.value.code == "unsupported_value"
    assert "cannot design voices from a text prompt" in refused.value.message


async def test_by_default_a_custom_voice_needs_a_stored_consent(client: AppClient, tmp_path: Path) -> None:
    for consent in [None, "", "  "]:
        missing = await create_voice(client, consent)
        error = error_of(missing)
        assert (missing.status_code, error["param"], error["code"]) == (400, "consent", "consent_required"), consent
    for consent in [MISSING_CONSENT, "cons_1234", "../../voices"]:
        unknown = await create_voice(client, consent)
        error = error_of(unknown)
        assert (unknown.status_code, error["param"], error["code"]) == (404, "consent", "consent_not_found")
    with pytest.raises(openai.BadRequestError) as refused:
        await official(client).audio.voices.create(
            audio_sample=("sample.wav", wav_bytes(1.0), "audio/wav"), consent="", name="No consent"
        )
    assert refused.value.code == "consent_required"
    assert tree(tmp_path / "data" / "voices") == []


async def test_where_consent_is_not_required_it_may_be_left_out_but_must_exist_if_named(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    async with make_client(Settings(data_dir=tmp_path / "data", consent_required=False)) as client:
        created = await create_voice(client, None)
        assert created.status_code == 200, created.text
        voice = checked_voice(created.json())
        assert (await client.get(f"/v1/voices/{voice.id}")).json()["consent"] is None
        unknown = await create_voice(client, MISSING_CONSENT)
        assert (unknown.status_code, error_of(unknown)["param"]) == (404, "consent")


@pytest.mark.parametrize(
    ("route", "data", "files", "param"),
    [
        ("/v1/audio/voice_consents", {"name": "Jo", "language": "en_US"}, "recording", "language"),
        ("/v1/audio/voice_consents", {"name": "Jo", "language": ""}, "recording", "language"),
        ("/v1/audio/voice_consents", {"name": " ", "language": "en"}, "recording", "name"),
        ("/v1/audio/voice_consents", {"language": "en"}, "recording", "name"),
        ("/v1/audio/voice_consents", {"name": "Jo", "language": "en"}, None, "recording"),
        ("/v1/audio/voices", {"name": " ", "consent": "<consent>"}, "audio_sample", "name"),
        ("/v1/audio/voices", {"name": "V", "consent": "<consent>"}, None, "audio_sample"),
        ("/v1/audio/voices", {"name": "V", "consent": "<consent>", "type": "design"}, "audio_sample", "type"),
        (
            "/v1/audio/voices",
            {"name": "V", "consent": "<consent>", "transcript": "x" * 2001},
            "audio_sample",
            "transcript",
        ),
    ],
)
async def test_bad_fields_are_400s_naming_the_field(
    client: AppClient, tmp_path: Path, route: str, data: dict[str, str], files: str | None, param: str
) -> None:
    consent = (await create_consent(client))["id"]
    fields = {key: consent if value == "<consent>" else value for key, value in data.items()}
    upload = {files: ("clip.wav", wav_bytes(1.0), "audio/wav")} if files else {"other": ("x.txt", b"x", "text/plain")}
    response = await client.post(route, data=fields, files=upload)
    assert (response.status_code, error_of(response)["param"]) == (400, param), response.text
    assert tree(tmp_path / "data" / "voices") == []
    assert [entry["id"] for entry in (await client.get("/v1/audio/voice_consents")).json()["data"]] == [consent]


@pytest.mark.parametrize(
    ("field", "route"), [("recording", "/v1/audio/voice_consents"), ("audio_sample", "/v1/audio/voices")]
)
@pytest.mark.parametrize(
    ("audio", "code"),
    [
        pytest.param(b"not audio at all\n" * 20, "invalid_audio", id="not-audio"),
        pytest.param(wav_bytes(0.05), "audio_too_short", id="too-short"),
    ],
)
async def test_recordings_are_decoded_and_checked_like_any_upload(
    client: AppClient, field: str, route: str, audio: bytes, code: str
) -> None:
    consent = (await create_consent(client))["id"]
    response = await client.post(
        route,
        data={"name": "Jo", "language": "en", "consent": consent},
        files={field: ("clip.wav", audio, "audio/wav")},
    )
    error = error_of(response)
    assert (response.status_code, error["param"], error["code"]) == (400, field, code)


async def test_renaming_takes_a_name_and_nothing_else(client: AppClient) -> None:
    consent = (await create_consent(client))["id"]
    for body, param in [({}, "name"), ({"name": "Jo", "language": "de"}, "language"), ({"name": ""}, "name")]:
        refused = await client.post(f"/v1/audio/voice_consents/{consent}", json=body)
        assert (refused.status_code, error_of(refused)["param"]) == (400, param), body
    assert (await client.get(f"/v1/audio/voice_consents/{consent}")).json()["name"] == "Jo Doe"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/audio/voices/{MISSING_VOICE}"),
        ("DELETE", f"/v1/audio/voices/{MISSING_VOICE}"),
        ("GET", "/v1/audio/voices/voice_1234"),
        ("GET", f"/v1/audio/voice_consents/{MISSING_CONSENT}"),
        ("POST", f"/v1/audio/voice_consents/{MISSING_CONSENT}"),
        ("DELETE", f"/v1/audio/voice_consents/{MISSING_CONSENT}"),
        ("DELETE", "/v1/audio/voice_consents/cons_not-hex"),
    ],
)
async def test_unknown_ids_are_openai_s_404(client: AppClient, method: str, path: str) -> None:
    response = await client.request(method, path, json={"name": "Renamed"} if method == "POST" else None)
    assert response.status_code == 404, response.text
    assert error_of(response)["param"] in ("voice_id", "consent_id")


async def test_a_custom_voice_is_a_voice_of_the_library_under_its_id(client: AppClient) -> None:
    consent = (await create_consent(client))["id"]
    voice = checked_voice((await create_voice(client, consent, name="Jo's narration", transcript=" Hi. ")).json())

    entry = (await client.get(f"/v1/voices/{voice.id}")).json()
    assert (entry["name"], entry["label"], entry["transcript"]) == (voice.id, "Jo's narration", "Hi.")
    assert (entry["openai_type"], entry["consent"], entry["preset"]) == ("audio_sample", consent, False)
    assert entry in (await client.get("/v1/voices")).json()["data"]
    audio = await client.get(f"/v1/voices/{voice.id}/audio")
    assert soundfile.info(io.BytesIO(audio.content)).duration == pytest.approx(1.5, abs=0.01)
    page = (await client.get("/voices")).text
    assert voice.id in page
    assert "Jo&#39;s narration" in page

    assert (await client.delete(f"/v1/voices/{voice.id}")).status_code == 200
    assert (await client.get(f"/v1/audio/voices/{voice.id}")).status_code == 404
    assert (await client.get(f"/v1/audio/voice_consents/{consent}")).status_code == 200


async def test_patch_gives_a_voice_its_transcript_and_refuses_what_it_cannot_change(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "narrator.wav").write_bytes(wav_bytes(1.0))
    models = tmp_path / "models.toml"
    models.write_text('[[voices]]\nname = "narrator"\naudio = "narrator.wav"\ntranscript = "Once."\n')
    async with make_client(
        Settings(data_dir=tmp_path / "data", models_config=models, consent_required=False)
    ) as client:
        voice = (await create_voice(client, None)).json()["id"]
        assert (await client.get("/voices")).text.count("No transcript yet") == 1

        patched = await client.patch(f"/v1/voices/{voice}", json={"transcript": " What it says. ", "label": "Mine"})
        assert patched.status_code == 200, patched.text
        assert (patched.json()["transcript"], patched.json()["label"]) == ("What it says.", "Mine")
        assert (await client.get(f"/v1/voices/{voice}")).json() == patched.json()
        assert (await client.get(f"/v1/audio/voices/{voice}")).json()["name"] == "Mine"
        assert "No transcript yet" not in (await client.get("/voices")).text

        for name, body, status, param in [
            (voice, {"transcript": " "}, 400, "transcript"),
            (voice, {"transcrip": "typo"}, 400, "transcrip"),
            (voice, {"transcript": 5}, 400, "transcript"),
            ("narrator", {"transcript": "Twice."}, 409, "voice"),
            ("nobody", {"transcript": "Hi."}, 404, "voice"),
        ]:
            refused = await client.patch(f"/v1/voices/{name}", json=body)
            assert (refused.status_code, error_of(refused)["param"]) == (status, param), (name, body, refused.text)
        assert (await client.get(f"/v1/voices/{voice}")).json() == patched.json()


def standin_model(standin: StandIn) -> ModelSpec:
    options = {
        "project_dir": str(standin.checkout),
        "models_dir": str(standin.models),
        "variant": "bnb",
        "require_cuda": False,
    }
    return ModelSpec.create("sa-standin", "step-audio", options, ModelPolicy(idle_timeout=300))


async def test_cloning_a_custom_voice_without_a_transcript_is_a_400_that_says_how_to_fix_it(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    standin = write_standin(tmp_path / "upstream")
    settings = Settings(
        data_dir=tmp_path / "data", consent_required=False, probe_engines=False, warm_spares=WITHOUT_SPARES
    )
    async with make_client(settings, (standin_model(standin),)) as client:
        voice = (await create_voice(client, None)).json()["id"]
        for named in [voice, {"id": voice}]:
            response = await client.post(
                "/v1/audio/speech", json={"model": "sa-standin", "input": "Say this.", "voice": named}
            )
            error = error_of(response)
            assert (response.status_code, error["param"]) == (400, "voice")
            assert f"voice {voice!r} has no transcript" in error["message"]
            assert f"PATCH /v1/voices/{voice}" in error["message"]
    assert standin.calls() == []


async def test_a_full_disk_refuses_a_consent_with_a_507(make_client: ClientFactory, tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "64k") as data_dir:  # too small for a 2 s recording (96 KB)
        async with make_client(Settings(data_dir=data_dir)) as client:
            response = await client.post(
                "/v1/audio/voice_consents",
                data={"name": "Jo", "language": "en"},
                files={"recording": ("consent.wav", wav_bytes(2.0), "audio/wav")},
            )
            error = error_of(response)
            assert (response.status_code, error["code"]) == (507, "insufficient_storage")
            assert (await client.get("/v1/audio/voice_consents")).json()["data"] == []
        assert tree(data_dir / "consents") == []


# --- end to end: the official client against `python -m service` -------------------------------------------------


@pytest.fixture
def step_audio_server(start_server: StartServer, tmp_path: Path) -> tuple[ServerProcess, StandIn]:
    """The server with Piper's joe and a Step-Audio-EditX stand-in (`sa-standin`), consent required (the
    default)."""
    standin = write_standin(tmp_path / "upstream")
    models = tmp_path / "models.toml"
    models.write_text(
        '[[models]]\nid = "sa-standin"\nengine = "step-audio"\n[models.options]\n'
        f"project_dir = {json.dumps(str(standin.checkout))}\nmodels_dir = {json.dumps(str(standin.models))}\n"
        'variant = "bnb"\nrequire_cuda = false\n'
    )
    return start_server("--models-config", str(models), env={"PROBE_ENGINES": "false"}), standin


def clone_call(standin: StandIn) -> dict[str, Any]:
    (call,) = standin.calls_named("clone")
    standin.forget_calls()
    return call


@pytest.mark.slow
@pytest.mark.real_processes
def test_the_official_client_end_to_end_from_consent_to_cloned_speech(
    step_audio_server: tuple[ServerProcess, StandIn],
) -> None:
    server, standin = step_audio_server
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)

    consents = [
        client.audio.voice_consents.create(
            recording=(f"consent-{index}.wav", wav_bytes(1.0), "audio/wav"), name=f"Speaker {index}", language="en-GB"
        )
        for index in range(3)
    ]
    consent = consents[0]
    assert [listed.id for listed in client.audio.voice_consents.list(limit=2)] == [c.id for c in reversed(consents)]
    first_page = client.audio.voice_consents.list(limit=2)
    assert (len(first_page.data), first_page.has_more) == (2, True)
    assert client.audio.voice_consents.retrieve(consent.id) == consent
    renamed = client.audio.voice_consents.update(consent.id, name="Jo Bloggs")
    assert (renamed.id, renamed.name, renamed.language) == (consent.id, "Jo Bloggs", "en-GB")

    sample = wav_bytes(1.5, 44100, channels=2)
    voice = client.audio.voices.create(
        audio_sample=("sample.wav", sample, "audio/wav"),
        consent=consent.id,
        name="Jo's narration",
        extra_body={"transcript": "This is what the sample says."},
    )
    assert (voice.object, voice.name, voice.type) == ("audio.voice", "Jo's narration", "audio_sample")
    listed = httpx.get(f"{server.base_url}/v1/audio/voices", timeout=30).json()
    assert [Voice.model_validate(entry) for entry in listed["data"]] == [voice]
    retrieved = httpx.get(f"{server.base_url}/v1/audio/voices/{voice.id}", timeout=30).json()
    assert Voice.model_validate(retrieved) == voice
    library = httpx.get(f"{server.base_url}/v1/voices", timeout=30).json()["data"]
    assert [(entry["name"], entry["label"]) for entry in library] == [(voice.id, "Jo's narration")]

    for named in [voice.id, {"id": voice.id}]:
        speech = client.audio.speech.create(model="sa-standin", voice=named, input="Say this.", response_format="wav")
        assert (speech.response.headers["x-mode"], speech.response.headers["x-voice"]) == ("clone", voice.id)
        audio, rate = soundfile.read(io.BytesIO(speech.content))
        assert rate == 24000
        assert len(audio) > 0
        clone = clone_call(standin)
        assert (clone["prompt_text"], clone["target_text"]) == ("This is what the sample says.", "Say this.")
        assert (clone["prompt"]["rate"], clone["prompt"]["channels"]) == (RATE, 1)
        assert clone["prompt"]["seconds"] == pytest.approx(1.5, abs=0.01)

    with pytest.raises(openai.BadRequestError) as piper:
        client.audio.speech.create(model="piper-joe", voice=voice.id, input="Say this.")
    assert (piper.value.status_code, piper.value.param) == (400, "voice")

    untold = client.audio.voices.create(
        audio_sample=("sample.wav", wav_bytes(1.0), "audio/wav"), consent=consents[1].id, name="Untold"
    )
    with pytest.raises(openai.BadRequestError) as no_transcript:
        client.audio.speech.create(model="sa-standin", voice=untold.id, input="Say this.")
    assert no_transcript.value.param == "voice"
    assert f"PATCH /v1/voices/{untold.id}" in no_transcript.value.message
    told = httpx.patch(f"{server.base_url}/v1/voices/{untold.id}", json={"transcript": "Now it is told."}, timeout=30)
    assert told.status_code == 200, told.text
    client.audio.speech.create(model="sa-standin", voice=untold.id, input="Say this.", response_format="wav")
    assert clone_call(standin)["prompt_text"] == "Now it is told."

    with pytest.raises(openai.ConflictError) as in_use:
        client.audio.voice_consents.delete(consent.id)
    assert voice.id in in_use.value.message
    assert client.audio.voices.delete(voice.id) == VoiceDeleted(id=voice.id, deleted=True, object="audio.voice.deleted")
    assert client.audio.voices.delete(untold.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.audio.voices.delete(voice.id)
    assert client.audio.voice_consents.delete(consent.id) == VoiceConsentDeleted(
        id=consent.id, deleted=True, object="audio.voice_consent"
    )
    assert [listed.id for listed in client.audio.voice_consents.list()] == [c.id for c in reversed(consents[1:])]
    assert httpx.get(f"{server.base_url}/v1/voices", timeout=30).json()["data"] == []

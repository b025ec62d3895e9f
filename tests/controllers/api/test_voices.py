"""The voices API over HTTP: upload, list, get, audio, delete; naming rules, conflicts, limits, presets, restarts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile

from service.settings import Settings
from tests.conftest import AppClient, ClientFactory
from tests.support.audio import RATE, tone, wav_bytes
from tests.support.checkouts import CHECKOUTS_ENV, example_voices
from tests.support.disks import small_disk

pytestmark = [pytest.mark.anyio, pytest.mark.in_process]

PUBLIC_FIELDS = {
    *("name", "transcript", "seconds", "sample_rate", "locale", "gender", "description", "preset", "created"),
    *("label", "openai_type", "consent"),
}


def tree(root: Path) -> list[str]:
    """Every path under root, relative, sorted; empty when root does not exist."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []


async def upload(
    client: httpx.AsyncClient,
    name: str,
    audio: bytes | None = None,
    transcript: str = "Hello, this is my voice.",
    **fields: str,
) -> httpx.Response:
    return await client.post(
        "/v1/voices",
        data={"name": name, "transcript": transcript, **fields},
        files={"audio": ("clip.wav", wav_bytes(1.0) if audio is None else audio, "audio/wav")},
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI-shaped error of a response: {"error": {"message", "type", "param", "code"}}."""
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert error["type"] == "invalid_request_error"
    return error


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Where the `client` fixture's app keeps uploaded voices."""
    return tmp_path / "data"


@pytest.mark.skipif(not example_voices(), reason=f"no Step-Audio-EditX checkout with examples ({CHECKOUTS_ENV})")
async def test_every_real_example_clip_becomes_a_voice_at_its_length(client: AppClient) -> None:
    """Upstream's examples: speech at 16, 24, 44.1 and 48 kHz, 16- and 24-bit, with English and Chinese transcripts."""
    for index, example in enumerate(example_voices()):
        name = f"example-{index}"
        created = await upload(client, name, example.read(), transcript=example.transcript)
        assert created.status_code == 201, (example.name, created.text)
        voice = created.json()
        assert voice["transcript"] == example.transcript
        assert voice["sample_rate"] == RATE
        assert voice["seconds"] == pytest.approx(example.seconds, abs=0.01)
        audio = await client.get(f"/v1/voices/{name}/audio")
        stored, rate = soundfile.read(io.BytesIO(audio.content))
        assert (rate, len(stored) / rate) == (RATE, pytest.approx(example.seconds, abs=0.01))


async def test_upload_list_get_audio_delete(client: AppClient, data_dir: Path) -> None:
    created = await upload(
        client,
        "alice",
        wav_bytes(1.5),
        transcript="  Hello, this is Alice.  ",
        locale="en-US",
        gender="female",
        description="warm and clear",
    )
    assert created.status_code == 201, created.text
    voice = created.json()
    assert set(voice) == PUBLIC_FIELDS
    assert str(data_dir) not in created.text
    assert "voice.wav" not in created.text
    assert voice["name"] == "alice"
    assert voice["transcript"] == "Hello, this is Alice."
    assert (voice["locale"], voice["gender"], voice["description"]) == ("en-US", "female", "warm and clear")
    assert (voice["preset"], voice["sample_rate"], voice["seconds"]) == (False, RATE, 1.5)
    assert isinstance(voice["created"], float)

    listed = (await client.get("/v1/voices")).json()
    assert listed["object"] == "list"
    assert [entry for entry in listed["data"] if entry["name"] == "alice"] == [voice]

    one = await client.get("/v1/voices/alice")
    assert one.status_code == 200
    assert one.json() == voice

    audio = await client.get("/v1/voices/alice/audio")
    assert audio.status_code == 200
    assert audio.headers["content-type"].startswith("audio/wav")
    samples, rate = soundfile.read(io.BytesIO(audio.content), dtype="float32")
    assert rate == RATE
    assert samples.ndim == 1
    assert abs(len(samples) / rate - 1.5) <= 0.05

    deleted = await client.delete("/v1/voices/alice")
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": True, "name": "alice"}
    gone = await client.get("/v1/voices/alice")
    assert gone.status_code == 404
    assert error_of(gone)["param"] == "voice"
    assert (await client.get("/v1/voices/alice/audio")).status_code == 404
    assert "alice" not in [entry["name"] for entry in (await client.get("/v1/voices")).json()["data"]]
    assert tree(data_dir / "voices") == []


async def test_optional_fields_may_be_left_out(client: AppClient) -> None:
    created = await upload(client, "plain")
    assert created.status_code == 201, created.text
    assert (created.json()["locale"], created.json()["gender"], created.json()["description"]) == (None, None, None)


async def test_a_voice_survives_a_restart(make_client: ClientFactory, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    async with make_client(settings) as first:
        created = await upload(first, "bob", wav_bytes(0.8))
        assert created.status_code == 201, created.text
    async with make_client(settings) as second:
        listed = (await second.get("/v1/voices")).json()["data"]
        assert [entry for entry in listed if entry["name"] == "bob"] == [created.json()]
        audio = await second.get("/v1/voices/bob/audio")
        assert audio.status_code == 200
        assert abs(soundfile.info(io.BytesIO(audio.content)).duration - 0.8) <= 0.05


async def test_deleting_an_unknown_voice_is_a_404(client: AppClient) -> None:
    assert (await upload(client, "kept")).status_code == 201
    response = await client.delete("/v1/voices/nobody")
    assert response.status_code == 404, response.text
    error = error_of(response)
    assert error["param"] == "voice"
    assert "'nobody'" in error["message"]
    assert "kept" in error["message"]
    assert (await client.get("/v1/voices/kept")).status_code == 200


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 65, "name with space"])
async def test_a_bad_name_is_a_400_and_writes_nothing(client: AppClient, data_dir: Path, name: str) -> None:
    response = await upload(client, name)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == "name"
    assert "not allowed" in error["message"]
    assert tree(data_dir) == []
    assert (await client.get("/v1/voices")).json()["data"] == []


async def test_a_64_character_name_is_accepted(client: AppClient) -> None:
    response = await upload(client, "v" * 64)
    assert response.status_code == 201, response.text


async def test_a_duplicate_name_is_a_409_and_keeps_the_first(client: AppClient, data_dir: Path) -> None:
    first = await upload(client, "carol", wav_bytes(1.0), transcript="The first one.")
    assert first.status_code == 201
    second = await upload(client, "carol", wav_bytes(2.0), transcript="The second one.")
    assert second.status_code == 409, second.text
    assert error_of(second)["param"] == "name"
    assert "carol" in error_of(second)["message"]
    assert tree(data_dir / "voices") == ["carol", "carol/voice.json", "carol/voice.wav"]
    assert (await client.get("/v1/voices/carol")).json() == first.json()


@pytest.mark.parametrize("transcript", ["", "   \t\n "])
async def test_an_empty_transcript_is_a_400(client: AppClient, data_dir: Path, transcript: str) -> None:
    response = await upload(client, "dave", transcript=transcript)
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == "transcript"
    assert tree(data_dir) == []


async def test_a_file_over_the_upload_limit_is_a_413(make_client: ClientFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with make_client(Settings(data_dir=data_dir, max_upload_bytes=50_000)) as client:
        audio = wav_bytes(1.7)  # ~80 KB: over the file limit, under the request body limit (limit + 64 KiB)
        assert 50_000 < len(audio) < 50_000 + 64 * 1024 - 1000
        response = await upload(client, "big", audio)
        assert response.status_code == 413, response.text
        error = error_of(response)
        assert (error["param"], error["code"]) == ("audio", "audio_too_large")
        assert tree(data_dir) == []


async def test_a_body_over_the_request_limit_is_refused_in_the_error_shape(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    async with make_client(Settings(data_dir=data_dir, max_upload_bytes=50_000)) as client:
        audio = wav_bytes(4.2)  # ~200 KB: over the request body limit, refused by the framework
        assert len(audio) > 50_000 + 64 * 1024
        response = await upload(client, "huge", audio)
        assert 400 <= response.status_code < 500, response.text
        assert response.status_code == 413
        error_of(response)
        assert tree(data_dir) == []
        assert (await client.get("/v1/voices")).status_code == 200


async def test_a_full_disk_is_a_507_naming_it_and_stores_nothing(make_client: ClientFactory, tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "256k") as data_dir:  # room for a 1 s clip, not for a 10 s one (480 KB)
        async with make_client(Settings(data_dir=data_dir)) as client:
            assert (await upload(client, "kept", wav_bytes(1.0))).status_code == 201
            before = tree(data_dir / "voices")
            response = await upload(client, "large", wav_bytes(10.0))
            assert response.status_code == 507, response.text
            assert response.json() == {
                "error": {
                    "message": "the voice library's disk is full (No space left on device); 'large' was not stored",
                    "type": "server_error",
                    "param": None,
                    "code": "insufficient_storage",
                }
            }
            assert tree(data_dir / "voices") == before == ["kept", "kept/voice.json", "kept/voice.wav"]
            assert [voice["name"] for voice in (await client.get("/v1/voices")).json()["data"]] == ["kept"]


async def test_a_file_that_is_not_audio_is_a_400(client: AppClient, data_dir: Path) -> None:
    response = await upload(client, "text", b"just some text, certainly not a WAV file\n" * 50)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == ("audio", "invalid_audio")
    assert error["message"].startswith("audio is not audio this server can read (wav, flac, ogg, opus, mp3, aac")
    assert tree(data_dir) == []


async def test_audio_longer_than_the_limit_is_a_400(make_client: ClientFactory, tmp_path: Path) -> None:
    async with make_client(Settings(data_dir=tmp_path / "data", max_audio_seconds=1)) as client:
        response = await upload(client, "long", wav_bytes(2.0))
        assert response.status_code == 400, response.text
        assert (error_of(response)["param"], error_of(response)["code"]) == ("audio", "audio_too_long")
        assert tree(tmp_path / "data") == []


async def test_audio_too_short_is_a_400(client: AppClient, data_dir: Path) -> None:
    response = await upload(client, "short", wav_bytes(0.05))
    assert response.status_code == 400, response.text
    assert (error_of(response)["param"], error_of(response)["code"]) == ("audio", "audio_too_short")
    assert tree(data_dir) == []


async def test_a_missing_audio_file_is_a_400(client: AppClient) -> None:
    response = await client.post("/v1/voices", data={"name": "noaudio", "transcript": "Hi."})
    assert response.status_code == 400, response.text
    error_of(response)


async def test_stereo_44k_is_stored_as_mono_24k(client: AppClient, data_dir: Path) -> None:
    created = await upload(client, "stereo", wav_bytes(1.0, 44100, channels=2))
    assert created.status_code == 201, created.text
    assert created.json()["sample_rate"] == RATE
    assert abs(created.json()["seconds"] - 1.0) <= 0.05
    for source in [
        io.BytesIO((await client.get("/v1/voices/stereo/audio")).content),
        data_dir / "voices/stereo/voice.wav",
    ]:
        info = soundfile.info(source)
        assert (info.samplerate, info.channels) == (RATE, 1)
        assert abs(info.duration - 1.0) <= 0.05


# --- presets ----------------------------------------------------------------------------------------------------


def preset_settings(tmp_path: Path) -> Settings:
    """A models file with one [[voices]] preset whose clip (16 kHz, 1.25 s) lies beside it, named relatively."""
    folder = tmp_path / "config"
    (folder / "clips").mkdir(parents=True)
    soundfile.write(folder / "clips" / "narrator.wav", tone(1.25, 16000), 16000, subtype="PCM_16")
    models = folder / "models.toml"
    models.write_text(
        """
[[voices]]
name = "narrator"
audio = "clips/narrator.wav"
transcript = "Once upon a time."
locale = "en-GB"
gender = "male"
description = "a calm storyteller"
""",
        encoding="utf-8",
    )
    return Settings(models_config=models, data_dir=tmp_path / "data")


async def test_a_preset_is_listed_served_and_read_only(make_client: ClientFactory, tmp_path: Path) -> None:
    async with make_client(preset_settings(tmp_path)) as client:
        listed = (await client.get("/v1/voices")).json()["data"]
        [preset] = [entry for entry in listed if entry["name"] == "narrator"]
        assert set(preset) == PUBLIC_FIELDS
        assert str(tmp_path) not in str(preset)
        assert preset["preset"] is True
        assert (preset["transcript"], preset["locale"], preset["gender"]) == ("Once upon a time.", "en-GB", "male")
        assert preset["seconds"] == 1.25
        assert (await client.get("/v1/voices/narrator")).json() == preset

        audio = await client.get("/v1/voices/narrator/audio")
        assert audio.status_code == 200
        assert abs(soundfile.info(io.BytesIO(audio.content)).duration - 1.25) <= 0.05

        refused = await client.delete("/v1/voices/narrator")
        assert refused.status_code == 409, refused.text
        assert "preset" in error_of(refused)["message"]

        clash = await upload(client, "narrator")
        assert clash.status_code == 409, clash.text
        assert error_of(clash)["param"] == "name"

        assert (await client.get("/v1/voices/narrator")).status_code == 200
        assert (tmp_path / "config" / "clips" / "narrator.wav").exists()
        assert tree(tmp_path / "data") == []


async def test_an_uploaded_voice_shadowed_by_a_new_preset_is_listed_once(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A voice uploaded before the operator configured a preset of the same name: one name, one entry."""
    settings = preset_settings(tmp_path)
    async with make_client(Settings(data_dir=settings.data_dir)) as before:
        assert (await upload(before, "narrator")).status_code == 201
    async with make_client(settings) as client:
        names = [entry["name"] for entry in (await client.get("/v1/voices")).json()["data"]]
    assert names.count("narrator") == 1, names


async def test_a_flac_preset_is_served_as_wav(make_client: ClientFactory, tmp_path: Path) -> None:
    """GET .../audio promises WAV (its media type and docstring say so) whatever format the preset file has."""
    soundfile.write(tmp_path / "storyteller.flac", tone(1.0, 22050), 22050, format="FLAC")
    models = tmp_path / "models.toml"
    models.write_text(
        '[[voices]]\nname = "storyteller"\naudio = "storyteller.flac"\ntranscript = "Long ago."\n', encoding="utf-8"
    )
    async with make_client(Settings(models_config=models, data_dir=tmp_path / "data")) as client:
        audio = await client.get("/v1/voices/storyteller/audio")
    assert audio.status_code == 200
    assert audio.headers["content-type"].startswith("audio/wav")
    info = soundfile.info(io.BytesIO(audio.content))
    assert info.format == "WAV", f"audio/wav response holds {info.format} data"
    assert abs(info.duration - 1.0) <= 0.05

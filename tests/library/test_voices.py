"""The voice library and client audio, without the API: atomic writes, naming rules, custom voices (OpenAI's) and
changes to voices, presets from the models file, decoding limits, base64 and URL fetching (from a loopback server
only)."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from litestar import Litestar, Request, Response, get
from litestar.params import FromPath

from service.audio.decode import AudioDecoder
from service.controllers.errors import as_api_error
from service.engines.base import AudioClip
from service.errors import InvalidRequest, ServiceError
from service.library import voices as library_voices
from service.library.voices import (
    CUSTOM_VOICE_ID,
    MAX_LABEL_CHARS,
    MAX_TRANSCRIPT_CHARS,
    Authorisation,
    UnknownVoice,
    Voice,
    VoiceConflict,
    VoiceError,
    VoiceLibrary,
    VoiceStorageFull,
    page_after,
)
from service.models.config import ModelConfigError, load_voice_presets
from tests.conftest import serve
from tests.support.audio import RATE, tone, wav_bytes
from tests.support.disks import small_disk


def clip(seconds: float = 1.0) -> AudioClip:
    return AudioClip(tone(seconds), RATE)


def decoder(max_seconds: float = 30, max_bytes: int = 1 << 20, url_prefixes: tuple[str, ...] = ()) -> AudioDecoder:
    return AudioDecoder(RATE, max_seconds=max_seconds, max_bytes=max_bytes, url_prefixes=url_prefixes)


def tree(root: Path) -> list[str]:
    """Every path under root, relative, sorted; empty when root does not exist."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []


# --- VoiceLibrary -----------------------------------------------------------------------------------------------


def test_add_writes_the_folder_atomically_and_reads_back(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    voice = library.add("alice", clip(1.5), "  Hello there.  ", locale="en-US", gender="female", description="warm")

    assert tree(tmp_path / "voices") == ["alice", "alice/voice.json", "alice/voice.wav"]
    assert voice.transcript == "Hello there."
    assert (voice.seconds, voice.sample_rate, voice.preset) == (1.5, RATE, False)
    meta = json.loads((tmp_path / "voices" / "alice" / "voice.json").read_text(encoding="utf-8"))
    assert "audio_path" not in meta
    assert meta["name"] == "alice"
    info = soundfile.info(str(tmp_path / "voices" / "alice" / "voice.wav"))
    assert (info.samplerate, info.channels, info.frames) == (RATE, 1, round(1.5 * RATE))

    again = VoiceLibrary(tmp_path, []).get("alice")
    assert again == voice
    stored, audio = library.clip("alice")
    assert stored.name == "alice"
    assert audio.sample_rate == RATE
    assert abs(audio.seconds - 1.5) < 1e-6


def test_public_fields_leave_out_the_file(tmp_path: Path) -> None:
    voice = VoiceLibrary(tmp_path, []).add("bob", clip(), "Hi.")
    public = voice.public()
    assert "audio_path" not in public
    assert str(tmp_path) not in json.dumps(public)
    assert set(public) == {
        "name",
        "transcript",
        "seconds",
        "sample_rate",
        "locale",
        "gender",
        "description",
        "preset",
        "created",
        "label",
        "openai_type",
        "consent",
    }


def test_add_refuses_bad_input_before_writing_anything(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    for name in ["../x", "a/b", "", ".hidden", "x" * 65, "name with space"]:
        with pytest.raises(VoiceError) as refused:
            library.add(name, clip(), "Hello.")
        assert (as_api_error(refused.value).status, refused.value.param) == (400, "name"), name
        assert "not allowed" in str(refused.value)
    for transcript in ["", "   \n"]:
        with pytest.raises(VoiceError) as blank:
            library.add("fine", clip(), transcript)
        assert (as_api_error(blank.value).status, blank.value.param) == (400, "transcript")
    with pytest.raises(VoiceError) as long:
        library.add("fine", clip(), "x" * (MAX_TRANSCRIPT_CHARS + 1))
    assert (as_api_error(long.value).status, long.value.param) == (400, "transcript")
    assert tree(tmp_path) == []


def test_a_64_character_name_is_allowed(tmp_path: Path) -> None:
    name = "a" * 64
    assert VoiceLibrary(tmp_path, []).add(name, clip(), "Hi.").name == name


def test_duplicate_names_conflict_and_leave_the_first_intact(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    first = library.add("carol", clip(1.0), "One.")
    with pytest.raises(VoiceConflict) as conflict:
        library.add("carol", clip(2.0), "Two.")
    assert as_api_error(conflict.value).status == 409
    assert tree(tmp_path / "voices") == ["carol", "carol/voice.json", "carol/voice.wav"]
    assert library.get("carol") == first


def test_all_ignores_dot_folders_and_folders_without_metadata(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    library.add("dave", clip(), "Hi.")
    staging = tmp_path / "voices" / ".erin-abc123"
    staging.mkdir()
    (staging / "voice.json").write_text(
        (tmp_path / "voices" / "dave" / "voice.json").read_text(encoding="utf-8").replace("dave", "erin"),
        encoding="utf-8",
    )
    (tmp_path / "voices" / "empty").mkdir()
    (tmp_path / "voices" / "broken").mkdir()
    (tmp_path / "voices" / "broken" / "voice.json").write_text("{not json", encoding="utf-8")
    assert library.names() == ["dave"]


def test_all_skips_metadata_of_the_wrong_shape(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    library.add("dave", clip(), "Hi.")
    meta = json.loads((tmp_path / "voices" / "dave" / "voice.json").read_text(encoding="utf-8"))
    newer = json.dumps(meta | {"name": "newer", "from_a_newer_version": 1})
    for folder, text in [("partial", '{"name": "partial"}'), ("newer", newer), ("list", "[]")]:
        (tmp_path / "voices" / folder).mkdir()
        (tmp_path / "voices" / folder / "voice.json").write_text(text, encoding="utf-8")
    assert set(library.names()) - {"newer"} == {"dave"}  # extra keys may be skipped or ignored, never a crash


def test_concurrent_adds_of_one_name_give_one_voice_and_one_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both adds pass the existence check before either renames its staging folder into place."""
    library = VoiceLibrary(tmp_path, [])
    both_checked = threading.Barrier(2)
    write = soundfile.write

    def write_when_both_checked(*args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # an add that serialises never gets both here
            both_checked.wait(timeout=5)
        write(*args, **kwargs)

    monkeypatch.setattr(soundfile, "write", write_when_both_checked)

    def attempt_add() -> Voice | Exception:
        try:
            return library.add("twin", clip(), "Hi.")
        except Exception as error:  # the outcome is what the test inspects
            return error

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: attempt_add(), range(2)))
    kinds = sorted(type(outcome).__name__ for outcome in outcomes)
    assert kinds == ["Voice", "VoiceConflict"], outcomes
    assert tree(tmp_path / "voices") == ["twin", "twin/voice.json", "twin/voice.wav"]


def test_a_full_disk_refuses_the_voice_and_leaves_the_library_as_it_was(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "128k") as data_dir:  # room for a 1 s clip (48 KB), not for a 5 s one
        library = VoiceLibrary(data_dir, [])
        kept = library.add("kept", clip(1.0), "Hi.")
        before = tree(data_dir)
        with pytest.raises(VoiceStorageFull) as full:
            library.add("large", clip(5.0), "This one does not fit.")
        answer = as_api_error(full.value)
        assert (answer.status, answer.code, answer.param) == (507, "insufficient_storage", None)
        assert str(full.value) == "the voice library's disk is full (No space left on device); 'large' was not stored"
        assert tree(data_dir) == before == ["voices", "voices/kept", "voices/kept/voice.json", "voices/kept/voice.wav"]
        assert library.all() == [kept]


def test_staging_folders_left_by_an_interrupted_add_are_swept_at_start_up(tmp_path: Path) -> None:
    VoiceLibrary(tmp_path, []).add("kept", clip(), "Hi.")
    leftover = tmp_path / "voices" / ".lost-x1y2z3w4"
    leftover.mkdir()
    (leftover / "voice.wav").write_bytes(b"RIFF, cut short by a full disk or a crash")
    VoiceLibrary(tmp_path, [])
    assert tree(tmp_path / "voices") == ["kept", "kept/voice.json", "kept/voice.wav"]


def test_get_of_an_invalid_name_is_a_400_and_of_a_missing_one_a_404(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    library.add("frank", clip(), "Hi.")
    for name in ["../frank", ".hidden", "a/b", ""]:
        with pytest.raises(VoiceError) as invalid:
            library.get(name)
        assert as_api_error(invalid.value).status == 400, name
        assert not isinstance(invalid.value, UnknownVoice), name
    with pytest.raises(UnknownVoice) as missing:
        library.get("nobody")
    assert as_api_error(missing.value).status == 404
    assert "frank" in str(missing.value)


def test_delete_removes_the_folder_and_presets_are_read_only(tmp_path: Path) -> None:
    preset_wav = tmp_path / "preset.wav"
    soundfile.write(preset_wav, tone(1.0), RATE)
    preset = Voice("narrator", "Once upon a time.", preset_wav, 1.0, RATE, preset=True)
    library = VoiceLibrary(tmp_path / "data", [preset])
    library.add("gina", clip(), "Hi.")
    assert library.names() == ["gina", "narrator"]

    assert library.delete("gina").name == "gina"
    assert tree(tmp_path / "data" / "voices") == []
    with pytest.raises(UnknownVoice):
        library.delete("gina")
    with pytest.raises(VoiceConflict):
        library.delete("narrator")
    with pytest.raises(VoiceConflict):
        library.add("narrator", clip(), "Hi.")
    assert preset_wav.exists()
    assert library.get("narrator") is preset


def test_concurrent_deletes_of_one_voice_give_one_deletion_and_one_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both deletes find the voice before either removes its folder."""
    library = VoiceLibrary(tmp_path, [])
    library.add("twin", clip(), "Hi.")
    both_found = threading.Barrier(2)
    remove = library_voices.remove_folder

    def remove_when_both_found(root: Path, name: str) -> bool:
        both_found.wait(timeout=5)
        return remove(root, name)

    monkeypatch.setattr(library_voices, "remove_folder", remove_when_both_found)

    def attempt_delete() -> Voice | Exception:
        try:
            return library.delete("twin")
        except Exception as error:  # the outcome is what the test inspects
            return error

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: attempt_delete(), range(2)))
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["UnknownVoice", "Voice"], outcomes
    assert tree(tmp_path / "voices") == []


# --- custom voices (OpenAI's /v1/audio/voices) ------------------------------------------------------------------


def authorisation(consent: str = "cons_" + "a" * 32) -> Authorisation:
    return Authorisation(consent, {"consent.json": b'{"name": "Jo"}', "consent.wav": b"RIFF consent"})


def test_a_custom_voice_gets_an_id_keeps_its_label_and_the_consent_s_record(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    voice = library.add_custom(clip(1.5), "  My narrator  ", "  Hello there.  ", authorisation())

    assert CUSTOM_VOICE_ID.fullmatch(voice.name)
    assert library_voices.VOICE_NAME.fullmatch(voice.name)
    assert (voice.label, voice.transcript, voice.openai_type, voice.consent) == (
        "My narrator",
        "Hello there.",
        "audio_sample",
        "cons_" + "a" * 32,
    )
    folder = tmp_path / "voices" / voice.name
    assert tree(folder) == ["consent.json", "consent.wav", "voice.json", "voice.wav"]
    assert (folder / "consent.wav").read_bytes() == b"RIFF consent"
    meta = json.loads((folder / "voice.json").read_text(encoding="utf-8"))
    assert (meta["label"], meta["openai_type"], meta["consent"]) == ("My narrator", "audio_sample", "cons_" + "a" * 32)
    assert VoiceLibrary(tmp_path, []).get(voice.name) == voice
    assert library.get_custom(voice.name) == voice
    assert library.authorised_by("cons_" + "a" * 32) == [voice.name]


def test_a_custom_voice_may_lack_a_transcript_until_it_is_given_one(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    voice = library.add_custom(clip(), "Untold", "   ", None)
    assert (voice.transcript, voice.consent) == ("", None)
    assert tree(tmp_path / "voices" / voice.name) == ["voice.json", "voice.wav"]

    with pytest.raises(VoiceError) as untold:
        library.clip(voice.name)
    assert (as_api_error(untold.value).status, untold.value.param) == (400, "voice")
    assert str(untold.value) == (
        f"voice {voice.name!r} has no transcript, and cloning needs what its clip says: give it one with "
        f'PATCH /v1/voices/{voice.name} and the JSON {{"transcript": "<what the clip says>"}}'
    )

    told = library.update(voice.name, transcript="  What the clip says. ")
    assert told == VoiceLibrary(tmp_path, []).get(voice.name)
    assert told.transcript == "What the clip says."
    stored, audio = library.clip(voice.name)
    assert stored == told
    assert abs(audio.seconds - 1.0) < 1e-6


def test_a_custom_voice_needs_a_name_of_sensible_length(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    for label in ["", "  \n", "x" * (MAX_LABEL_CHARS + 1)]:
        with pytest.raises(InvalidRequest) as refused:
            library.add_custom(clip(), label, "Hi.", None)
        assert (as_api_error(refused.value).status, refused.value.param) == (400, "name")
    with pytest.raises(VoiceError) as long:
        library.add_custom(clip(), "Fine", "x" * (MAX_TRANSCRIPT_CHARS + 1), None)
    assert long.value.param == "transcript"
    assert tree(tmp_path) == []


def test_custom_voices_are_listed_newest_first_and_apart_from_the_library_s_own(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    library.add("plain", clip(), "Hi.")
    made = [library.add_custom(clip(), f"voice {index}", "Hi.", None) for index in range(3)]

    assert [voice.name for voice in library.custom()] == [voice.name for voice in reversed(made)]
    assert sorted(library.names()) == sorted(["plain", *(voice.name for voice in made)])
    for name in ["plain", "voice_" + "0" * 32, "../plain", ""]:
        with pytest.raises(UnknownVoice) as unknown:
            library.get_custom(name)
        assert (as_api_error(unknown.value).status, unknown.value.param) == (404, "voice_id")
    with pytest.raises(UnknownVoice):
        library.delete_custom("plain")
    assert library.get("plain").name == "plain"

    assert library.delete_custom(made[1].name) == made[1]
    assert [voice.name for voice in library.custom()] == [made[2].name, made[0].name]
    with pytest.raises(UnknownVoice):
        library.delete_custom(made[1].name)


def test_pages_follow_the_item_named_by_after_and_an_unknown_after_is_a_400() -> None:
    items = ["e", "d", "c", "b", "a"]
    first = page_after(items, str, None, 2)
    second = page_after(items, str, first.items[-1], 2)
    last = page_after(items, str, second.items[-1], 2)
    assert [(page.items, page.has_more) for page in (first, second, last)] == [
        (["e", "d"], True),
        (["c", "b"], True),
        (["a"], False),
    ]
    assert page_after(items, str, "a", 2).items == []
    assert page_after(items, str, None, 5).has_more is False
    with pytest.raises(InvalidRequest) as unknown:
        page_after(items, str, "z", 2)
    assert (as_api_error(unknown.value).status, unknown.value.param) == (400, "after")


# --- changing a voice -------------------------------------------------------------------------------------------


def test_update_changes_the_given_fields_only_and_keeps_the_rest(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path, [])
    voice = library.add("hana", clip(), "Hi.", locale="ja-JP", description="soft")

    labelled = library.update("hana", label="  Hana  ")
    assert labelled == replace(voice, label="Hana")
    described = library.update("hana", description="  ")
    assert (described.description, described.label, described.transcript) == (None, "Hana", "Hi.")
    assert VoiceLibrary(tmp_path, []).get("hana") == described
    assert tree(tmp_path / "voices") == ["hana", "hana/voice.json", "hana/voice.wav"]


def test_update_refuses_bad_values_presets_and_unknown_voices(tmp_path: Path) -> None:
    preset_wav = tmp_path / "preset.wav"
    soundfile.write(preset_wav, tone(1.0), RATE)
    library = VoiceLibrary(tmp_path / "data", [Voice("narrator", "Once.", preset_wav, 1.0, RATE, preset=True)])
    kept = library.add("ivan", clip(), "Hi.")
    for changes, param in [
        ({"transcript": " "}, "transcript"),
        ({"transcript": "x" * (MAX_TRANSCRIPT_CHARS + 1)}, "transcript"),
        ({"label": ""}, "label"),
    ]:
        with pytest.raises(ServiceError) as refused:
            library.update("ivan", **changes)
        assert (as_api_error(refused.value).status, refused.value.param) == (400, param)
    with pytest.raises(VoiceConflict) as preset:
        library.update("narrator", transcript="Twice.")
    assert as_api_error(preset.value).status == 409
    with pytest.raises(UnknownVoice):
        library.update("nobody", transcript="Hi.")
    assert library.get("ivan") == kept


def test_concurrent_updates_of_different_fields_both_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without one update at a time, both would read the voice before either writes, and the second write would
    undo the first."""
    library = VoiceLibrary(tmp_path, [])
    library.add("jo", clip(), "Hi.")
    both_read = threading.Barrier(2)
    replace_file = library_voices.replace_file

    def replace_when_both_read(path: Path, data: bytes) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # updates one at a time never get both here
            both_read.wait(timeout=1)
        replace_file(path, data)

    monkeypatch.setattr(library_voices, "replace_file", replace_when_both_read)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda changes: library.update("jo", **changes), [{"label": "Jo"}, {"description": "warm"}]))
    voice = VoiceLibrary(tmp_path, []).get("jo")
    assert (voice.label, voice.description) == ("Jo", "warm")


def test_an_update_racing_a_delete_is_a_404_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library = VoiceLibrary(tmp_path, [])
    library.add("kim", clip(), "Hi.")
    replace_file = library_voices.replace_file

    def delete_first(path: Path, data: bytes) -> None:
        library.delete("kim")
        replace_file(path, data)

    monkeypatch.setattr(library_voices, "replace_file", delete_first)
    with pytest.raises(UnknownVoice) as gone:
        library.update("kim", transcript="Changed.")
    assert as_api_error(gone.value).status == 404
    assert tree(tmp_path / "voices") == []


def test_an_update_on_a_full_disk_is_a_507_and_keeps_the_voice_as_it_was(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "128k") as data_dir:
        library = VoiceLibrary(data_dir, [])
        kept = library.add("kept", clip(1.0), "Hi.")
        before = tree(data_dir)
        with pytest.raises(VoiceStorageFull) as full:
            library.update("kept", description="x" * 200_000)
        assert (as_api_error(full.value).status, full.value.param) == (507, None)
        assert tree(data_dir) == before
        assert VoiceLibrary(data_dir, []).get("kept") == kept


def test_a_custom_voice_on_a_full_disk_is_a_507_and_leaves_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "128k") as data_dir:
        library = VoiceLibrary(data_dir, [])
        with pytest.raises(VoiceStorageFull):
            library.add_custom(clip(5.0), "Too long", "", authorisation())
        assert tree(data_dir / "voices") == []


# --- presets from the models file -------------------------------------------------------------------------------


def write_models_file(folder: Path, voices: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "models.toml"
    path.write_text(voices, encoding="utf-8")
    return path


def test_preset_audio_is_resolved_against_the_models_file_folder(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    (folder / "clips").mkdir(parents=True)
    soundfile.write(folder / "clips" / "narrator.wav", tone(1.25, 16000), 16000)
    path = write_models_file(
        folder,
        """
[[voices]]
name = "narrator"
audio = "clips/narrator.wav"
transcript = "Once upon a time."
locale = "en-GB"
gender = "male"
description = "calm"
""",
    )
    [voice] = load_voice_presets(path)
    assert voice.audio_path == folder / "clips" / "narrator.wav"
    assert (voice.name, voice.transcript, voice.locale, voice.gender, voice.description, voice.preset) == (
        "narrator",
        "Once upon a time.",
        "en-GB",
        "male",
        "calm",
        True,
    )
    assert (voice.sample_rate, round(voice.seconds, 3)) == (16000, 1.25)


def test_a_models_file_without_voices_has_no_presets(tmp_path: Path) -> None:
    assert load_voice_presets(write_models_file(tmp_path, "")) == []


def test_a_preset_with_a_missing_file_names_file_entry_and_reason(tmp_path: Path) -> None:
    path = write_models_file(
        tmp_path,
        """
[[voices]]
name = "ghost"
audio = "nowhere.wav"
transcript = "Boo."
""",
    )
    with pytest.raises(ModelConfigError) as error:
        load_voice_presets(path)
    message = str(error.value)
    assert str(path) in message
    assert "voices[0]" in message
    assert "ghost" in message
    assert "nowhere.wav" in message


def test_a_preset_with_a_bad_name_names_file_entry_and_reason(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "ok.wav", tone(1.0), RATE)
    path = write_models_file(
        tmp_path,
        """
[[voices]]
name = "fine"
audio = "ok.wav"
transcript = "Hi."

[[voices]]
name = "../escape"
audio = "ok.wav"
transcript = "Hi."
""",
    )
    with pytest.raises(ModelConfigError) as error:
        load_voice_presets(path)
    message = str(error.value)
    assert str(path) in message
    assert "voices[1]" in message
    assert "../escape" in message
    assert "not allowed" in message


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ('name = "x"\naudio = "ok.wav"', "required"),
        ('name = "x"\naudio = "ok.wav"\ntranscript = "Hi."\nspeed = 2', "unknown keys"),
    ],
)
def test_a_preset_with_missing_or_unknown_keys_is_refused(tmp_path: Path, entry: str, reason: str) -> None:
    soundfile.write(tmp_path / "ok.wav", tone(1.0), RATE)
    path = write_models_file(tmp_path, f"[[voices]]\n{entry}\n")
    with pytest.raises(ModelConfigError, match=reason) as error:
        load_voice_presets(path)
    assert "voices[0]" in str(error.value)


# --- AudioDecoder -----------------------------------------------------------------------------------------------


def test_decode_downmixes_and_resamples_to_the_engine_rate() -> None:
    decoded = decoder().decode(wav_bytes(1.0, 44100, channels=2), "audio")
    assert decoded.sample_rate == RATE
    assert decoded.samples.ndim == 1
    assert decoded.samples.dtype == np.float32
    assert abs(decoded.seconds - 1.0) < 0.01


@pytest.mark.parametrize(
    ("data", "limits", "status", "code"),
    [
        (b"this is not audio at all, just text\n" * 20, {}, 400, "invalid_audio"),
        (wav_bytes(2.0), {"max_seconds": 1}, 400, "audio_too_long"),
        (wav_bytes(0.05), {}, 400, "audio_too_short"),
        (wav_bytes(2.0), {"max_bytes": 50_000}, 413, "audio_too_large"),
    ],
)
def test_decode_refuses_what_it_cannot_use(data: bytes, limits: dict[str, Any], status: int, code: str) -> None:
    with pytest.raises(ServiceError) as error:
        decoder(**limits).decode(data, "audio")
    answer = as_api_error(error.value)
    assert (answer.status, answer.code, answer.param) == (status, code, "audio")


def test_decode_base64_accepts_plain_and_data_url_forms() -> None:
    encoded = base64.b64encode(wav_bytes(0.5)).decode("ascii")
    for text in [encoded, f"data:audio/wav;base64,{encoded}"]:
        decoded = decoder().decode_base64(text, "reference_audio")
        assert decoded.sample_rate == RATE
        assert abs(decoded.seconds - 0.5) < 0.01


@pytest.mark.parametrize("text", ["not base64!!", "data:audio/wav;base64,@@@@", "abc"])
def test_decode_base64_refuses_invalid_base64(text: str) -> None:
    with pytest.raises(ServiceError) as error:
        decoder().decode_base64(text, "reference_audio")
    answer = as_api_error(error.value)
    assert (answer.status, answer.code, answer.param) == (400, "invalid_base64", "reference_audio")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("prefixes", "url"),
    [
        ((), "http://127.0.0.1:9/voice.wav"),
        (("https://audio.example/allowed/",), "https://audio.example/other/voice.wav"),
        (("https://audio.example/allowed/",), "http://audio.example/allowed/voice.wav"),
        (("https://audio.example/allowed/",), "file:///etc/passwd"),
    ],
)
async def test_fetch_refuses_urls_outside_the_allowed_prefixes(prefixes: tuple[str, ...], url: str) -> None:
    with pytest.raises(ServiceError) as error:
        await decoder(url_prefixes=prefixes).fetch(url, "reference_audio")
    answer = as_api_error(error.value)
    assert (answer.status, answer.code, answer.param) == (400, "url_not_allowed", "reference_audio")


@get("/{path:path}", sync_to_thread=False)
def serve_audio(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[bytes]:
    """The loopback audio site: a WAV at /allowed/voice.wav and at /private.wav; it records what was asked."""
    request.app.state.hits.append(path)
    if path in {"/allowed/voice.wav", "/private.wav"}:
        return Response(wav_bytes(0.75, 16000), media_type="audio/wav")
    return Response(b"not found", status_code=404, media_type="text/plain")


def audio_site() -> Litestar:
    app = Litestar([serve_audio], logging_config=None)
    app.state.hits = []
    return app


async def attempt(fetcher: AudioDecoder, url: str) -> AudioClip | ServiceError:
    """The fetched clip or the refusal, so that assertions run after the loopback server has stopped."""
    try:
        return await fetcher.fetch(url, "reference_audio")
    except ServiceError as error:
        return error


def refusal(outcome: AudioClip | ServiceError) -> tuple[int, str | None]:
    assert isinstance(outcome, ServiceError), f"expected a refusal, got {outcome.seconds:.2f} s of audio"
    answer = as_api_error(outcome)
    return answer.status, answer.code


@pytest.mark.anyio
@pytest.mark.slow
async def test_fetch_reads_audio_from_an_allowed_loopback_prefix() -> None:
    site = audio_site()
    async with serve(site) as client:
        base = f"http://127.0.0.1:{client.base_url.port}"
        allowed = (f"{base}/allowed/",)
        fetched = await attempt(decoder(url_prefixes=allowed), f"{base}/allowed/voice.wav")
        missing = await attempt(decoder(url_prefixes=allowed), f"{base}/allowed/missing.txt")
        too_big = await attempt(decoder(max_bytes=1000, url_prefixes=allowed), f"{base}/allowed/voice.wav")

    assert isinstance(fetched, AudioClip), fetched
    assert fetched.sample_rate == RATE
    assert abs(fetched.seconds - 0.75) < 0.01
    assert refusal(missing) == (400, "url_failed")
    assert refusal(too_big) == (413, "audio_too_large")
    assert site.state.hits == ["/allowed/voice.wav", "/allowed/missing.txt", "/allowed/voice.wav"]


@pytest.mark.anyio
@pytest.mark.slow
async def test_fetch_does_not_leave_the_allowed_prefix_through_dot_segments() -> None:
    site = audio_site()
    async with serve(site) as client:
        base = f"http://127.0.0.1:{client.base_url.port}"
        outcome = await attempt(decoder(url_prefixes=(f"{base}/allowed/",)), f"{base}/allowed/../private.wav")

    assert site.state.hits == [], "the server was asked for a path outside the allowed prefix"
    assert refusal(outcome) == (400, "url_not_allowed")


# --- a voice must hold speech ------------------------------------------------------------------------------------


def recorded(path: Path, samples: np.ndarray[Any, np.dtype[np.float32]]) -> AudioClip:
    """The samples written to a real 16-bit WAV file and decoded again, as an upload would be."""
    soundfile.write(path, samples, RATE, subtype="PCM_16")
    return decoder().decode(path.read_bytes(), "audio")


def hiss(seconds: float, level: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    return (level * np.random.default_rng(7).standard_normal(round(seconds * RATE))).astype(np.float32)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(3 * RATE, np.float32), "audio is silent"),
        (hiss(3.0, 0.0005), "audio is silent"),  # a quiet room: about -66 dBFS
        (np.concatenate([hiss(3.0, 0.001), tone(0.2), hiss(3.0, 0.001)]), "holds only 0.2"),
    ],
    ids=["digital-silence", "room-noise", "a-blip-in-noise"],
)
def test_a_clip_without_speech_is_refused(
    tmp_path: Path, samples: np.ndarray[Any, np.dtype[np.float32]], message: str
) -> None:
    library = VoiceLibrary(tmp_path, [])
    with pytest.raises(VoiceError) as refused:
        library.add("quiet", recorded(tmp_path / "clip.wav", samples), "Hello.")
    assert message in refused.value.message
    assert refused.value.param == "audio"
    assert library.all() == []


def test_speech_over_background_noise_is_accepted(tmp_path: Path) -> None:
    noisy = np.concatenate([hiss(1.0, 0.003), tone(1.5) + hiss(1.5, 0.003), hiss(1.0, 0.003)])
    voice = VoiceLibrary(tmp_path, []).add("noisy", recorded(tmp_path / "clip.wav", noisy), "Hello.")
    assert voice.seconds == pytest.approx(3.5, abs=0.01)

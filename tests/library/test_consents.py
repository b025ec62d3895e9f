"""The voice consent store, without the API: records on disk, language tags, pages, renames, and the rules that
bind consents to the custom voices they authorise (required or not, copied into the voice, not deleted while used),
under concurrency and a full disk."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import soundfile

from service.controllers.errors import as_api_error
from service.engines.base import AudioClip
from service.errors import InvalidRequest
from service.library.consents import CONSENT_ID, Consent, ConsentError, ConsentInUse, ConsentStore, UnknownConsent
from service.library.voices import Voice, VoiceLibrary, VoiceStorageFull
from tests.support.audio import RATE, tone
from tests.support.disks import small_disk


def clip(seconds: float = 1.0) -> AudioClip:
    return AudioClip(tone(seconds), RATE)


def tree(root: Path) -> list[str]:
    """Every path under root, relative, sorted; empty when root does not exist."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []


def stores(data_dir: Path) -> tuple[VoiceLibrary, ConsentStore]:
    voices = VoiceLibrary(data_dir, [])
    return voices, ConsentStore(data_dir, voices)


def outcome_of(call: Any, *args: Any, **kwargs: Any) -> Any:
    """What the call returned, or the exception it raised (which the test inspects)."""
    try:
        return call(*args, **kwargs)
    except Exception as error:
        return error


# --- the consents themselves ------------------------------------------------------------------------------------


def test_add_stores_the_recording_and_its_record_and_reads_back(tmp_path: Path) -> None:
    _, consents = stores(tmp_path)
    consent = consents.add(clip(1.5), "  Jo Doe  ", "en-US")

    assert CONSENT_ID.fullmatch(consent.id)
    assert (consent.name, consent.language) == ("Jo Doe", "en-US")
    assert tree(tmp_path / "consents") == [consent.id, f"{consent.id}/consent.json", f"{consent.id}/consent.wav"]
    meta = json.loads((tmp_path / "consents" / consent.id / "consent.json").read_text(encoding="utf-8"))
    assert meta == {"id": consent.id, "name": "Jo Doe", "language": "en-US", "created_at": consent.created_at}
    info = soundfile.info(str(consent.recording_path))
    assert (info.samplerate, info.channels, info.frames) == (RATE, 1, round(1.5 * RATE))
    assert stores(tmp_path)[1].get(consent.id) == consent


@pytest.mark.parametrize(
    "tag", ["en", "en-US", "EN-us", "de-CH-1996", "zh-Hans-CN", "sr-Latn-RS", "es-419", "zh-yue-HK", "en-US-x-twain"]
)
def test_well_formed_language_tags_are_taken(tmp_path: Path, tag: str) -> None:
    assert stores(tmp_path)[1].add(clip(), "Jo", tag).language == tag


@pytest.mark.parametrize(
    "tag", ["", "e", "en_US", "en-", "-en", "en--US", "en-US-", "12", "en-a", "de-CH-x", "toolonglang", "en-" * 30]
)
def test_malformed_language_tags_are_a_400_and_store_nothing(tmp_path: Path, tag: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        stores(tmp_path)[1].add(clip(), "Jo", tag)
    assert (as_api_error(refused.value).status, refused.value.param) == (400, "language")
    assert "BCP 47" in str(refused.value)
    assert tree(tmp_path / "consents") == []


def test_a_blank_name_is_a_400(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as refused:
        stores(tmp_path)[1].add(clip(), "  ", "en")
    assert (as_api_error(refused.value).status, refused.value.param) == (400, "name")


def test_unknown_and_malformed_ids_are_a_404(tmp_path: Path) -> None:
    _, consents = stores(tmp_path)
    consents.add(clip(), "Jo", "en")
    for consent_id in ["cons_" + "0" * 32, "../voices", "cons_1234", ""]:
        with pytest.raises(UnknownConsent) as unknown:
            consents.get(consent_id)
        answer = as_api_error(unknown.value)
        assert (answer.status, answer.param, answer.code) == (404, "consent_id", "consent_not_found")


def test_folders_without_a_complete_record_are_not_consents(tmp_path: Path) -> None:
    _, consents = stores(tmp_path)
    kept = consents.add(clip(), "Jo", "en")
    lost = consents.add(clip(), "Lost", "en")
    lost.recording_path.unlink()
    broken = tmp_path / "consents" / ("cons_" + "b" * 32)
    broken.mkdir()
    (broken / "consent.json").write_text("{not json", encoding="utf-8")
    (broken / "consent.wav").write_bytes(b"RIFF")
    assert consents.all() == [kept]


def test_pages_run_newest_first_and_new_consents_do_not_shift_the_pages_still_to_come(tmp_path: Path) -> None:
    _, consents = stores(tmp_path)
    made = [consents.add(clip(), f"Speaker {index}", "en") for index in range(5)]
    first = consents.page(None, 2)
    assert [consent.id for consent in first.items] == [made[4].id, made[3].id]
    assert first.has_more

    consents.add(clip(), "Newcomer", "en")
    second = consents.page(first.items[-1].id, 2)
    last = consents.page(second.items[-1].id, 2)
    assert [consent.id for consent in second.items] == [made[2].id, made[1].id]
    assert ([consent.id for consent in last.items], last.has_more) == ([made[0].id], False)
    with pytest.raises(InvalidRequest) as unknown:
        consents.page("cons_" + "0" * 32, 2)
    assert (as_api_error(unknown.value).status, unknown.value.param) == (400, "after")


def test_rename_changes_the_name_only_and_lasts(tmp_path: Path) -> None:
    _, consents = stores(tmp_path)
    consent = consents.add(clip(), "Jo", "en-GB")
    recording = consent.recording_path.read_bytes()

    renamed = consents.rename(consent.id, "  Jo Bloggs ")
    assert renamed == Consent(consent.id, "Jo Bloggs", "en-GB", consent.created_at, consent.recording_path)
    assert stores(tmp_path)[1].get(consent.id) == renamed
    assert consent.recording_path.read_bytes() == recording
    assert tree(tmp_path / "consents") == [consent.id, f"{consent.id}/consent.json", f"{consent.id}/consent.wav"]
    with pytest.raises(InvalidRequest):
        consents.rename(consent.id, "")
    with pytest.raises(UnknownConsent):
        consents.rename("cons_" + "0" * 32, "Nobody")


def test_staging_folders_left_by_an_interrupted_add_are_swept_at_start_up(tmp_path: Path) -> None:
    _, consents = stores(tmp_path)
    kept = consents.add(clip(), "Jo", "en")
    leftover = tmp_path / "consents" / ".cons_x-abc123"
    leftover.mkdir()
    (leftover / "consent.wav").write_bytes(b"RIFF, cut short")
    assert stores(tmp_path)[1].all() == [kept]
    assert tree(tmp_path / "consents") == [kept.id, f"{kept.id}/consent.json", f"{kept.id}/consent.wav"]


def test_a_full_disk_refuses_the_consent_and_leaves_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "128k") as data_dir:  # room for a 1 s recording (48 KB), not for a 5 s one
        _, consents = stores(data_dir)
        kept = consents.add(clip(1.0), "Jo", "en")
        with pytest.raises(VoiceStorageFull) as full:
            consents.add(clip(5.0), "Too long", "en")
        assert as_api_error(full.value).status == 507
        assert tree(data_dir / "consents") == [kept.id, f"{kept.id}/consent.json", f"{kept.id}/consent.wav"]


# --- consents and the voices they authorise ---------------------------------------------------------------------


def test_a_voice_keeps_a_copy_of_its_consent_s_record_and_names_it(tmp_path: Path) -> None:
    voices, consents = stores(tmp_path)
    consent = consents.add(clip(), "Jo", "en-US")
    voice = consents.add_voice(clip(2.0), "Jo's voice", "Hello.", consent.id, consent_required=True)

    assert voice.consent == consent.id
    folder = tmp_path / "voices" / voice.name
    assert tree(folder) == ["consent.json", "consent.wav", "voice.json", "voice.wav"]
    for file in ("consent.json", "consent.wav"):
        assert (folder / file).read_bytes() == (tmp_path / "consents" / consent.id / file).read_bytes(), file
    assert json.loads((folder / "voice.json").read_text(encoding="utf-8"))["consent"] == consent.id
    assert voices.get(voice.name) == voice


def test_a_required_consent_must_be_named_and_must_exist(tmp_path: Path) -> None:
    _, consents = stores(tmp_path)
    for missing in [None, ""]:
        with pytest.raises(ConsentError) as required:
            consents.add_voice(clip(), "Voice", "Hi.", missing, consent_required=True)
        answer = as_api_error(required.value)
        assert (answer.status, answer.param, answer.code) == (400, "consent", "consent_required")
    for required_or_not in (True, False):
        with pytest.raises(UnknownConsent) as unknown:
            consents.add_voice(clip(), "Voice", "Hi.", "cons_" + "0" * 32, consent_required=required_or_not)
        answer = as_api_error(unknown.value)
        assert (answer.status, answer.param, answer.code) == (404, "consent", "consent_not_found")
    assert tree(tmp_path / "voices") == []


def test_where_consent_is_not_required_a_voice_may_come_without_one(tmp_path: Path) -> None:
    voices, consents = stores(tmp_path)
    voice = consents.add_voice(clip(), "Voice", "", None, consent_required=False)
    assert (voice.consent, voice.transcript) == (None, "")
    assert tree(tmp_path / "voices" / voice.name) == ["voice.json", "voice.wav"]
    assert voices.custom() == [voice]


def test_a_consent_is_not_deleted_while_a_voice_it_authorised_exists(tmp_path: Path) -> None:
    voices, consents = stores(tmp_path)
    consent = consents.add(clip(), "Jo", "en")
    first = consents.add_voice(clip(), "One", "Hi.", consent.id, consent_required=True)
    second = consents.add_voice(clip(), "Two", "Hi.", consent.id, consent_required=True)

    with pytest.raises(ConsentInUse) as in_use:
        consents.delete(consent.id)
    answer = as_api_error(in_use.value)
    assert (answer.status, answer.param, answer.code) == (409, "consent_id", "consent_in_use")
    assert first.name in answer.message
    assert second.name in answer.message
    assert consents.get(consent.id) == consent

    voices.delete_custom(first.name)
    voices.delete(second.name)
    assert consents.get(consent.id) == consent, "deleting a voice leaves its consent"
    assert consents.delete(consent.id) == consent
    assert tree(tmp_path / "consents") == []
    with pytest.raises(UnknownConsent):
        consents.delete(consent.id)


def test_concurrent_deletes_of_one_consent_give_one_deletion_and_one_404(tmp_path: Path) -> None:
    _, consents = stores(tmp_path)
    consent = consents.add(clip(), "Jo", "en")
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: outcome_of(consents.delete, consent.id), range(2)))
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["Consent", "UnknownConsent"], outcomes
    assert tree(tmp_path / "consents") == []


def test_a_consent_deleted_while_a_voice_is_being_made_with_it_cannot_leave_that_voice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete starts once the voice's creation has found the consent, and the creation goes on only once the
    delete is done (or after a second, if the delete has to wait for it): the delete must wait, and then refuse."""
    voices, consents = stores(tmp_path)
    consent = consents.add(clip(), "Jo", "en")
    found = threading.Event()
    deleted = threading.Event()
    add_custom = voices.add_custom

    def add_once_the_delete_is_done(*args: Any) -> Any:
        found.set()
        deleted.wait(timeout=1)  # the delete cannot finish while the creation holds the consent
        return add_custom(*args)

    monkeypatch.setattr(voices, "add_custom", add_once_the_delete_is_done)

    def delete_once_found() -> Any:
        found.wait(timeout=5)
        try:
            return outcome_of(consents.delete, consent.id)
        finally:
            deleted.set()

    with ThreadPoolExecutor(2) as pool:
        creation = pool.submit(
            outcome_of, consents.add_voice, clip(), "Voice", "Hi.", consent.id, consent_required=True
        )
        deletion = pool.submit(delete_once_found)
        made, refused = creation.result(), deletion.result()
    assert isinstance(made, Voice), made
    assert isinstance(refused, ConsentInUse), refused
    assert voices.authorised_by(consent.id) == [made.name]
    assert consents.get(consent.id) == consent

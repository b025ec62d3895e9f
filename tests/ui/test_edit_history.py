"""The Clone & edit history store: steps and their audio on disk, undo, start over, pruning, and ids that cannot
name anything outside its folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from service.controllers.errors import as_api_error
from service.errors import NotFound
from service.library.edit_history import MAX_AGE_SECONDS, EditHistory, Step


def step(
    kind: str,
    transcript: str = "Hello there.",
    edit_info: str | None = None,
    text: str | None = None,
    iterations: int = 1,
) -> Step:
    return Step(0, kind, transcript, 1.0, edit_info=edit_info, text=text, iterations=iterations)


@pytest.fixture
def history(tmp_path: Path) -> EditHistory:
    return EditHistory(tmp_path / "ui")


def test_steps_are_numbered_in_order_and_survive_a_new_store(history: EditHistory) -> None:
    session = history.create("sa", "uploaded clip", "Ref.", "Hello there.", step("clone"), b"RIFF0")
    session = history.append(session, step("emotion", edit_info="happy", iterations=2), b"RIFF1")
    session = history.append(session, step("paralinguistic", "Hello [Laughter] there.", text="x"), b"RIFF2")
    again = EditHistory(history.root).get(session.id)
    assert again == session
    assert [s.index for s in again.steps] == [0, 1, 2]
    assert [s.label for s in again.steps] == ["Cloned voice", "Emotion: happy ×2", "Paralinguistic: new text"]
    assert again.current.transcript == "Hello [Laughter] there."
    assert history.audio_path(again, 1).read_bytes() == b"RIFF1"


def test_undo_deletes_the_later_steps_and_their_audio(history: EditHistory) -> None:
    session = history.create("sa", "library voice narrator", "Ref.", "", step("reference"), b"0")
    for mode in ("denoise", "vad", "style"):
        session = history.append(session, step(mode), mode.encode())
    session = history.truncate(session, 1)
    assert [s.kind for s in session.steps] == ["reference", "denoise"]
    assert sorted(path.name for path in (history.root / session.id).glob("*.wav")) == ["0.wav", "1.wav"]
    session = history.append(session, step("speed", edit_info="faster"), b"new")
    assert history.audio_path(session, 2).read_bytes() == b"new"
    with pytest.raises(NotFound) as missing:
        history.truncate(session, 7)
    assert (as_api_error(missing.value).status, missing.value.param) == (404, "step")


def test_start_over_removes_the_session(history: EditHistory) -> None:
    session = history.create("sa", "uploaded clip", "Ref.", "Hi.", step("clone"), b"0")
    history.delete(session.id)
    assert not (history.root / session.id).exists()
    with pytest.raises(NotFound) as gone:
        history.get(session.id)
    assert (as_api_error(gone.value).status, gone.value.code) == (404, "session_not_found")


@pytest.mark.parametrize("session_id", ["../../etc", "short", "a" * 65, "x/../../yyyyyyyyyyyyyyyy", ""])
def test_ids_that_are_not_session_ids_are_unknown(history: EditHistory, session_id: str) -> None:
    with pytest.raises(NotFound) as unknown:
        history.get(session_id)
    assert as_api_error(unknown.value).status == 404


def test_sessions_untouched_for_a_week_are_pruned_when_a_new_one_starts(history: EditHistory) -> None:
    old = history.create("sa", "uploaded clip", "Ref.", "Hi.", step("clone"), b"0")
    recent = history.create("sa", "uploaded clip", "Ref.", "Hi.", step("clone"), b"0")
    stale = time.time() - MAX_AGE_SECONDS - 60
    os.utime(history.root / old.id / "session.json", (stale, stale))
    history.create("sa", "uploaded clip", "Ref.", "Hi.", step("clone"), b"0")
    assert not (history.root / old.id).exists()
    assert history.get(recent.id) == recent

"""The Clone & edit page's history: every session's steps, their audio and what made them, kept on the server.

A session is a folder `<data dir>/ui/<id>/` with `session.json` and one `<n>.wav` per step. Step 0 is the clone
(or the reference clip itself); every later step is an edit of the step before it. Undoing to a step deletes the
steps after it; starting over deletes the folder. Sessions untouched for `MAX_AGE_SECONDS` are removed when a new
one is created. Nothing here talks to a model: the pages controller runs the speech service and stores the result.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from service.errors import NotFound

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_AGE_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Step:
    """One entry of the history: `kind` is "clone", "reference" (the reference clip itself) or an edit mode."""

    index: int
    kind: str
    transcript: str
    seconds: float
    edit_info: str | None = None
    text: str | None = None
    iterations: int = 1
    took: float = 0.0
    cold: bool = False
    load_seconds: float = 0.0
    created: float = field(default_factory=time.time)

    @property
    def label(self) -> str:
        if self.kind == "clone":
            return "Cloned voice"
        if self.kind == "reference":
            return "Reference clip"
        detail = self.edit_info or ("new text" if self.kind == "paralinguistic" else "")
        repeat = f" ×{self.iterations}" if self.iterations > 1 else ""
        return f"{self.kind.capitalize()}{': ' + detail if detail else ''}{repeat}"


@dataclass(frozen=True)
class Session:
    """A history: the model that makes its edits, where it started from, and its steps in order."""

    id: str
    model: str
    source: str
    reference_text: str
    target_text: str
    steps: tuple[Step, ...] = ()
    created: float = field(default_factory=time.time)

    @property
    def current(self) -> Step:
        return self.steps[-1]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [asdict(step) for step in self.steps]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        steps = tuple(Step(**step) for step in data.pop("steps"))
        return cls(steps=steps, **data)


def _unknown(session_id: str) -> NotFound:
    return NotFound(
        f"no edit session {session_id!r}: it was started over, or removed after {MAX_AGE_SECONDS // 86400} days",
        param="session",
        code="session_not_found",
    )


class EditHistory:
    """Sessions under `root`; one lock per session keeps two edits of the same session from interleaving."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, anyio.Lock] = {}

    def lock(self, session_id: str) -> anyio.Lock:
        return self._locks.setdefault(session_id, anyio.Lock())

    def _folder(self, session_id: str) -> Path:
        if not SESSION_ID.fullmatch(session_id):
            raise _unknown(session_id)
        return self.root / session_id

    def audio_path(self, session: Session, index: int) -> Path:
        if not 0 <= index < len(session.steps):
            raise NotFound(f"session {session.id!r} has no step {index}", param="step", code="step_not_found")
        return self._folder(session.id) / f"{index}.wav"

    def _save(self, session: Session) -> Session:
        folder = self._folder(session.id)
        staging = folder / "session.json.tmp"
        staging.write_text(json.dumps(session.to_json(), indent=2), encoding="utf-8")
        staging.replace(folder / "session.json")
        return session

    def get(self, session_id: str) -> Session:
        try:
            data = json.loads((self._folder(session_id) / "session.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise _unknown(session_id) from None
        return Session.from_json(data)

    def create(
        self, model: str, source: str, reference_text: str, target_text: str, first: Step, audio: bytes
    ) -> Session:
        """A new session whose step 0 is `first` with its WAV `audio`."""
        self.prune()
        session = Session(secrets.token_urlsafe(16), model, source, reference_text, target_text)
        folder = self._folder(session.id)
        folder.mkdir(parents=True)
        (folder / "0.wav").write_bytes(audio)
        return self._save(replace(session, steps=(replace(first, index=0),)))

    def append(self, session: Session, step: Step, audio: bytes) -> Session:
        index = len(session.steps)
        (self._folder(session.id) / f"{index}.wav").write_bytes(audio)
        return self._save(replace(session, steps=(*session.steps, replace(step, index=index))))

    def truncate(self, session: Session, index: int) -> Session:
        """Undo to step `index`: the steps after it and their audio are deleted."""
        self.audio_path(session, index)
        folder = self._folder(session.id)
        for step in session.steps[index + 1 :]:
            (folder / f"{step.index}.wav").unlink(missing_ok=True)
        return self._save(replace(session, steps=session.steps[: index + 1]))

    def delete(self, session_id: str) -> None:
        folder = self._folder(session_id)
        if not folder.is_dir():
            raise _unknown(session_id)
        shutil.rmtree(folder)
        self._locks.pop(session_id, None)

    def prune(self, now: float | None = None) -> list[str]:
        """Remove sessions not touched for MAX_AGE_SECONDS; returns their ids."""
        cutoff = (now or time.time()) - MAX_AGE_SECONDS
        removed = []
        for folder in self.root.glob("*") if self.root.is_dir() else ():
            marker = folder / "session.json"
            try:
                stale = marker.stat().st_mtime < cutoff
            except OSError:
                stale = folder.is_dir() and folder.stat().st_mtime < cutoff
            if stale and SESSION_ID.fullmatch(folder.name):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

"""Voice consents (OpenAI's /v1/audio/voice_consents): recordings in which a speaker consents to a custom voice
of theirs, each under `<data dir>/consents/<cons_…>/` (`consent.wav` and `consent.json`).

What is checked of a consent: its recording decodes within the upload limits (the caller decodes it), its language
is a well-formed BCP 47 tag, and it exists when a voice names it. What cannot be: that its speaker is the speaker
of the voice's sample, or that the recording says a consent statement at all.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from service.engines.base import AudioClip
from service.errors import Conflict, InvalidRequest, NotFound, ServiceError
from service.library.voices import (
    Authorisation,
    Page,
    Voice,
    VoiceLibrary,
    checked_label,
    encoded_wav,
    page_after,
    remove_folder,
    replace_file,
    store_folder,
    sweep_staging,
)

CONSENT_ID = re.compile(r"cons_[0-9a-f]{32}")
# the files of a consent's record, in its own folder and, copied, in the folder of each voice it authorised
RECORD_FILES = ("consent.json", "consent.wav")
# BCP 47 (RFC 5646) as written: language (with up to three extended subtags), script, region, variants,
# extensions and a private use part; or a private use tag alone. Grandfathered tags (i-klingon) are not taken.
LANGUAGE_TAG = re.compile(
    r"(?:[a-z]{2,3}(?:-[a-z]{3}){0,3}|[a-z]{4,8})"
    r"(?:-[a-z]{4})?"
    r"(?:-(?:[a-z]{2}|[0-9]{3}))?"
    r"(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*"
    r"(?:-[0-9a-wy-z](?:-[a-z0-9]{2,8})+)*"
    r"(?:-x(?:-[a-z0-9]{1,8})+)?"
    r"|x(?:-[a-z0-9]{1,8})+",
    re.IGNORECASE,
)
MAX_LANGUAGE_TAG_CHARS = 64


class ConsentError(ServiceError):
    """A voice consent request that cannot be honoured: an invalid request, unless it is of a more specific kind."""

    code = "invalid_consent"

    def __init__(self, message: str, param: str | None = "consent", code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)


class UnknownConsent(ConsentError, NotFound):
    code = "consent_not_found"


class ConsentInUse(ConsentError, Conflict):
    code = "consent_in_use"


@dataclass(frozen=True)
class Consent:
    id: str
    name: str
    language: str
    # Unix time in seconds, with its fraction (OpenAI's created_at is its whole seconds)
    created_at: float
    recording_path: Path


def checked_language(tag: str) -> str:
    """A well-formed BCP 47 language tag, as given."""
    if len(tag) > MAX_LANGUAGE_TAG_CHARS or not LANGUAGE_TAG.fullmatch(tag):
        raise InvalidRequest(
            f"language {tag[:80]!r} is not a BCP 47 language tag, such as en-US, de or zh-Hans-CN",
            param="language",
            code="invalid_value",
        )
    return tag


class ConsentStore:
    """The consents, beside the voice library whose custom voices they authorise: a voice names its consent, and a
    consent that voices still name cannot be deleted."""

    def __init__(self, data_dir: Path, voices: VoiceLibrary) -> None:
        self._root = data_dir / "consents"
        self._voices = voices
        # a voice's creation with a consent, a consent's deletion and its renaming, one at a time: a consent is not
        # deleted between the check that a new voice may use it and that voice's arrival in the library
        self._lock = threading.Lock()
        sweep_staging(self._root)

    def _load(self, folder: Path) -> Consent | None:
        """The consent stored in `folder`; None for a folder without a complete record."""
        if not (folder / "consent.wav").is_file():
            return None
        try:
            meta = json.loads((folder / "consent.json").read_text(encoding="utf-8"))
            return Consent(
                id=folder.name,
                name=str(meta["name"]),
                language=str(meta["language"]),
                created_at=float(meta["created_at"]),
                recording_path=folder / "consent.wav",
            )
        except (OSError, ValueError, TypeError, KeyError):
            return None

    @staticmethod
    def _metadata(consent: Consent) -> bytes:
        meta = {"id": consent.id, "name": consent.name, "language": consent.language, "created_at": consent.created_at}
        return json.dumps(meta, indent=2).encode("utf-8")

    def add(self, recording: AudioClip, name: str, language: str) -> Consent:
        consent_id = f"cons_{secrets.token_hex(16)}"
        consent = Consent(
            id=consent_id,
            name=checked_label(name, "name"),
            language=checked_language(language),
            created_at=time.time(),
            recording_path=self._root / consent_id / "consent.wav",
        )
        files = {"consent.wav": encoded_wav(recording), "consent.json": self._metadata(consent)}
        store_folder(self._root, consent.id, files)
        return consent

    def get(self, consent_id: str, param: str = "consent_id") -> Consent:
        consent = self._load(self._root / consent_id) if CONSENT_ID.fullmatch(consent_id) else None
        if consent is None:
            raise UnknownConsent(f"no voice consent {consent_id[:80]!r}; see GET /v1/audio/voice_consents", param)
        return consent

    def all(self) -> list[Consent]:
        """Every consent, newest first (the order of their lists)."""
        folders = [folder for folder in self._root.glob("cons_*") if CONSENT_ID.fullmatch(folder.name)]
        consents = [consent for folder in folders if (consent := self._load(folder)) is not None]
        return sorted(consents, key=lambda consent: (consent.created_at, consent.id), reverse=True)

    def page(self, after: str | None, limit: int) -> Page[Consent]:
        return page_after(self.all(), lambda consent: consent.id, after, limit)

    def rename(self, consent_id: str, name: str) -> Consent:
        """Change the consent's name (its label) only; the copies kept with its voices stay as they were made."""
        label = checked_label(name, "name")
        with self._lock:
            consent = replace(self.get(consent_id), name=label)
            try:
                replace_file(self._root / consent.id / "consent.json", self._metadata(consent))
            except FileNotFoundError as error:
                raise UnknownConsent(f"no voice consent {consent_id!r}: it was just deleted", "consent_id") from error
        return consent

    def delete(self, consent_id: str) -> Consent:
        """Delete a consent that no voice uses: withdrawing a consent must not leave a voice it authorised."""
        with self._lock:
            consent = self.get(consent_id)
            users = self._voices.authorised_by(consent.id)
            if users:
                raise ConsentInUse(
                    f"voice consent {consent.id!r} authorised the voices {', '.join(users)}: delete them first "
                    "(DELETE /v1/audio/voices/{voice_id})",
                    "consent_id",
                )
            if not remove_folder(self._root, consent.id):
                raise UnknownConsent(f"no voice consent {consent_id!r}: it was just deleted", "consent_id")
        return consent

    def add_voice(
        self, sample: AudioClip, name: str, transcript: str, consent_id: str | None, *, consent_required: bool
    ) -> Voice:
        """A custom voice authorised by the consent `consent_id`, whose record is copied into the voice's folder;
        without one only where consent is not required."""
        if not consent_id:
            if consent_required:
                raise ConsentError(
                    "consent is required: the id of a voice consent (cons_…, from POST /v1/audio/voice_consents) "
                    "recorded by the speaker of audio_sample",
                    code="consent_required",
                )
            return self._voices.add_custom(sample, name, transcript, None)
        with self._lock:
            consent = self.get(consent_id, "consent")
            files = {file: (self._root / consent.id / file).read_bytes() for file in RECORD_FILES}
            return self._voices.add_custom(sample, name, transcript, Authorisation(consent.id, files))

"""The voice library: named reference clips with their transcripts, for cloning engines.

Presets come from the models file and are read-only; uploaded voices live under `<data dir>/voices/<name>/`
(`voice.wav` and `voice.json`) and survive restarts. Custom voices of OpenAI's API (POST /v1/audio/voices) are
uploaded voices too, named by their `voice_…` id, with OpenAI's free-text name as `label`; the voice consent that
authorised one is copied into its folder (service/library/consents.py).
"""

from __future__ import annotations

import errno
import io
import json
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import soundfile

from service.engines.base import AudioClip
from service.errors import Conflict, InsufficientStorage, InvalidRequest, NotFound, ServiceError

VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
CUSTOM_VOICE_ID = re.compile(r"voice_[0-9a-f]{32}")
# what OpenAI's Voice object calls a voice made from a recording (its `type`); the library's custom voices are all so
AUDIO_SAMPLE = "audio_sample"
MAX_TRANSCRIPT_CHARS = 2000
MAX_LABEL_CHARS = 256
# a reference clip must hold speech: 20 ms frames louder than SILENT_DBFS and within SPEECH_RANGE_DB of the loudest
# frame count as sound, and there must be at least MIN_SPEECH_SECONDS of them
SPEECH_FRAME_SECONDS = 0.02
SILENT_DBFS = -50.0
SPEECH_RANGE_DB = 35.0
MIN_SPEECH_SECONDS = 0.4

Item = TypeVar("Item")


class VoiceError(ServiceError):
    """A voice request that cannot be honoured: an invalid request, unless it is of a more specific kind."""

    code = "invalid_voice"

    def __init__(self, message: str, param: str | None = "name") -> None:
        super().__init__(message, param=param)


class UnknownVoice(VoiceError, NotFound):
    code = "unknown_voice"


class VoiceConflict(VoiceError, Conflict):
    code = "voice_conflict"


class VoiceStorageFull(VoiceError, InsufficientStorage):
    code = "insufficient_storage"


@dataclass(frozen=True)
class Voice:
    name: str
    transcript: str
    audio_path: Path
    seconds: float
    sample_rate: int
    locale: str | None = None
    gender: str | None = None
    description: str | None = None
    preset: bool = False
    created: float | None = None
    # a free-text name beside `name` (a custom voice's OpenAI `name`)
    label: str | None = None
    # OpenAI's `type` of a custom voice (AUDIO_SAMPLE); None for the library's own uploads and presets
    openai_type: str | None = None
    # the id of the voice consent that authorised a custom voice, whose record is kept in the voice's folder
    consent: str | None = None

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the file's location."""
        data = asdict(self)
        del data["audio_path"]
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass(frozen=True)
class Authorisation:
    """The consent behind a new custom voice: its id, and the files of its record to keep in the voice's folder."""

    consent: str
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class Page(Generic[Item]):
    """One page of a list in OpenAI's cursor pagination: its items, and whether more follow them."""

    items: list[Item]
    has_more: bool


def page_after(items: Sequence[Item], key: Callable[[Item], str], after: str | None, limit: int) -> Page[Item]:
    """The `limit` items that follow the one whose key is `after` (from the first when None); an `after` that is
    not in the list is a 400, as the client cannot tell where it was."""
    start = 0
    if after is not None:
        keys = [key(item) for item in items]
        if after not in keys:
            raise InvalidRequest(
                f"after {after[:80]!r} is not the id of an item of this list (it may have been deleted since); "
                "list again from the start, without after",
                param="after",
                code="invalid_value",
            )
        start = keys.index(after) + 1
    return Page(list(items[start : start + limit]), start + limit < len(items))


def validate_name(name: str) -> str:
    if not VOICE_NAME.fullmatch(name):
        raise VoiceError(
            f"voice name {name!r} is not allowed: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


def checked_transcript(transcript: str, *, required: bool) -> str:
    """The transcript without surrounding space; an empty one only where it is not `required`."""
    if required and not transcript.strip():
        raise VoiceError("transcript must say what the clip says", "transcript")
    if len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise VoiceError(f"transcript is longer than {MAX_TRANSCRIPT_CHARS} characters", "transcript")
    return transcript.strip()


def checked_label(label: str, param: str) -> str:
    """A free-text name (a custom voice's or a consent's) without surrounding space; never empty."""
    text = label.strip()
    if not text:
        raise InvalidRequest(f"{param} must not be empty", param=param, code="invalid_value")
    if len(text) > MAX_LABEL_CHARS:
        raise InvalidRequest(f"{param} is longer than {MAX_LABEL_CHARS} characters", param=param, code="invalid_value")
    return text


def check_speech(clip: AudioClip, param: str) -> None:
    """Refuse a clip that is silent, or holds less than MIN_SPEECH_SECONDS of sound above its own noise floor:
    nothing could clone it."""
    frame = max(1, round(clip.sample_rate * SPEECH_FRAME_SECONDS))
    count = len(clip.samples) // frame
    frames = np.asarray(clip.samples[: count * frame], dtype=np.float64).reshape(count, frame)
    levels = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12) if count else np.zeros(0)
    loudest = float(levels.max()) if count else -120.0
    if loudest < SILENT_DBFS:
        raise VoiceError(
            f"{param} is silent (its loudest moment is {loudest:.0f} dBFS): record or choose a clip of clear speech",
            param,
        )
    sound = int(np.count_nonzero(levels >= max(SILENT_DBFS, loudest - SPEECH_RANGE_DB))) * frame / clip.sample_rate
    if sound < MIN_SPEECH_SECONDS:
        raise VoiceError(
            f"{param} holds only {sound:.2f} s of sound above its background; a voice needs at least "
            f"{MIN_SPEECH_SECONDS} s of clear speech",
            param,
        )


def wav_bytes(path: Path) -> bytes:
    """The clip at `path` as WAV (presets may be stored in other formats)."""
    if path.suffix.lower() == ".wav":
        return path.read_bytes()
    return encoded_wav(read_clip(path))


def encoded_wav(clip: AudioClip) -> bytes:
    """The clip as 16-bit WAV, in memory."""
    output = io.BytesIO()
    soundfile.write(output, clip.samples, clip.sample_rate, format="WAV", subtype="PCM_16")
    return output.getvalue()


def read_clip(path: Path) -> AudioClip:
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return AudioClip(samples.mean(axis=1, dtype=np.float32), int(rate))


def _disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def sweep_staging(root: Path) -> None:
    """Remove the staging and removal folders that writes left when the server stopped midway (stored names never
    start with '.')."""
    for leftover in root.glob(".*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def store_folder(root: Path, name: str, files: Mapping[str, bytes]) -> None:
    """Write `files` to a staging folder under `root` and rename it to `root/name`: readers see all of it or
    nothing, and on failure (a full disk, a folder of that name made meanwhile) nothing is left."""
    staging: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        for file_name, data in files.items():
            (staging / file_name).write_bytes(data)
        staging.rename(root / name)
    except OSError as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if _disk_full(error):
            raise VoiceStorageFull(
                f"the voice library's disk is full ({error.strerror}); {name!r} was not stored", None
            ) from error
        if (root / name).exists():
            raise VoiceConflict(f"{name!r} exists already: another request just added it") from error
        raise


def replace_file(path: Path, data: bytes) -> None:
    """Write the file's new content beside it and rename it over the old one: readers see the old or the new.
    FileNotFoundError when its folder is gone (removed meanwhile)."""
    temporary = path.with_name(f".{path.name}-{secrets.token_hex(4)}")
    try:
        temporary.write_bytes(data)
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if _disk_full(error):
            raise VoiceStorageFull(
                f"the voice library's disk is full ({error.strerror}); {path.parent.name!r} was not changed", None
            ) from error
        raise


def remove_folder(root: Path, name: str) -> bool:
    """Rename `root/name` out of sight, then delete it: readers never see half a folder, and of two concurrent
    removals one succeeds. False when there was no such folder (any more)."""
    removed = root / f".{name}-removed-{secrets.token_hex(4)}"
    try:
        (root / name).rename(removed)
    except FileNotFoundError:
        return False
    shutil.rmtree(removed, ignore_errors=True)
    return True


class VoiceLibrary:
    def __init__(self, data_dir: Path, presets: list[Voice]) -> None:
        self._root = data_dir / "voices"
        self._presets = {voice.name: voice for voice in presets}
        # one change of a voice's metadata at a time, so that concurrent changes of different fields all last
        self._changing = threading.Lock()
        sweep_staging(self._root)

    def _folder(self, name: str) -> Path:
        return self._root / validate_name(name)

    def _load(self, folder: Path) -> Voice | None:
        try:
            meta = json.loads((folder / "voice.json").read_text(encoding="utf-8"))
            return Voice(audio_path=folder / "voice.wav", **meta)
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[Voice]:
        folders = [folder for folder in sorted(self._root.glob("[!.]*")) if folder.name not in self._presets]
        uploaded = [voice for folder in folders if (voice := self._load(folder)) is not None]
        return sorted([*self._presets.values(), *uploaded], key=lambda voice: voice.name)

    def names(self) -> list[str]:
        return [voice.name for voice in self.all()]

    def _unknown(self, name: str) -> UnknownVoice:
        return UnknownVoice(f"no voice named {name!r}; voices: {', '.join(self.names()) or 'none yet'}", "voice")

    def get(self, name: str) -> Voice:
        if name in self._presets:
            return self._presets[name]
        if not VOICE_NAME.fullmatch(name):
            raise VoiceError(f"{name!r} is not a voice name (letters, digits, '-' and '_')", "voice")
        voice = self._load(self._folder(name))
        if voice is None:
            raise self._unknown(name)
        return voice

    def clip(self, name: str) -> tuple[Voice, AudioClip]:
        """A voice to clone: its clip and its transcript, which cloning needs (a custom voice may have none yet)."""
        voice = self.get(name)
        if not voice.transcript:
            raise VoiceError(
                f"voice {name!r} has no transcript, and cloning needs what its clip says: give it one with "
                f'PATCH /v1/voices/{name} and the JSON {{"transcript": "<what the clip says>"}}',
                "voice",
            )
        return voice, read_clip(voice.audio_path)

    def add(
        self,
        name: str,
        clip: AudioClip,
        transcript: str,
        locale: str | None = None,
        gender: str | None = None,
        description: str | None = None,
    ) -> Voice:
        folder = self._folder(name)
        transcript = checked_transcript(transcript, required=True)
        check_speech(clip, "audio")
        if name in self._presets or folder.exists():
            raise VoiceConflict(f"a voice named {name!r} exists already; delete it first or pick another name")
        voice = Voice(
            name=name,
            transcript=transcript,
            audio_path=folder / "voice.wav",
            seconds=clip.seconds,
            sample_rate=clip.sample_rate,
            locale=locale,
            gender=gender,
            description=description,
            created=time.time(),
        )
        self._store(voice, clip, {})
        return voice

    def add_custom(self, clip: AudioClip, label: str, transcript: str, authorisation: Authorisation | None) -> Voice:
        """A custom voice of OpenAI's API under a new `voice_…` id, `label` its OpenAI name. Its transcript may be
        empty (PATCH gives it one later); the record of the consent that authorised it is stored with it."""
        check_speech(clip, "audio_sample")
        name = f"voice_{secrets.token_hex(16)}"
        voice = Voice(
            name=name,
            transcript=checked_transcript(transcript, required=False),
            audio_path=self._root / name / "voice.wav",
            seconds=clip.seconds,
            sample_rate=clip.sample_rate,
            created=time.time(),
            label=checked_label(label, "name"),
            openai_type=AUDIO_SAMPLE,
            consent=authorisation.consent if authorisation else None,
        )
        self._store(voice, clip, authorisation.files if authorisation else {})
        return voice

    def _store(self, voice: Voice, clip: AudioClip, attached: Mapping[str, bytes]) -> None:
        files = {"voice.wav": encoded_wav(clip), "voice.json": self._metadata(voice), **attached}
        store_folder(self._root, voice.name, files)

    @staticmethod
    def _metadata(voice: Voice) -> bytes:
        return json.dumps(voice.public() | {"seconds": voice.seconds}, indent=2).encode("utf-8")

    def update(
        self,
        name: str,
        transcript: str | None = None,
        label: str | None = None,
        description: str | None = None,
    ) -> Voice:
        """Change an uploaded voice's transcript, label or description (None leaves one as it is; an empty
        description removes it). Presets are read-only."""
        if name in self._presets:
            raise VoiceConflict(f"{name!r} is a preset from the configuration and cannot be changed here", "voice")
        changes: dict[str, Any] = {}
        if transcript is not None:
            changes["transcript"] = checked_transcript(transcript, required=True)
        if label is not None:
            changes["label"] = checked_label(label, "label")
        if description is not None:
            changes["description"] = description.strip() or None
        with self._changing:
            voice = replace(self.get(name), **changes)
            try:
                replace_file(self._folder(name) / "voice.json", self._metadata(voice))
            except FileNotFoundError as error:
                raise self._unknown(name) from error
        return voice

    def delete(self, name: str) -> Voice:
        if name in self._presets:
            raise VoiceConflict(f"{name!r} is a preset from the configuration and cannot be deleted here")
        voice = self.get(name)
        if not remove_folder(self._root, voice.name):
            raise self._unknown(name)
        return voice

    def custom(self) -> list[Voice]:
        """The custom voices of OpenAI's API, newest first (the order of their lists)."""
        custom = [voice for voice in self.all() if voice.openai_type is not None]
        return sorted(custom, key=lambda voice: (voice.created or 0.0, voice.name), reverse=True)

    def custom_page(self, after: str | None, limit: int) -> Page[Voice]:
        return page_after(self.custom(), lambda voice: voice.name, after, limit)

    def get_custom(self, voice_id: str) -> Voice:
        """A custom voice by its `voice_…` id; any other id, a library voice's name included, is unknown."""
        voice = self._load(self._root / voice_id) if CUSTOM_VOICE_ID.fullmatch(voice_id) else None
        if voice is None or voice.openai_type is None:
            raise UnknownVoice(f"no custom voice {voice_id[:80]!r}; see GET /v1/audio/voices", "voice_id")
        return voice

    def delete_custom(self, voice_id: str) -> Voice:
        """Delete a custom voice (its consent stays, as at OpenAI)."""
        voice = self.get_custom(voice_id)
        if not remove_folder(self._root, voice.name):
            raise UnknownVoice(f"no custom voice {voice_id!r}: it was just deleted", "voice_id")
        return voice

    def authorised_by(self, consent: str) -> list[str]:
        """The voices the consent `consent` authorised."""
        return [voice.name for voice in self.all() if voice.consent == consent]

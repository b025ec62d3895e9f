"""The voice library: named reference clips with their transcripts, for cloning engines.

Presets come from the models file and are read-only; uploaded voices live under `<data dir>/voices/<name>/`
(`voice.wav` and `voice.json`) and survive restarts.
"""

from __future__ import annotations

import errno
import io
import json
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from service.engines.base import AudioClip
from service.errors import Conflict, InsufficientStorage, NotFound, ServiceError

VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_TRANSCRIPT_CHARS = 2000


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

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the file's location."""
        data = asdict(self)
        del data["audio_path"]
        data["seconds"] = round(self.seconds, 3)
        return data


def validate_name(name: str) -> str:
    if not VOICE_NAME.fullmatch(name):
        raise VoiceError(
            f"voice name {name!r} is not allowed: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


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


class VoiceLibrary:
    def __init__(self, data_dir: Path, presets: list[Voice]) -> None:
        self._root = data_dir / "voices"
        self._presets = {voice.name: voice for voice in presets}
        self._sweep_staging()

    def _sweep_staging(self) -> None:
        """Remove staging folders an add left when the server stopped midway (voice names never start with '.')."""
        for leftover in self._root.glob(".*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)

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

    def get(self, name: str) -> Voice:
        if name in self._presets:
            return self._presets[name]
        if not VOICE_NAME.fullmatch(name):
            raise VoiceError(f"{name!r} is not a voice name (letters, digits, '-' and '_')", "voice")
        voice = self._load(self._folder(name))
        if voice is None:
            raise UnknownVoice(f"no voice named {name!r}; voices: {', '.join(self.names()) or 'none yet'}", "voice")
        return voice

    def clip(self, name: str) -> tuple[Voice, AudioClip]:
        voice = self.get(name)
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
        if not transcript.strip():
            raise VoiceError("transcript must say what the clip says", "transcript")
        if len(transcript) > MAX_TRANSCRIPT_CHARS:
            raise VoiceError(f"transcript is longer than {MAX_TRANSCRIPT_CHARS} characters", "transcript")
        if name in self._presets or folder.exists():
            raise VoiceConflict(f"a voice named {name!r} exists already; delete it first or pick another name")
        voice = Voice(
            name=name,
            transcript=transcript.strip(),
            audio_path=folder / "voice.wav",
            seconds=clip.seconds,
            sample_rate=clip.sample_rate,
            locale=locale,
            gender=gender,
            description=description,
            created=time.time(),
        )
        try:
            self._store(voice, encoded_wav(clip))
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise VoiceStorageFull(
                    f"the voice library's disk is full ({error.strerror}); {name!r} was not stored", None
                ) from error
            raise
        return voice

    def _store(self, voice: Voice, wav: bytes) -> None:
        """Write the voice to a staging folder and rename it into place; on failure nothing is left."""
        folder = self._folder(voice.name)
        self._root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{voice.name}-", dir=self._root))
        try:
            (staging / "voice.wav").write_bytes(wav)
            meta = voice.public() | {"seconds": voice.seconds}
            (staging / "voice.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            staging.rename(folder)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            if folder.exists():
                raise VoiceConflict(f"a voice named {voice.name!r} was just added by another request") from error
            raise

    def delete(self, name: str) -> Voice:
        if name in self._presets:
            raise VoiceConflict(f"{name!r} is a preset from the configuration and cannot be deleted here")
        voice = self.get(name)
        shutil.rmtree(self._folder(name))
        return voice

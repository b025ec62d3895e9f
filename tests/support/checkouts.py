"""Real Step-Audio-EditX checkouts for the tests, and the real speech clips they carry.

`STEP_AUDIO_CHECKOUTS` names folders (separated by `:`) that hold checkouts, or are one: every folder under them
with a `tts.py` and a `tokenizer.py` counts. `make test` points it at ../shared/step-audio-editx (the upstream
repository and the fork users migrate from); point it at your own checkout to run the same tests against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import soundfile

CHECKOUTS_ENV = "STEP_AUDIO_CHECKOUTS"


def _is_checkout(folder: Path) -> bool:
    return (folder / "tts.py").is_file() and (folder / "tokenizer.py").is_file()


@cache
def checkouts() -> tuple[Path, ...]:
    """Every checkout found under STEP_AUDIO_CHECKOUTS, in a stable order."""
    found: list[Path] = []
    for root in filter(None, os.environ.get(CHECKOUTS_ENV, "").split(os.pathsep)):
        base = Path(root).resolve()
        candidates = [base] if _is_checkout(base) else sorted(path for path in base.iterdir() if path.is_dir())
        found += [candidate for candidate in candidates if _is_checkout(candidate)]
    return tuple(found)


@dataclass(frozen=True)
class ExampleVoice:
    """One of a checkout's `examples/*.wav` with what it says (`examples/text.txt`)."""

    path: Path
    transcript: str

    @property
    def name(self) -> str:
        return self.path.stem

    def read(self) -> bytes:
        return self.path.read_bytes()

    @property
    def seconds(self) -> float:
        return float(soundfile.info(self.path).duration)


@cache
def example_voices() -> tuple[ExampleVoice, ...]:
    """The real speech clips of the first checkout that has them; none without a checkout."""
    for checkout in checkouts():
        listing = checkout / "examples" / "text.txt"
        if not listing.is_file():
            continue
        voices = []
        for line in listing.read_text(encoding="utf-8").splitlines():
            name, _, transcript = line.strip().partition(" ")
            if name.endswith(".wav") and (checkout / "examples" / name).is_file():
                voices.append(ExampleVoice(checkout / "examples" / name, transcript.strip()))
        if voices:
            return tuple(voices)
    return ()


def english_voice() -> ExampleVoice | None:
    """The English zero-shot prompt (44.1 kHz speech, 5 s), the clip upstream's own README clones from."""
    return next((voice for voice in example_voices() if voice.name == "zero_shot_en_prompt"), None)

"""Test audio: sine tones and WAV files made of them."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import soundfile

RATE = 24000


def tone(seconds: float, rate: int = RATE, channels: int = 1, frequency: float = 220.0) -> npt.NDArray[np.float32]:
    """A sine tone, (frames,) when mono and (frames, channels) otherwise."""
    times = np.arange(round(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * frequency * times)).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono


def wav_bytes(seconds: float, rate: int = RATE, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(seconds, rate, channels), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()

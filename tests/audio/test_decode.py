"""AudioDecoder's bounds: what a header declares is checked before decoding, and decoding reads block by block,
down-mixed as it goes, never past the allowed length."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from service.audio.decode import AudioDecoder
from service.controllers.errors import ApiError, as_api_error
from service.errors import ServiceError
from tests.support.audio import RATE, tone

# libsndfile's frame count for a file whose length it cannot tell (SF_COUNT_MAX)
UNKNOWN_LENGTH = 2**63 - 1


def decoder(max_seconds: float = 30) -> AudioDecoder:
    return AudioDecoder(RATE, max_seconds=max_seconds, max_bytes=64 << 20, url_prefixes=())


def encoded(samples: npt.NDArray[np.float32], rate: int, audio_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=audio_format, subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every SoundFile.read the decoder makes: (frames asked for, channels, frames returned)."""
    calls: list[tuple[int, int, int]] = []
    read = soundfile.SoundFile.read

    def recording_read(self: soundfile.SoundFile, frames: int = -1, *args: Any, **kwargs: Any) -> Any:
        result = read(self, frames, *args, **kwargs)
        calls.append((frames, self.channels, len(result)))
        return result

    monkeypatch.setattr(soundfile.SoundFile, "read", recording_read)
    return calls


def refusal(data: bytes, audio_decoder: AudioDecoder | None = None) -> ApiError:
    """The decoder's refusal of `data`, as the API answers it."""
    with pytest.raises(ServiceError) as error:
        (audio_decoder or decoder()).decode(data, "audio")
    return as_api_error(error.value)


def test_a_header_longer_than_the_limit_is_refused_before_anything_is_decoded(
    reads: list[tuple[int, int, int]],
) -> None:
    error = refusal(encoded(np.zeros((48000 * 40, 8), np.float32), 48000, "FLAC"))
    assert (error.status, error.code, error.param) == (400, "audio_too_long", "audio")
    assert error.message == "audio is 40.0 s long; the limit is 30 s"
    assert reads == []


def test_a_file_of_unknown_length_is_read_no_further_than_the_limit(
    reads: list[tuple[int, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header that tells nothing (or too little) of the length: decoding itself stops just past the limit."""
    data = encoded(tone(40), RATE)
    monkeypatch.setattr(soundfile.SoundFile, "frames", property(lambda _: UNKNOWN_LENGTH))
    error = refusal(data, decoder(max_seconds=5))
    assert (error.status, error.code, error.param) == (400, "audio_too_long", "audio")
    assert "the limit is 5 s" in error.message
    assert sum(returned for _, _, returned in reads) == 5 * RATE + 1


def test_many_channels_are_read_in_blocks_and_mixed_down_as_they_come(reads: list[tuple[int, int, int]]) -> None:
    """8 channels at 48 kHz for the full allowed length: no read holds more than 1 MiB of samples."""
    rate, seconds = 48000, 30
    levels = np.linspace(-0.4, 0.4, 8, dtype=np.float32)
    data = encoded(np.ones((rate * seconds, 8), np.float32) * levels, rate, "FLAC")
    clip = decoder(max_seconds=seconds).decode(data, "audio")
    assert clip.sample_rate == RATE
    assert clip.samples.shape == (RATE * seconds,)
    assert float(np.abs(clip.samples[RATE:-RATE] - levels.mean()).max()) < 1e-3
    assert reads, "the decoder read nothing through SoundFile.read"
    assert all(asked > 0 and asked * channels <= 1 << 18 for asked, channels, _ in reads), reads[:3]
    assert sum(returned for _, _, returned in reads) == rate * seconds


@pytest.mark.parametrize(
    ("channels", "rate", "code", "says"),
    [
        (64, RATE, "too_many_channels", "audio has 64 channels; at most 32 are accepted"),
        (1, 10_000_000, "unsupported_sample_rate", "audio is sampled at 10000000 Hz; 1000 to 384000 Hz are accepted"),
        (1, 10, "unsupported_sample_rate", "audio is sampled at 10 Hz; 1000 to 384000 Hz are accepted"),
    ],
)
def test_absurd_channel_counts_and_rates_are_refused_from_the_header(
    reads: list[tuple[int, int, int]], channels: int, rate: int, code: str, says: str
) -> None:
    error = refusal(encoded(np.zeros((max(rate, 1000), channels), np.float32), rate))
    assert (error.status, error.code, error.param, error.message) == (400, code, "audio", says)
    assert reads == []


def test_a_file_that_is_not_audio_is_named_without_python_internals() -> None:
    error = refusal(b"just some text, certainly not a WAV file\n" * 50)
    assert (error.status, error.code, error.param) == (400, "invalid_audio", "audio")
    assert error.message == "audio is not audio this server can read (wav, flac, ogg, mp3): Format not recognised."

"""Encoding float32 mono audio into the response formats, whole or chunk by chunk as it is synthesized."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol

import lameenc
import numpy as np
import numpy.typing as npt
import soundfile
import soxr

Audio = npt.NDArray[np.float32]

OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPENAI_PCM_SAMPLE_RATE = 24000
_UNKNOWN_LENGTH = 0xFFFFFFFF


class AudioFormat(StrEnum):
    MP3 = "mp3"
    OPUS = "opus"
    AAC = "aac"
    FLAC = "flac"
    WAV = "wav"
    PCM = "pcm"


MEDIA_TYPES = {
    AudioFormat.MP3: "audio/mpeg",
    AudioFormat.OPUS: "audio/ogg; codecs=opus",
    AudioFormat.AAC: "audio/aac",
    AudioFormat.FLAC: "audio/flac",
    AudioFormat.WAV: "audio/wav",
    AudioFormat.PCM: "audio/pcm",
}
SUPPORTED_FORMATS = tuple(f for f in AudioFormat if f is not AudioFormat.AAC)


def _int16(audio: Audio) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


_CODEC_SAMPLE_RATES = {AudioFormat.OPUS: OPUS_SAMPLE_RATES, AudioFormat.MP3: MP3_SAMPLE_RATES}


def output_sample_rate(audio_format: AudioFormat, engine_rate: int, requested: int | None) -> int:
    """The rate a response is encoded at: the requested one (or OpenAI's 24 kHz for pcm, else the engine's),
    moved up to the nearest rate the codec can write where it has a fixed set."""
    rate = requested or (OPENAI_PCM_SAMPLE_RATE if audio_format is AudioFormat.PCM else engine_rate)
    allowed = _CODEC_SAMPLE_RATES.get(audio_format)
    if allowed is not None and rate not in allowed:
        rate = min(allowed, key=lambda candidate: (candidate < rate, abs(candidate - rate)))
    return rate


class Encoder(Protocol):
    def encode(self, audio: Audio) -> bytes:
        """Bytes ready to send for this chunk (possibly none yet)."""
        ...

    def finish(self) -> bytes:
        """The remaining bytes once all audio has been given."""
        ...


class PcmEncoder:
    """Raw 16-bit little-endian mono samples."""

    def encode(self, audio: Audio) -> bytes:
        return _int16(audio)

    def finish(self) -> bytes:
        return b""


class WavEncoder:
    """WAV with exact sizes when the length is known in advance, else the streaming convention (0xFFFFFFFF)."""

    def __init__(self, sample_rate: int, total_samples: int | None = None) -> None:
        self._sample_rate = sample_rate
        self._total_samples = total_samples
        self._header_sent = False

    def _header(self) -> bytes:
        data_bytes = _UNKNOWN_LENGTH if self._total_samples is None else self._total_samples * 2
        riff_bytes = _UNKNOWN_LENGTH if self._total_samples is None else 36 + data_bytes
        return (
            b"RIFF"
            + struct.pack("<I", riff_bytes)
            + b"WAVE"
            + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, self._sample_rate, self._sample_rate * 2, 2, 16)
            + b"data"
            + struct.pack("<I", data_bytes)
        )

    def encode(self, audio: Audio) -> bytes:
        header = b"" if self._header_sent else self._header()
        self._header_sent = True
        return header + _int16(audio)

    def finish(self) -> bytes:
        return b"" if self._header_sent else self.encode(np.zeros(0, np.float32))


class Mp3Encoder:
    def __init__(self, sample_rate: int, bitrate_kbps: int = 64) -> None:
        self._lame = lameenc.Encoder()
        self._lame.set_bit_rate(bitrate_kbps)
        self._lame.set_in_sample_rate(sample_rate)
        self._lame.set_channels(1)
        self._lame.set_quality(5)
        self._started = False

    def encode(self, audio: Audio) -> bytes:
        if not len(audio):
            return b""
        self._started = True
        return bytes(self._lame.encode(_int16(audio)))

    def finish(self) -> bytes:
        return bytes(self._lame.flush()) if self._started else b""


class _GrowingBuffer(io.RawIOBase):
    """A seekable in-memory file whose new bytes can be taken as they appear."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._position = 0
        self._taken = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        end = self._position + len(data)
        if end > len(self._data):
            self._data.extend(bytes(end - len(self._data)))
        self._data[self._position : end] = data
        self._position = end
        return len(data)

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._position + size
        data = bytes(self._data[self._position : end])
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._data)}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data = bytes(self._data[self._taken :])
        self._taken = len(self._data)
        return data


class OggOpusEncoder:
    """Ogg Opus through libsndfile; Ogg pages carry no total length, so they stream as written."""

    def __init__(self, sample_rate: int) -> None:
        self._buffer = _GrowingBuffer()
        self._file = soundfile.SoundFile(
            self._buffer, "w", samplerate=sample_rate, channels=1, format="OGG", subtype="OPUS"
        )

    def encode(self, audio: Audio) -> bytes:
        self._file.write(audio)
        return self._buffer.take()

    def finish(self) -> bytes:
        self._file.close()
        return self._buffer.take()


class FlacEncoder:
    """FLAC's header records the total length, so the file is written once all audio is there."""

    def __init__(self, sample_rate: int) -> None:
        self._sample_rate = sample_rate
        self._chunks: list[Audio] = []

    def encode(self, audio: Audio) -> bytes:
        self._chunks.append(audio)
        return b""

    def finish(self) -> bytes:
        output = io.BytesIO()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        soundfile.write(output, audio, self._sample_rate, format="FLAC", subtype="PCM_16")
        return output.getvalue()


class ResamplingEncoder:
    """Resamples each chunk (keeping the filter's state across chunks) before handing it to another encoder."""

    def __init__(self, inner: Encoder, from_rate: int, to_rate: int) -> None:
        self._inner = inner
        self._resampler = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality="HQ")

    def encode(self, audio: Audio) -> bytes:
        return self._inner.encode(self._resampler.resample_chunk(audio, last=False))

    def finish(self) -> bytes:
        return self._inner.encode(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)) + (
            self._inner.finish()
        )


_ENCODERS: dict[AudioFormat, Callable[[int, int | None], Encoder]] = {
    AudioFormat.PCM: lambda rate, total: PcmEncoder(),
    AudioFormat.WAV: WavEncoder,
    AudioFormat.MP3: lambda rate, total: Mp3Encoder(rate),
    AudioFormat.OPUS: lambda rate, total: OggOpusEncoder(rate),
    AudioFormat.FLAC: lambda rate, total: FlacEncoder(rate),
}


def create_encoder(
    audio_format: AudioFormat, engine_rate: int, output_rate: int, total_samples: int | None = None
) -> Encoder:
    """An encoder for `audio_format` taking audio at `engine_rate` and writing it at `output_rate`."""
    if audio_format not in _ENCODERS:
        raise ValueError(
            f"response_format {audio_format.value!r} is not supported; use one of "
            f"{[f.value for f in SUPPORTED_FORMATS]}"
        )
    if engine_rate == output_rate:
        return _ENCODERS[audio_format](output_rate, total_samples)
    return ResamplingEncoder(_ENCODERS[audio_format](output_rate, None), engine_rate, output_rate)


def encode_whole(audio_format: AudioFormat, audio: Audio, engine_rate: int, output_rate: int) -> bytes:
    """A complete file, with exact lengths in its header."""
    if engine_rate != output_rate:
        audio = soxr.resample(audio, engine_rate, output_rate, quality="HQ").astype(np.float32)
    encoder = create_encoder(audio_format, output_rate, output_rate, total_samples=len(audio))
    return encoder.encode(audio) + encoder.finish()

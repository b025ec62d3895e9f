"""Encoding float32 mono audio into the response formats, whole or chunk by chunk as it is synthesized."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import av
import lameenc
import numpy as np
import numpy.typing as npt
import soxr

Audio = npt.NDArray[np.float32]

AAC_SAMPLE_RATES = tuple(sorted(av.Codec("aac", "w").audio_rates or ()))
OPUS_SAMPLE_RATES = tuple(sorted(av.Codec("libopus", "w").audio_rates or ()))
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
SUPPORTED_FORMATS = tuple(AudioFormat)


def _clipped(audio: Audio) -> Audio:
    return np.clip(audio, -1.0, 1.0)


def _int16(audio: Audio) -> npt.NDArray[np.int16]:
    return (_clipped(audio) * 32767.0).astype("<i2")


_CODEC_SAMPLE_RATES = {
    AudioFormat.AAC: AAC_SAMPLE_RATES,
    AudioFormat.OPUS: OPUS_SAMPLE_RATES,
    AudioFormat.MP3: MP3_SAMPLE_RATES,
}


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
        return _int16(audio).tobytes()

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
        return header + _int16(audio).tobytes()

    def finish(self) -> bytes:
        return b"" if self._header_sent else self.encode(np.zeros(0, np.float32))


class Mp3Encoder:
    """MP3 frames through lameenc's LAME: the same encoder and settings as PyAV's libmp3lame, over three times as
    fast (60 s of speech in 0.25 s against 0.9 s here; docs/benchmarks.md, "Encoders")."""

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
        return bytes(self._lame.encode(_int16(audio).tobytes()))

    def finish(self) -> bytes:
        return bytes(self._lame.flush()) if self._started else b""


@dataclass(frozen=True)
class Codec:
    """How PyAV writes a format: FFmpeg's muxer and encoder, the sample format the encoder takes, its settings."""

    muxer: str
    encoder: str
    sample_format: str
    bit_rate: int | None = None
    muxer_options: dict[str, str] = field(default_factory=dict)
    encoder_options: dict[str, str] = field(default_factory=dict)


CODECS = {
    # ADTS: every frame carries its own header, so any prefix of whole frames plays
    AudioFormat.AAC: Codec("adts", "aac", "fltp", bit_rate=64_000),
    # an Ogg page every 250 ms (FFmpeg's default is 1 s): the muxer holds a page back until the next one is full, so
    # a stream lags its audio by half a second rather than two, for 2 % more bytes (0.6 kb/s of page headers)
    AudioFormat.OPUS: Codec("ogg", "libopus", "flt", bit_rate=32_000, muxer_options={"page_duration": "250000"}),
    # no 8 KiB of padding after the header (FFmpeg's default), which nobody edits in a response
    AudioFormat.FLAC: Codec(
        "flac",
        "flac",
        "s16",
        muxer_options={"metadata_header_padding": "0"},
        encoder_options={"compression_level": "5"},
    ),
}


class _Pending:
    """A write-only, unseekable file: what the muxer has written since the last `take`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class PyAvEncoder:
    """A format FFmpeg encodes and muxes, through PyAV. Streamed, the muxer writes to an unseekable file and each
    call returns whole frames (ADTS) or pages (Ogg) as they are done; given a seekable one (`whole`), it goes back
    to write exact lengths in the header on `finish` (FLAC's STREAMINFO), so nothing is returned before."""

    def __init__(self, codec: Codec, sample_rate: int, whole: bool = False) -> None:
        self._whole = io.BytesIO() if whole else None
        self._pending = _Pending()
        self._container = av.open(
            self._pending if self._whole is None else self._whole,
            "w",
            format=codec.muxer,
            container_options={"flush_packets": "1"} | codec.muxer_options,
        )
        stream = self._container.add_stream(codec.encoder, rate=sample_rate, options=codec.encoder_options)
        assert isinstance(stream, av.AudioStream)
        self._stream = stream
        self._stream.layout = "mono"
        self._stream.format = codec.sample_format
        if codec.bit_rate is not None:
            self._stream.bit_rate = codec.bit_rate
        self._sample_rate = sample_rate
        self._sample_format = codec.sample_format
        self._samples_given = 0
        self._container.start_encoding()  # the header now: a stream given no audio still sends its format's header

    def encode(self, audio: Audio) -> bytes:
        """Partial codec frames wait in PyAV's frame-size buffer until the next call or `finish`."""
        if len(audio):
            samples = _int16(audio) if self._sample_format == "s16" else _clipped(audio)
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=self._sample_format, layout="mono")
            frame.sample_rate = self._sample_rate
            frame.pts = self._samples_given
            self._samples_given += len(audio)
            self._container.mux(self._stream.encode(frame))
        return b"" if self._whole else self._pending.take()

    def finish(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._whole.getvalue() if self._whole else self._pending.take()


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
    AudioFormat.OPUS: lambda rate, total: PyAvEncoder(CODECS[AudioFormat.OPUS], rate),
    AudioFormat.AAC: lambda rate, total: PyAvEncoder(CODECS[AudioFormat.AAC], rate),
    AudioFormat.FLAC: lambda rate, total: PyAvEncoder(CODECS[AudioFormat.FLAC], rate, whole=total is not None),
}


def create_encoder(
    audio_format: AudioFormat, engine_rate: int, output_rate: int, total_samples: int | None = None
) -> Encoder:
    """An encoder for `audio_format` taking audio at `engine_rate` and writing it at `output_rate`; with
    `total_samples` known, headers that record the length (WAV, FLAC) carry it."""
    if engine_rate == output_rate:
        return _ENCODERS[audio_format](output_rate, total_samples)
    return ResamplingEncoder(_ENCODERS[audio_format](output_rate, None), engine_rate, output_rate)


def encode_whole(audio_format: AudioFormat, audio: Audio, engine_rate: int, output_rate: int) -> bytes:
    """A complete file, with exact lengths in its header."""
    if engine_rate != output_rate:
        audio = soxr.resample(audio, engine_rate, output_rate, quality="HQ").astype(np.float32)
    encoder = create_encoder(audio_format, output_rate, output_rate, total_samples=len(audio))
    return encoder.encode(audio) + encoder.finish()

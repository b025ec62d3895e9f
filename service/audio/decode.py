"""Audio that clients send (uploads, base64, allowed URLs): decoded, down-mixed, resampled, checked."""

from __future__ import annotations

import base64
import binascii
import io
import math

import anyio
import httpx
import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from service.engines.base import AudioClip
from service.errors import InvalidRequest, TooLarge

MIN_SECONDS = 0.2
MAX_CHANNELS = 32
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
# samples (frames times channels) decoded at once: 1 MiB of float32, whatever the channel count
BLOCK_SAMPLES = 1 << 18
# libsndfile's frame count for a file whose length it cannot tell (SF_COUNT_MAX)
UNKNOWN_LENGTH = 2**63 - 1


class AudioDecoder:
    """Turns client audio into mono float32 at `sample_rate`, within the configured limits."""

    def __init__(self, sample_rate: int, max_seconds: float, max_bytes: int, url_prefixes: tuple[str, ...]) -> None:
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.url_prefixes = url_prefixes

    def decode(self, data: bytes, param: str) -> AudioClip:
        if len(data) > self.max_bytes:
            raise TooLarge(
                f"{param} is {len(data)} bytes; the limit is {self.max_bytes}", param=param, code="audio_too_large"
            )
        try:
            with soundfile.SoundFile(io.BytesIO(data)) as sound:
                self._check_header(sound, param)
                samples, seconds = self._read_mono(sound, param)
        except soundfile.LibsndfileError as error:
            raise _unreadable(param, error.error_string) from error
        except (RuntimeError, TypeError, ValueError) as error:
            raise _unreadable(param, str(error)) from error
        if seconds < MIN_SECONDS:
            raise InvalidRequest(
                f"{param} is {seconds:.2f} s long; at least {MIN_SECONDS} s is needed",
                param=param,
                code="audio_too_short",
            )
        return AudioClip(samples, self.sample_rate)

    def _check_header(self, sound: soundfile.SoundFile, param: str) -> None:
        """Channels, rate and length as the header declares them, before anything is decoded."""
        if sound.channels > MAX_CHANNELS:
            raise InvalidRequest(
                f"{param} has {sound.channels} channels; at most {MAX_CHANNELS} are accepted",
                param=param,
                code="too_many_channels",
            )
        if not MIN_SAMPLE_RATE <= sound.samplerate <= MAX_SAMPLE_RATE:
            raise InvalidRequest(
                f"{param} is sampled at {sound.samplerate} Hz; {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz are accepted",
                param=param,
                code="unsupported_sample_rate",
            )
        if sound.frames != UNKNOWN_LENGTH and sound.frames > self.max_seconds * sound.samplerate:
            raise self._too_long(param, f"{sound.frames / sound.samplerate:.1f} s")

    def _read_mono(self, sound: soundfile.SoundFile, param: str) -> tuple[npt.NDArray[np.float32], float]:
        """The clip mixed down and resampled block by block, and its length in seconds; refused as soon as it runs
        past the limit, whatever the header said."""
        allowed = math.floor(self.max_seconds * sound.samplerate)
        block = max(1, BLOCK_SAMPLES // sound.channels)
        resampler = (
            soxr.ResampleStream(sound.samplerate, self.sample_rate, 1, dtype="float32", quality="HQ")
            if sound.samplerate != self.sample_rate
            else None
        )
        pieces: list[npt.NDArray[np.float32]] = []
        frames = 0
        while True:
            wanted = min(block, allowed + 1 - frames)
            samples = sound.read(frames=wanted, dtype="float32", always_2d=True)
            frames += len(samples)
            if frames > allowed:
                raise self._too_long(param, f"more than {self.max_seconds:g} s")
            mono = samples.mean(axis=1, dtype=np.float32)
            ended = len(samples) < wanted
            pieces.append(resampler.resample_chunk(mono, last=ended) if resampler else mono)
            if ended:
                return np.concatenate(pieces), frames / sound.samplerate

    def _too_long(self, param: str, length: str) -> InvalidRequest:
        return InvalidRequest(
            f"{param} is {length} long; the limit is {self.max_seconds:g} s", param=param, code="audio_too_long"
        )

    def conform(self, clip: AudioClip) -> AudioClip:
        """A stored clip at the rate engines are given."""
        if clip.sample_rate == self.sample_rate:
            return clip
        samples = soxr.resample(clip.samples, clip.sample_rate, self.sample_rate, quality="HQ")
        return AudioClip(samples.astype(np.float32), self.sample_rate)

    def decode_base64(self, text: str, param: str) -> AudioClip:
        try:
            data = base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise InvalidRequest(f"{param} is not valid base64: {error}", param=param, code="invalid_base64") from error
        return self.decode(data, param)

    async def read(self, data: bytes, param: str) -> AudioClip:
        """`decode` in a worker thread, so a large upload does not hold up other requests."""
        return await anyio.to_thread.run_sync(self.decode, data, param)

    async def read_base64(self, text: str, param: str) -> AudioClip:
        return await anyio.to_thread.run_sync(self.decode_base64, text, param)

    async def fetch(self, url: str, param: str) -> AudioClip:
        """Audio from a URL, only under a prefix the operator allowed (the server never fetches arbitrary URLs)."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as error:
            raise InvalidRequest(f"{param} is not a URL: {error}", param=param, code="invalid_value") from error
        normalized = str(parsed)
        segments = parsed.raw_path.decode(errors="replace").split("?")[0].split("/")
        unsafe = ".." in segments or "." in segments or parsed.userinfo or "%2e" in url.lower()
        if unsafe or not any(normalized.startswith(str(httpx.URL(prefix))) for prefix in self.url_prefixes):
            raise InvalidRequest(
                f"{param}: fetching audio from URLs is not allowed for this URL; send the audio as "
                "base64 or as an upload (operators can allow URL prefixes with AUDIO_URL_PREFIXES)",
                param=param,
                code="url_not_allowed",
            )
        try:
            async with (
                httpx.AsyncClient(timeout=30, follow_redirects=False) as client,
                client.stream("GET", url) as response,
            ):
                response.raise_for_status()
                data = bytearray()
                async for piece in response.aiter_bytes():
                    data += piece
                    if len(data) > self.max_bytes:
                        break
        except httpx.HTTPError as error:
            raise InvalidRequest(f"{param}: could not fetch {url}: {error}", param=param, code="url_failed") from error
        return await self.read(bytes(data), param)


def _unreadable(param: str, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param} is not audio this server can read (wav, flac, ogg, mp3): {reason}",
        param=param,
        code="invalid_audio",
    )

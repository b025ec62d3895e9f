"""Audio that clients send (uploads, base64, allowed URLs): decoded, down-mixed, resampled, checked."""

from __future__ import annotations

import base64
import binascii
import io

import anyio
import httpx
import numpy as np
import soundfile
import soxr

from service.engines.base import AudioClip
from service.errors import ApiError

MIN_SECONDS = 0.2


class AudioDecoder:
    """Turns client audio into mono float32 at `sample_rate`, within the configured limits."""

    def __init__(self, sample_rate: int, max_seconds: float, max_bytes: int, url_prefixes: tuple[str, ...]) -> None:
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.url_prefixes = url_prefixes

    def decode(self, data: bytes, param: str) -> AudioClip:
        if len(data) > self.max_bytes:
            raise ApiError(
                413, f"{param} is {len(data)} bytes; the limit is {self.max_bytes}", param=param, code="audio_too_large"
            )
        try:
            samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
            raise ApiError(
                400,
                f"{param} is not audio this server can read (wav, flac, ogg, mp3): {error}",
                param=param,
                code="invalid_audio",
            ) from error
        seconds = len(samples) / rate
        if seconds > self.max_seconds:
            raise ApiError(
                400,
                f"{param} is {seconds:.1f} s long; the limit is {self.max_seconds:g} s",
                param=param,
                code="audio_too_long",
            )
        if seconds < MIN_SECONDS:
            raise ApiError(
                400,
                f"{param} is {seconds:.2f} s long; at least {MIN_SECONDS} s is needed",
                param=param,
                code="audio_too_short",
            )
        return self.conform(AudioClip(samples.mean(axis=1, dtype=np.float32), int(rate)))

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
            raise ApiError(400, f"{param} is not valid base64: {error}", param=param, code="invalid_base64") from error
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
            raise ApiError(400, f"{param} is not a URL: {error}", param=param, code="invalid_value") from error
        normalized = str(parsed)
        segments = parsed.raw_path.decode(errors="replace").split("?")[0].split("/")
        unsafe = ".." in segments or "." in segments or parsed.userinfo or "%2e" in url.lower()
        if unsafe or not any(normalized.startswith(str(httpx.URL(prefix))) for prefix in self.url_prefixes):
            raise ApiError(
                400,
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
            raise ApiError(400, f"{param}: could not fetch {url}: {error}", param=param, code="url_failed") from error
        return await self.read(bytes(data), param)

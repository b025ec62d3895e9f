"""Audio that clients send (uploads, base64, allowed URLs): decoded, down-mixed, resampled, checked."""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import math
import traceback

import anyio
import av
import httpx
import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from service.engines.base import AudioClip
from service.errors import InvalidRequest, ServiceError, TooLarge

MIN_SECONDS = 0.2
MAX_CHANNELS = 32
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
# samples (frames times channels) decoded at once: 1 MiB of float32, whatever the channel count
BLOCK_SAMPLES = 1 << 18
# libsndfile's frame count for a file whose length it cannot tell (SF_COUNT_MAX)
UNKNOWN_LENGTH = 2**63 - 1
# FFmpeg's audio demuxers tried for what libsndfile cannot read (none that open other files or URLs: no playlists,
# concat lists or image sequences); each is matched against the names FFmpeg gives it ("mov" is mp4 and m4a too)
FFMPEG_DEMUXERS = "aac,ac3,aiff,amr,ape,asf,au,caf,dts,eac3,flac,loas,matroska,mov,mp3,mpc,mpc8,ogg,tta,voc,w64,wav,wv"
# the most samples (frames times channels) one decoded FFmpeg frame may hold, 4 MiB as float32: real codecs' frames
# are far smaller (AAC 1024 a channel, Opus at most 5760); a crafted file claiming more is refused before the frame
# is allocated
MAX_FRAME_SAMPLES = 1 << 20
READABLE_FORMATS = "wav, flac, ogg, opus, mp3, aac, m4a, webm and the other audio formats FFmpeg reads"


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
            samples, seconds = self._decode_mono(data, param)
        except ServiceError as error:
            # a refusal raised in anyio's worker thread is kept in a reference cycle until the garbage collector
            # runs: the frames it was raised from must not keep the audio decoded so far, or a decoder, that long
            traceback.clear_frames(error.__traceback__)
            raise
        if seconds < MIN_SECONDS:
            raise InvalidRequest(
                f"{param} is {seconds:.2f} s long; at least {MIN_SECONDS} s is needed",
                param=param,
                code="audio_too_short",
            )
        return AudioClip(samples, self.sample_rate)

    def _decode_mono(self, data: bytes, param: str) -> tuple[npt.NDArray[np.float32], float]:
        """libsndfile for the formats it reads (the fastest), FFmpeg for the rest and for what libsndfile fails on
        (such as FLAC whose header leaves the length unknown)."""
        try:
            with soundfile.SoundFile(io.BytesIO(data)) as sound:
                self._check_header(sound, param)
                return self._read_mono(sound, param)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
            return self._decode_with_ffmpeg(data, param)

    def _check_format(self, channels: int, sample_rate: int, param: str) -> None:
        if channels > MAX_CHANNELS:
            raise InvalidRequest(
                f"{param} has {channels} channels; at most {MAX_CHANNELS} are accepted",
                param=param,
                code="too_many_channels",
            )
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise InvalidRequest(
                f"{param} is sampled at {sample_rate} Hz; {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz are accepted",
                param=param,
                code="unsupported_sample_rate",
            )

    def _check_header(self, sound: soundfile.SoundFile, param: str) -> None:
        """Channels, rate and length as the header declares them, before anything is decoded."""
        self._check_format(sound.channels, sound.samplerate, param)
        if sound.frames != UNKNOWN_LENGTH and sound.frames > self.max_seconds * sound.samplerate:
            raise _too_long(param, f"{sound.frames / sound.samplerate:.1f} s", self.max_seconds)

    def _read_mono(self, sound: soundfile.SoundFile, param: str) -> tuple[npt.NDArray[np.float32], float]:
        """The clip mixed down and resampled block by block, and its length in seconds; refused as soon as it runs
        past the limit, whatever the header said."""
        clip = _MonoClip(sound.samplerate, self.sample_rate, self.max_seconds, param)
        block = max(1, BLOCK_SAMPLES // sound.channels)
        while True:
            wanted = min(block, clip.allowed + 1 - clip.frames)
            samples = sound.read(frames=wanted, dtype="float32", always_2d=True)
            ended = len(samples) < wanted
            clip.add(samples.mean(axis=1, dtype=np.float32), last=ended)
            if ended:
                return clip.samples()

    def _decode_with_ffmpeg(self, data: bytes, param: str) -> tuple[npt.NDArray[np.float32], float]:
        """What libsndfile cannot read, through FFmpeg's decoders frame by frame, under the same limits; channels
        and rate are checked on the first frame (FFmpeg decodes a few to open the file; each is bounded by
        MAX_FRAME_SAMPLES), since headers may not tell them or, like HE-AAC's, tell half the rate."""
        try:
            with av.open(io.BytesIO(data), "r", container_options={"format_whitelist": FFMPEG_DEMUXERS}) as container:
                if not container.streams.audio:
                    raise _unreadable(param, "it holds no audio stream")
                stream = container.streams.audio[0]
                stream.codec_context.options = {"max_samples": str(MAX_FRAME_SAMPLES)}
                frames = container.decode(stream)
                first = next(frames, None)
                if first is None:
                    return np.zeros(0, np.float32), 0.0
                self._check_format(first.layout.nb_channels, first.sample_rate, param)
                clip = _MonoClip(first.sample_rate, self.sample_rate, self.max_seconds, param)
                to_float = av.AudioResampler(format="fltp")
                for frame in itertools.chain([first], frames):
                    if _frame_format(frame) != _frame_format(first):
                        raise _unreadable(param, "its sample format, channels or rate change part way")
                    for planes in to_float.resample(frame):
                        clip.add(planes.to_ndarray().mean(axis=0, dtype=np.float32))
        except av.FFmpegError as error:
            raise _unreadable(param, error.strerror or str(error)) from error
        clip.add(np.zeros(0, np.float32), last=True)
        return clip.samples()

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


class _MonoClip:
    """Mono pieces of a clip at `source_rate`, refused as soon as they add up to more than `max_seconds` (so nothing
    past the limit is ever kept), and resampled to `sample_rate` a block at a time: FFmpeg's frames are small, and
    thousands of small arrays kept per request would scatter the clip over the allocator's per-thread arenas."""

    def __init__(self, source_rate: int, sample_rate: int, max_seconds: float, param: str) -> None:
        self.allowed = math.floor(max_seconds * source_rate)
        self.frames = 0
        self._source_rate = source_rate
        self._max_seconds = max_seconds
        self._param = param
        self._resampler = (
            soxr.ResampleStream(source_rate, sample_rate, 1, dtype="float32", quality="HQ")
            if source_rate != sample_rate
            else None
        )
        self._pending: list[npt.NDArray[np.float32]] = []
        self._pending_frames = 0
        self._pieces: list[npt.NDArray[np.float32]] = []

    def add(self, mono: npt.NDArray[np.float32], last: bool = False) -> None:
        self.frames += len(mono)
        if self.frames > self.allowed:
            raise _too_long(self._param, f"more than {self._max_seconds:g} s", self._max_seconds)
        self._pending.append(mono)
        self._pending_frames += len(mono)
        if last or self._pending_frames >= BLOCK_SAMPLES:
            block = np.concatenate(self._pending)
            self._pending, self._pending_frames = [], 0
            self._pieces.append(self._resampler.resample_chunk(block, last=last) if self._resampler else block)

    def samples(self) -> tuple[npt.NDArray[np.float32], float]:
        """The clip at `sample_rate`, and its length in seconds."""
        return np.concatenate(self._pieces), self.frames / self._source_rate


def _frame_format(frame: av.AudioFrame) -> tuple[str, str, int]:
    """Sample format, channel layout and rate: what must not change from one decoded frame to the next."""
    return frame.format.name, frame.layout.name, frame.sample_rate


def _too_long(param: str, length: str, max_seconds: float) -> InvalidRequest:
    return InvalidRequest(
        f"{param} is {length} long; the limit is {max_seconds:g} s", param=param, code="audio_too_long"
    )


def _unreadable(param: str, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param} is not audio this server can read ({READABLE_FORMATS}): {reason}",
        param=param,
        code="invalid_audio",
    )

"""Speech requests: validate against the model's capabilities, hold a lease, synthesize, encode, account."""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

import anyio
import msgspec
import numpy as np
import structlog

from service.audio import MEDIA_TYPES, AudioFormat, create_encoder, encode_whole, output_sample_rate
from service.catalog import Catalog, ModelSpec
from service.engines.base import AudioChunk, SynthesisRequest
from service.errors import ApiError
from service.lazy_loader import LazyLoader, Lease
from service.metrics import Metrics
from service.workers import WorkerProcess

log = structlog.get_logger("service.speech")

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class VoiceReference(msgspec.Struct):
    """OpenAI's object form of a voice: `{"id": "..."}`."""

    id: str


class SpeechRequest(msgspec.Struct, kw_only=True):
    """OpenAI's speech request, plus `keep_alive` and `sample_rate`."""

    model: Annotated[str, msgspec.Meta(description="Model id, or tts-1 / tts-1-hd for the default model.")]
    input: Annotated[str, msgspec.Meta(description="Text to speak.")]
    voice: Annotated[
        str | VoiceReference | None,
        msgspec.Meta(description="A voice of the model (name or {id}); OpenAI voice names mean its default voice."),
    ] = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, msgspec.Meta(ge=0.25, le=4.0, description="0.25 to 4.0; 1.0 is normal.")] = 1.0
    instructions: Annotated[
        str | None, msgspec.Meta(description="Delivery instructions; refused by engines that cannot follow them.")
    ] = None
    stream_format: Annotated[
        Literal["audio", "sse"] | None,
        msgspec.Meta(
            description="audio: stream encoded audio as it is made; sse: server-sent events with base64 "
            "chunks; absent: one complete file."
        ),
    ] = None
    sample_rate: (
        Annotated[
            int,
            msgspec.Meta(
                ge=8000, le=48000, description="Output sample rate; default: the model's own (24 kHz for pcm)."
            ),
        ]
        | None
    ) = None
    keep_alive: Annotated[
        str | float | None,
        msgspec.Meta(
            description="How long the model stays loaded after this request: seconds or a duration such "
            "as '10m' or '1h30m'; negative: until unloaded by hand; 0: unload right after it."
        ),
    ] = None


def parse_keep_alive(value: str | float | None) -> float | None:
    """Seconds from a number or a duration such as '10m', '1h30m', '500ms' or '-1'; None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text[1:] if text[:1] in "+-" else text
        parts = _DURATION_PART.findall(body)
        if re.fullmatch(r"\d+(\.\d+)?", body):
            value = sign * float(body)
        elif body and "".join(number + unit for number, unit in parts) == body:
            value = sign * sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
        else:
            raise ApiError(
                400,
                f"keep_alive {value!r} is not a duration: use seconds or forms like '10m', '1h30m', '-1'",
                param="keep_alive",
                code="invalid_value",
            )
    if not math.isfinite(value):
        raise ApiError(400, "keep_alive must be a finite number of seconds", param="keep_alive", code="invalid_value")
    return float(value)


async def server_sent_events(audio: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE stream: `speech.audio.delta` events with base64 audio, then `speech.audio.done`."""
    async for chunk in audio:
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()}
        yield f"data: {json.dumps(event)}\n\n".encode()
    yield b'data: {"type": "speech.audio.done"}\n\n'


def _nothing_to_speak() -> ApiError:
    return ApiError(
        400, "input has nothing the voice can speak: the engine produced no audio", param="input", code="no_audio"
    )


@dataclass
class SpeechPlan:
    """A validated request: which model and voice, and how the audio is encoded."""

    spec: ModelSpec
    synthesis: SynthesisRequest
    audio_format: AudioFormat
    output_rate: int
    keep_alive: float | None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class SpeechResult:
    audio: bytes | AsyncIterator[bytes]
    media_type: str
    headers: dict[str, str]


class SpeechService:
    def __init__(
        self, catalog: Catalog, loader: LazyLoader[WorkerProcess], metrics: Metrics, max_input_chars: int
    ) -> None:
        self._catalog = catalog
        self._loader = loader
        self._metrics = metrics
        self._max_input_chars = max_input_chars

    def plan(self, request: SpeechRequest) -> SpeechPlan:
        """Check everything about the request that can be checked before any model work starts."""
        if not request.input.strip():
            raise ApiError(400, "input must not be empty", param="input", code="invalid_value")
        if len(request.input) > self._max_input_chars:
            raise ApiError(
                400,
                f"input is {len(request.input)} characters; the limit is {self._max_input_chars}",
                param="input",
                code="string_above_max_length",
            )
        spec = self._catalog.resolve(request.model)
        capabilities = spec.capabilities
        named = request.voice.id if isinstance(request.voice, VoiceReference) else request.voice
        voice = named or capabilities.default_voice
        if voice in OPENAI_VOICES and voice not in capabilities.voices:
            voice = capabilities.default_voice
        if voice not in capabilities.voices:
            raise ApiError(
                400,
                f"voice {voice!r} is not a voice of model {spec.id!r}; available: "
                f"{', '.join(capabilities.voices)} (or an OpenAI voice name for the default)",
                param="voice",
                code="invalid_value",
            )
        if request.instructions and not capabilities.supports_instructions:
            raise ApiError(
                400,
                f"model {spec.id!r} cannot follow instructions; leave the field out or pick a model that supports it",
                param="instructions",
                code="unsupported_value",
            )
        if request.speed != 1.0 and not capabilities.supports_speed:
            raise ApiError(400, f"model {spec.id!r} cannot change speed", param="speed", code="unsupported_value")
        audio_format = AudioFormat(request.response_format)
        if audio_format is AudioFormat.AAC:
            raise ApiError(
                400,
                "response_format 'aac' is not available on this server; use mp3, opus, flac, wav or pcm",
                param="response_format",
                code="unsupported_value",
            )
        return SpeechPlan(
            spec=spec,
            synthesis=SynthesisRequest(
                text=request.input, voice=voice, speed=request.speed, instructions=request.instructions
            ),
            audio_format=audio_format,
            output_rate=output_sample_rate(audio_format, capabilities.sample_rate, request.sample_rate),
            keep_alive=parse_keep_alive(request.keep_alive),
        )

    def _headers(self, plan: SpeechPlan, lease: Lease[WorkerProcess]) -> dict[str, str]:
        return {
            "X-Model": plan.spec.id,
            "X-Voice": plan.synthesis.voice,
            "X-Sample-Rate": str(plan.output_rate),
            "X-Cold-Start": "true" if lease.cold else "false",
            "X-Model-Load-Seconds": f"{lease.load_seconds or 0.0:.3f}",
            "X-Queue-Seconds": f"{lease.queued_seconds:.3f}",
        }

    async def speak(self, plan: SpeechPlan) -> SpeechResult:
        """A complete audio file."""
        lease = await self._loader.acquire(plan.spec.id, plan.keep_alive)
        first_audio: float | None = None
        chunks: list[AudioChunk] = []
        try:
            async for chunk in lease.worker.synthesize(plan.synthesis):
                first_audio = first_audio or time.perf_counter()
                chunks.append(chunk)
        finally:
            lease.release()
        if not chunks:
            raise _nothing_to_speak()
        audio = np.concatenate(chunks)
        encoded = await anyio.to_thread.run_sync(
            encode_whole, plan.audio_format, audio, plan.spec.capabilities.sample_rate, plan.output_rate
        )
        audio_seconds = len(audio) / plan.spec.capabilities.sample_rate
        headers = self._headers(plan, lease) | {"X-Audio-Seconds": f"{audio_seconds:.3f}"}
        self._finished(plan, lease, audio_seconds, first_audio, streamed=False)
        return SpeechResult(encoded, MEDIA_TYPES[plan.audio_format], headers)

    async def stream(self, plan: SpeechPlan, *, sse: bool = False) -> SpeechResult:
        """Encoded audio chunks as the engine produces them; errors before the first chunk still reach the client
        as a proper error response."""
        lease = await self._loader.acquire(plan.spec.id, plan.keep_alive)
        chunks = lease.worker.synthesize(plan.synthesis)
        try:
            first = await anext(chunks, None)
            if first is None:
                raise _nothing_to_speak()
        except BaseException:
            lease.release()
            raise
        first_audio = time.perf_counter()
        engine_rate = plan.spec.capabilities.sample_rate
        encoder = create_encoder(plan.audio_format, engine_rate, plan.output_rate)

        async def body() -> AsyncIterator[bytes]:
            samples = 0
            try:
                chunk: AudioChunk | None = first
                while chunk is not None:
                    samples += len(chunk)
                    if encoded := encoder.encode(chunk):
                        yield encoded
                    chunk = await anext(chunks, None)
                if tail := encoder.finish():
                    yield tail
                self._finished(plan, lease, samples / engine_rate, first_audio, streamed=True)
            finally:
                await chunks.aclose()
                lease.release()

        audio = server_sent_events(body()) if sse else body()
        media_type = "text/event-stream" if sse else MEDIA_TYPES[plan.audio_format]
        return SpeechResult(audio, media_type, self._headers(plan, lease))

    def _finished(
        self,
        plan: SpeechPlan,
        lease: Lease[WorkerProcess],
        audio_seconds: float,
        first_audio: float | None,
        *,
        streamed: bool,
    ) -> None:
        seconds = time.perf_counter() - plan.started
        time_to_first_audio = None if first_audio is None else first_audio - plan.started
        self._metrics.request_finished(plan.spec.id, lease.cold, seconds, audio_seconds, time_to_first_audio)
        log.info(
            "request_finished",
            model=plan.spec.id,
            cold=lease.cold,
            seconds=round(seconds, 3),
            load_seconds=None if lease.load_seconds is None else round(lease.load_seconds, 3),
            audio_seconds=round(audio_seconds, 3),
            real_time_factor=round(seconds / audio_seconds, 4) if audio_seconds else None,
            format=plan.audio_format.value,
            streamed=streamed,
        )

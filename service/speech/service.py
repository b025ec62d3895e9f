"""Speech requests once planned: hold a lease, synthesize or edit, encode, account."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import anyio
import numpy as np
import structlog

from service.audio.decode import AudioDecoder
from service.audio.encode import MEDIA_TYPES, create_encoder, encode_whole
from service.engines.base import AudioChunk, EditRequest, EditStep, SynthesisRequest
from service.errors import InvalidRequest, StreamAborted, Timeout
from service.lazy_loader import LazyLoader, Lease
from service.library.voices import VoiceLibrary
from service.lifecycle.worker_client import EngineRequestError, SpeechWorker, WorkerCrashed
from service.metrics import Metrics
from service.models.catalog import Catalog
from service.speech.planner import SpeechPlan, SpeechPlanner

log = structlog.get_logger("service.speech.service")


def _chunks(lease: Lease[SpeechWorker], request: SynthesisRequest | EditRequest) -> AsyncGenerator[AudioChunk, None]:
    """The request's audio from the lease's worker; the lease is released as soon as the worker is done with it,
    so a client that reads slowly does not hold the model."""
    if isinstance(request, SynthesisRequest):
        return lease.worker.synthesize(request, on_finished=lease.release)
    return lease.worker.edit(request, on_finished=lease.release)


def _nothing_to_speak() -> InvalidRequest:
    return InvalidRequest(
        "input has nothing the voice can speak: the engine produced no audio", param="input", code="no_audio"
    )


# output "tokens" are 20 ms frames of audio: engines here share no tokenizer, so usage counts what they produced
AUDIO_FRAMES_PER_SECOND = 50


@dataclass(frozen=True)
class TokenUsage:
    """OpenAI's usage object for speech, counted honestly for engines without a shared tokenizer: input tokens are
    the characters of text the engine was given, output tokens the 20 ms frames of audio it produced."""

    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class AudioTally:
    """Seconds of audio a request has produced so far (a stream's grows as it is sent)."""

    seconds: float = 0.0


def _input_characters(request: SynthesisRequest | EditRequest) -> int:
    if isinstance(request, SynthesisRequest):
        return len(request.text) + len(request.instructions or "")
    return len(request.transcript) + len(request.text or "")


@dataclass(frozen=True)
class SpeechOutcome:
    """What a request produced and how: the encoded audio (whole, or chunks as they are made) and the figures the
    HTTP layer reports; `generation_seconds` and `audio_seconds` are known for whole files only."""

    audio: bytes | AsyncIterator[bytes]
    media_type: str
    model: str
    mode: str
    voice: str
    edits: tuple[EditStep, ...]
    sample_rate: int
    cold: bool
    load_seconds: float
    queue_seconds: float
    ignored_fields: tuple[str, ...]
    input_characters: int
    produced: AudioTally
    generation_seconds: float | None = None
    audio_seconds: float | None = None

    def usage(self) -> TokenUsage:
        """The usage so far: complete once the audio has been sent."""
        return TokenUsage(self.input_characters, math.ceil(round(self.produced.seconds * AUDIO_FRAMES_PER_SECOND, 6)))


def _outcome(
    plan: SpeechPlan,
    lease: Lease[SpeechWorker],
    audio: bytes | AsyncIterator[bytes],
    produced: AudioTally,
    *,
    generation_seconds: float | None = None,
    audio_seconds: float | None = None,
) -> SpeechOutcome:
    synthesis = plan.request if isinstance(plan.request, SynthesisRequest) else None
    return SpeechOutcome(
        audio=audio,
        media_type=MEDIA_TYPES[plan.audio_format],
        model=plan.spec.id,
        mode=plan.mode,
        voice=synthesis.voice if synthesis else "",
        edits=synthesis.edits if synthesis else (),
        sample_rate=plan.output_rate,
        cold=lease.cold,
        load_seconds=lease.load_seconds or 0.0,
        queue_seconds=lease.queued_seconds,
        ignored_fields=plan.ignored_fields,
        input_characters=_input_characters(plan.request),
        produced=produced,
        generation_seconds=generation_seconds,
        audio_seconds=audio_seconds,
    )


class SpeechService:
    def __init__(
        self,
        catalog: Catalog,
        loader: LazyLoader[SpeechWorker],
        metrics: Metrics,
        voices: VoiceLibrary,
        decoder: AudioDecoder,
        max_input_chars: int,
        request_timeout: float = 600.0,
        ignore_unsupported_instructions: bool = True,
    ) -> None:
        self.planner = SpeechPlanner(catalog, voices, decoder, max_input_chars, ignore_unsupported_instructions)
        self.decoder = decoder
        self._loader = loader
        self._metrics = metrics
        self._request_timeout = request_timeout

    async def _acquire(self, plan: SpeechPlan) -> Lease[SpeechWorker]:
        """A lease on the plan's model, waiting at most the request timeout for its load and turn."""
        try:
            with anyio.fail_after(self._request_timeout):
                return await self._loader.acquire(plan.spec.id, plan.keep_alive)
        except TimeoutError as error:
            raise Timeout(
                f"waited {self._request_timeout:g} s for model {plan.spec.id!r} to load and be free; try again later",
                code="timeout",
                retry_after=5,
            ) from error

    async def speak(self, plan: SpeechPlan) -> SpeechOutcome:
        """A complete audio file."""
        lease = await self._acquire(plan)
        generation_started = time.perf_counter()
        first_audio: float | None = None
        chunks: list[AudioChunk] = []
        try:
            async for chunk in _chunks(lease, plan.request):
                first_audio = first_audio or time.perf_counter()
                chunks.append(chunk)
        finally:
            lease.release()
        generation_seconds = time.perf_counter() - generation_started
        if not chunks:
            raise _nothing_to_speak()
        audio = np.concatenate(chunks)
        encoded = await anyio.to_thread.run_sync(
            encode_whole, plan.audio_format, audio, plan.spec.capabilities.sample_rate, plan.output_rate
        )
        audio_seconds = len(audio) / plan.spec.capabilities.sample_rate
        self._finished(plan, lease, audio_seconds, first_audio, streamed=False)
        return _outcome(
            plan,
            lease,
            encoded,
            AudioTally(audio_seconds),
            generation_seconds=generation_seconds,
            audio_seconds=audio_seconds,
        )

    async def stream(self, plan: SpeechPlan) -> SpeechOutcome:
        """Encoded audio chunks as the engine produces them; errors before the first chunk still reach the client
        as a proper error response."""
        lease = await self._acquire(plan)
        chunks = _chunks(lease, plan.request)
        engine_rate = plan.spec.capabilities.sample_rate
        try:
            encoder = create_encoder(plan.audio_format, engine_rate, plan.output_rate)
            first = await anext(chunks, None)
            if first is None:
                raise _nothing_to_speak()
        except BaseException:
            lease.release()
            raise
        first_audio = time.perf_counter()
        produced = AudioTally()

        async def body() -> AsyncIterator[bytes]:
            samples = 0
            try:
                chunk: AudioChunk | None = first
                while chunk is not None:
                    samples += len(chunk)
                    produced.seconds = samples / engine_rate
                    if encoded := encoder.encode(chunk):
                        yield encoded
                    chunk = await anext(chunks, None)
                if tail := encoder.finish():
                    yield tail
                self._finished(plan, lease, samples / engine_rate, first_audio, streamed=True)
            except (WorkerCrashed, EngineRequestError) as error:
                # the status line is sent already: the response ends unfinished, so the client can tell
                raise StreamAborted(
                    str(error), failure=error, model=plan.spec.id, audio_seconds=round(samples / engine_rate, 3)
                ) from error
            finally:
                try:
                    await chunks.aclose()
                finally:
                    lease.release()

        return _outcome(plan, lease, body(), produced)

    def _finished(
        self,
        plan: SpeechPlan,
        lease: Lease[SpeechWorker],
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

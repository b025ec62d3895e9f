"""Speech requests: validate against the model's capabilities, hold a lease, synthesize, encode, account."""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

import anyio
import msgspec
import numpy as np
import structlog

from service.audio.decode import AudioDecoder
from service.audio.encode import MEDIA_TYPES, AudioFormat, create_encoder, encode_whole, output_sample_rate
from service.controllers.errors import ApiError, as_api_error
from service.controllers.stream_guard import StreamAborted
from service.engines.base import MAX_EDIT_ITERATIONS, AudioChunk, AudioClip, EditRequest, SynthesisRequest
from service.lazy_loader import LazyLoader, Lease
from service.library.voices import VoiceError, VoiceLibrary
from service.lifecycle.worker_client import EngineRequestError, SpeechWorker, WorkerCrashed
from service.metrics import Metrics
from service.models.catalog import STEP_AUDIO_ALIAS, Catalog, ModelSpec
from service.speech.instructions import check_edit, edits_from_instructions, speed_edit

log = structlog.get_logger("service.speech.service")

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class VoiceReference(msgspec.Struct):
    """OpenAI's object form of a voice: `{"id": "..."}`."""

    id: str


class StepAudioExtension(msgspec.Struct, kw_only=True):
    """The Step-Audio-EditX fork's request extension, still accepted so its clients keep working."""

    mode: Literal["clone", "emotion", "style", "speed", "paralinguistic", "denoise", "vad"] = "clone"
    model_variant: Literal["base", "bnb", "awq"] | None = None
    prompt_text: str | None = None
    prompt_audio_base64: str | None = None
    prompt_audio_url: str | None = None
    input_audio_base64: str | None = None
    input_audio_url: str | None = None
    audio_text: Annotated[str | None, msgspec.Meta(description="What input_audio says (edit modes).")] = None
    edit_info: Annotated[str | None, msgspec.Meta(description="The emotion, style or speed value.")] = None
    intensity: Annotated[float | None, msgspec.Meta(description="Accepted and ignored: the engine has none.")] = None
    n_edit_iter: Annotated[int, msgspec.Meta(ge=1, le=MAX_EDIT_ITERATIONS)] = 1


class SpeechRequest(msgspec.Struct, kw_only=True):
    """OpenAI's speech request, plus `keep_alive`, `sample_rate` and the fork's `step_audio` extension."""

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
    step_audio: StepAudioExtension | None = None
    metadata: dict[str, str] | None = None


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


def _chunks(lease: Lease[SpeechWorker], request: SynthesisRequest | EditRequest) -> AsyncGenerator[AudioChunk, None]:
    """The request's audio from the lease's worker; the lease is released as soon as the worker is done with it,
    so a client that reads slowly does not hold the model."""
    if isinstance(request, SynthesisRequest):
        return lease.worker.synthesize(request, on_finished=lease.release)
    return lease.worker.edit(request, on_finished=lease.release)


def _event(event: dict[str, object]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def server_sent_events(audio: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE stream: `speech.audio.delta` events with base64 audio, then `speech.audio.done`; a
    stream that cannot be finished ends with an `error` event (OpenAI's error object) instead, and unfinished."""
    try:
        async for chunk in audio:
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()})
    except StreamAborted as aborted:
        if aborted.body is not None:
            yield _event({"type": "error", **aborted.body})
        raise
    yield _event({"type": "speech.audio.done"})


def _nothing_to_speak() -> ApiError:
    return ApiError(
        400, "input has nothing the voice can speak: the engine produced no audio", param="input", code="no_audio"
    )


@dataclass
class SpeechPlan:
    """A validated request: which model, what it is asked to do, and how the audio is encoded."""

    spec: ModelSpec
    request: SynthesisRequest | EditRequest
    mode: str
    audio_format: AudioFormat
    output_rate: int
    keep_alive: float | None
    notes: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class SpeechResult:
    audio: bytes | AsyncIterator[bytes]
    media_type: str
    headers: dict[str, str]


def _audio_format(response_format: str) -> AudioFormat:
    try:
        audio_format = AudioFormat(response_format)
    except ValueError:
        raise ApiError(
            400,
            f"response_format {response_format!r} is not one of {[f.value for f in AudioFormat]}",
            param="response_format",
            code="invalid_value",
        ) from None
    if audio_format is AudioFormat.AAC:
        raise ApiError(
            400,
            "response_format 'aac' is not available on this server; use mp3, opus, flac, wav or pcm",
            param="response_format",
            code="unsupported_value",
        )
    return audio_format


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
    ) -> None:
        self._catalog = catalog
        self._loader = loader
        self._metrics = metrics
        self._voices = voices
        self.decoder = decoder
        self._max_input_chars = max_input_chars
        self._request_timeout = request_timeout

    def _check_text(self, text: str, param: str) -> None:
        if not text.strip():
            raise ApiError(400, f"{param} must not be empty", param=param, code="invalid_value")
        if len(text) > self._max_input_chars:
            raise ApiError(
                400,
                f"{param} is {len(text)} characters; the limit is {self._max_input_chars}",
                param=param,
                code="string_above_max_length",
            )
        if "\x00" in text:
            # engines hand text to C libraries (Piper's espeak-ng), which fail on it with a 500
            raise ApiError(400, f"{param} must not contain NUL characters", param=param, code="invalid_value")

    async def plan(self, request: SpeechRequest, uploads: Mapping[str, bytes] | None = None) -> SpeechPlan:
        """Check everything about the request that can be checked before any model work starts."""
        self._check_text(request.input, "input")
        audio_format = _audio_format(request.response_format)
        keep_alive = parse_keep_alive(request.keep_alive)
        if request.step_audio is not None:
            spec, mode, work, notes = await self._step_audio(request, request.step_audio, uploads or {})
        else:
            spec = self._catalog.resolve(request.model)
            notes = {}
            if spec.capabilities.clones:
                mode, work = "clone", await self._clone(spec, request, None)
            else:
                mode, work = "tts", self._own_voice(spec, request)
        rate = output_sample_rate(audio_format, spec.capabilities.sample_rate, request.sample_rate)
        return SpeechPlan(spec, work, mode, audio_format, rate, keep_alive, notes)

    async def plan_edit(
        self, model: str | None, edit: EditRequest, response_format: str, keep_alive: str | float | None
    ) -> SpeechPlan:
        """An edit of a clip the client sent (POST /v1/audio/edit, the UI's edit history)."""
        spec = self._catalog.editing_model(model)
        audio_format = _audio_format(response_format)
        rate = output_sample_rate(audio_format, spec.capabilities.sample_rate, None)
        return SpeechPlan(spec, self._edit(spec, edit, ""), edit.mode, audio_format, rate, parse_keep_alive(keep_alive))

    def _own_voice(self, spec: ModelSpec, request: SpeechRequest) -> SynthesisRequest:
        """A request for an engine with voices of its own (Piper's speakers)."""
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
        return SynthesisRequest(text=request.input, voice=voice, speed=request.speed, instructions=request.instructions)

    async def _clone(
        self, spec: ModelSpec, request: SpeechRequest, reference: tuple[AudioClip, str] | None
    ) -> SynthesisRequest:
        """A cloning request: the voice's clip and transcript (or the given reference), then the edits that
        `instructions` and `speed` ask for."""
        options = spec.capabilities.edit_options
        edits = edits_from_instructions(request.instructions, options)
        speed = speed_edit(request.speed, options)
        label = "reference"
        if reference is None:
            named = request.voice.id if isinstance(request.voice, VoiceReference) else request.voice
            label = named if named and named not in OPENAI_VOICES else spec.capabilities.default_voice
            if not label:
                raise ApiError(
                    400,
                    f"model {spec.id!r} speaks in a cloned voice: set voice to a voice of the library "
                    f"({', '.join(self._voices.names()) or 'none yet: add one with POST /v1/voices'})",
                    param="voice",
                    code="voice_required",
                )
            try:
                voice, clip = await anyio.to_thread.run_sync(self._voices.clip, label)
            except VoiceError as error:
                raise ApiError(400, str(error), param="voice", code="invalid_value") from error
            reference = (self.decoder.conform(clip), voice.transcript)
        return SynthesisRequest(
            text=request.input,
            voice=label,
            speed=request.speed,
            instructions=request.instructions,
            reference=reference[0],
            reference_text=reference[1],
            edits=edits + ((speed,) if speed else ()),
        )

    def _edit(self, spec: ModelSpec, edit: EditRequest, prefix: str) -> EditRequest:
        """The edit checked against what the model accepts; `prefix` names the fields as the client sent them."""
        options = spec.capabilities.edit_options
        if not options:
            param = f"{prefix}mode" if prefix else "model"
            raise ApiError(400, f"model {spec.id!r} does not edit audio", param=param, code="unsupported_value")
        checked = check_edit(edit.mode, edit.edit_info, options, f"{prefix}edit_info")
        if edit.mode not in ("denoise", "vad") and not edit.transcript.strip():
            param = f"{prefix}audio_text" if prefix else "transcript"
            raise ApiError(400, f"{param} must say what the audio says", param=param, code="invalid_value")
        if edit.mode == "paralinguistic" and not (edit.text or "").strip():
            raise ApiError(
                400, "paralinguistic edits need the new transcript with tags (text)", param="text", code="invalid_value"
            )
        if not 1 <= edit.iterations <= MAX_EDIT_ITERATIONS:
            raise ApiError(
                400, f"n_edit_iter must be 1 to {MAX_EDIT_ITERATIONS}", param="n_edit_iter", code="invalid_value"
            )
        return replace(edit, edit_info=checked, text=edit.text if edit.mode == "paralinguistic" else None)

    async def _audio(self, encoded: str | None, url: str | None, upload: bytes | None, param: str) -> AudioClip | None:
        given = [source for source in (encoded, url, upload) if source is not None]
        if len(given) > 1:
            raise ApiError(
                400, f"{param}: send the audio one way only (base64, URL or upload)", param=param, code="invalid_value"
            )
        if encoded is not None:
            return await self.decoder.read_base64(encoded, f"{param}_base64")
        if url is not None:
            return await self.decoder.fetch(url, f"{param}_url")
        if upload is not None:
            return await self.decoder.read(upload, f"{param}_file")
        return None

    async def _step_audio(
        self, request: SpeechRequest, extension: StepAudioExtension, uploads: Mapping[str, bytes]
    ) -> tuple[ModelSpec, str, SynthesisRequest | EditRequest, dict[str, str]]:
        """The fork's `step_audio` extension: a clone or an edit on a Step-Audio-EditX variant."""
        name = f"{STEP_AUDIO_ALIAS}-{extension.model_variant}" if extension.model_variant else request.model
        spec = self._catalog.resolve(name)
        if not spec.capabilities.clones and STEP_AUDIO_ALIAS in self._catalog.aliases:
            spec = self._catalog.resolve(STEP_AUDIO_ALIAS)
        if not spec.capabilities.clones:
            raise ApiError(
                400,
                f"the step_audio extension needs a Step-Audio-EditX model; {spec.id!r} is not one "
                "and none is configured",
                param="model",
                code="unsupported_value",
            )
        notes = {"X-Ignored-Fields": "step_audio.intensity"} if extension.intensity is not None else {}
        if extension.mode == "clone":
            prompt = await self._audio(
                extension.prompt_audio_base64,
                extension.prompt_audio_url,
                uploads.get("prompt_audio_file"),
                "step_audio.prompt_audio",
            )
            if prompt is not None and not (extension.prompt_text or "").strip():
                raise ApiError(
                    400,
                    "step_audio.prompt_text must say what the prompt audio says",
                    param="step_audio.prompt_text",
                    code="invalid_value",
                )
            reference = (prompt, extension.prompt_text or "") if prompt is not None else None
            return spec, "clone", await self._clone(spec, request, reference), notes
        audio = await self._audio(
            extension.input_audio_base64,
            extension.input_audio_url,
            uploads.get("input_audio_file"),
            "step_audio.input_audio",
        )
        if audio is None:
            raise ApiError(
                400,
                f"step_audio.input_audio_base64 (or an upload) is needed for mode {extension.mode!r}",
                param="step_audio.input_audio_base64",
                code="invalid_value",
            )
        edit = self._edit(
            spec,
            EditRequest(
                audio,
                extension.audio_text or "",
                extension.mode,
                extension.edit_info,
                request.input,
                extension.n_edit_iter,
            ),
            "step_audio.",
        )
        return spec, extension.mode, edit, notes

    async def _acquire(self, plan: SpeechPlan) -> Lease[SpeechWorker]:
        """A lease on the plan's model, waiting at most the request timeout for its load and turn."""
        try:
            with anyio.fail_after(self._request_timeout):
                return await self._loader.acquire(plan.spec.id, plan.keep_alive)
        except TimeoutError as error:
            raise ApiError(
                504,
                f"waited {self._request_timeout:g} s for model {plan.spec.id!r} to load and be free; try again later",
                code="timeout",
                headers={"Retry-After": "5"},
            ) from error

    def _headers(self, plan: SpeechPlan, lease: Lease[SpeechWorker]) -> dict[str, str]:
        voice = plan.request.voice if isinstance(plan.request, SynthesisRequest) else ""
        edits = plan.request.edits if isinstance(plan.request, SynthesisRequest) else ()
        headers = plan.notes | {
            "X-Model": plan.spec.id,
            "X-Mode": plan.mode,
            "X-Edits": ",".join(f"{step.mode}={step.edit_info or ''}" for step in edits),
            "X-Voice": voice,
            "X-Sample-Rate": str(plan.output_rate),
            "X-Cold-Start": "true" if lease.cold else "false",
            "X-Model-Load-Seconds": f"{lease.load_seconds or 0.0:.3f}",
            "X-Queue-Seconds": f"{lease.queued_seconds:.3f}",
        }
        return {name: value for name, value in headers.items() if value}

    async def speak(self, plan: SpeechPlan) -> SpeechResult:
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
        headers = self._headers(plan, lease) | {
            "X-Audio-Seconds": f"{audio_seconds:.3f}",
            "X-Generation-Seconds": f"{generation_seconds:.3f}",
        }
        self._finished(plan, lease, audio_seconds, first_audio, streamed=False)
        return SpeechResult(encoded, MEDIA_TYPES[plan.audio_format], headers)

    async def stream(self, plan: SpeechPlan, *, sse: bool = False) -> SpeechResult:
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
            except (WorkerCrashed, EngineRequestError) as error:
                # the status line is sent already: the response ends unfinished, so the client can tell
                answer = as_api_error(error)
                raise StreamAborted(
                    answer.code or "engine_error",
                    str(error),
                    model=plan.spec.id,
                    audio_seconds=round(samples / engine_rate, 3),
                    body=answer.body(),
                ) from error
            finally:
                try:
                    await chunks.aclose()
                finally:
                    lease.release()

        audio = server_sent_events(body()) if sse else body()
        media_type = "text/event-stream" if sse else MEDIA_TYPES[plan.audio_format]
        return SpeechResult(audio, media_type, self._headers(plan, lease))

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

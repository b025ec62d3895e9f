"""Speech and edit requests checked against the model's capabilities, before any model work starts."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import anyio
import msgspec
import structlog

from service.audio.decode import AudioDecoder
from service.audio.encode import AudioFormat, output_sample_rate
from service.engines.base import MAX_EDIT_ITERATIONS, AudioClip, EditRequest, SynthesisRequest
from service.errors import InvalidRequest
from service.library.voices import VoiceError, VoiceLibrary
from service.models.catalog import Catalog, ModelSpec
from service.speech.instructions import check_edit, edits_from_instructions, speed_edit
from service.speech.schema import SpeechRequest
from service.speech.step_audio_compat import step_audio_work

log = structlog.get_logger("service.speech.planner")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


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
            raise InvalidRequest(
                f"keep_alive {value!r} is not a duration: use seconds or forms like '10m', '1h30m', '-1'",
                param="keep_alive",
                code="invalid_value",
            )
    if not math.isfinite(value):
        raise InvalidRequest("keep_alive must be a finite number of seconds", param="keep_alive", code="invalid_value")
    return float(value)


@dataclass
class SpeechPlan:
    """A validated request: which model, what it is asked to do, and how the audio is encoded."""

    spec: ModelSpec
    request: SynthesisRequest | EditRequest
    mode: str
    audio_format: AudioFormat
    output_rate: int
    keep_alive: float | None
    ignored_fields: tuple[str, ...] = ()
    started: float = field(default_factory=time.perf_counter)


def _audio_format(response_format: str) -> AudioFormat:
    try:
        return AudioFormat(response_format)
    except ValueError:
        raise InvalidRequest(
            f"response_format {response_format!r} is not one of {[f.value for f in AudioFormat]}",
            param="response_format",
            code="invalid_value",
        ) from None


class SpeechPlanner:
    """Turns speech and edit requests into plans: everything that can be checked before any model work starts."""

    def __init__(
        self,
        catalog: Catalog,
        voices: VoiceLibrary,
        decoder: AudioDecoder,
        max_input_chars: int,
        ignore_unsupported_instructions: bool = True,
    ) -> None:
        self.catalog = catalog
        self.decoder = decoder
        self._voices = voices
        self._max_input_chars = max_input_chars
        self._ignore_unsupported_instructions = ignore_unsupported_instructions

    def _check_text(self, text: str, param: str) -> None:
        if not text.strip():
            raise InvalidRequest(f"{param} must not be empty", param=param, code="invalid_value")
        if len(text) > self._max_input_chars:
            raise InvalidRequest(
                f"{param} is {len(text)} characters; the limit is {self._max_input_chars}",
                param=param,
                code="string_above_max_length",
            )
        if "\x00" in text:
            # engines hand text to C libraries (Piper's espeak-ng), which fail on it with a 500
            raise InvalidRequest(f"{param} must not contain NUL characters", param=param, code="invalid_value")

    async def plan(self, request: SpeechRequest, uploads: Mapping[str, bytes] | None = None) -> SpeechPlan:
        """Check everything about the request that can be checked before any model work starts."""
        self._check_text(request.input, "input")
        audio_format = _audio_format(request.response_format)
        keep_alive = parse_keep_alive(request.keep_alive)
        if request.step_audio is not None:
            spec, mode, work, ignored = await step_audio_work(self, request, request.step_audio, uploads or {})
        else:
            spec = self.catalog.resolve(request.model)
            ignored = self._unfollowed_instructions(spec, request)
            if ignored:
                request = msgspec.structs.replace(request, instructions=None)
            if spec.capabilities.clones:
                mode, work = "clone", await self.clone(spec, request, None)
            else:
                mode, work = "tts", await self._own_voice(spec, request)
        rate = output_sample_rate(audio_format, spec.capabilities.sample_rate, request.sample_rate)
        return SpeechPlan(spec, work, mode, audio_format, rate, keep_alive, ignored)

    async def plan_edit(
        self, model: str | None, edit: EditRequest, response_format: str, keep_alive: str | float | None
    ) -> SpeechPlan:
        """An edit of a clip the client sent (POST /v1/audio/edit, the UI's edit history)."""
        spec = self.catalog.editing_model(model)
        audio_format = _audio_format(response_format)
        rate = output_sample_rate(audio_format, spec.capabilities.sample_rate, None)
        return SpeechPlan(spec, self.edit(spec, edit, ""), edit.mode, audio_format, rate, parse_keep_alive(keep_alive))

    def _unfollowed_instructions(self, spec: ModelSpec, request: SpeechRequest) -> tuple[str, ...]:
        """("instructions",) when the request has instructions the model cannot follow and the server ignores them
        (UNSUPPORTED_INSTRUCTIONS=ignore); a 400 when it refuses them."""
        capabilities = spec.capabilities
        if not request.instructions or capabilities.supports_instructions or capabilities.edit_options:
            return ()
        if not self._ignore_unsupported_instructions:
            raise InvalidRequest(
                f"model {spec.id!r} cannot follow instructions; leave the field out or pick a model that supports it",
                param="instructions",
                code="unsupported_value",
            )
        log.info("instructions_ignored", model=spec.id, requested=request.model, characters=len(request.instructions))
        return ("instructions",)

    async def _own_voice(self, spec: ModelSpec, request: SpeechRequest) -> SynthesisRequest:
        """A request for an engine with voices of its own (Piper's speakers)."""
        capabilities = spec.capabilities
        voice = spec.voice_for(request.voice_name)
        if voice not in capabilities.voices:
            if voice in await anyio.to_thread.run_sync(self._voices.names):
                raise InvalidRequest(
                    f"voice {voice!r} is a library voice, for cloning, and model {spec.id!r} cannot clone; pick a "
                    "cloning model (Step-Audio-EditX) or one of this model's voices: "
                    f"{', '.join(capabilities.voices)}",
                    param="voice",
                    code="unsupported_value",
                )
            raise InvalidRequest(
                f"voice {voice!r} is not a voice of model {spec.id!r}; available: "
                f"{', '.join(capabilities.voices)} (or an OpenAI voice name for the default)",
                param="voice",
                code="invalid_value",
            )
        if request.speed != 1.0 and not capabilities.supports_speed:
            raise InvalidRequest(f"model {spec.id!r} cannot change speed", param="speed", code="unsupported_value")
        return SynthesisRequest(text=request.input, voice=voice, speed=request.speed, instructions=request.instructions)

    async def clone(
        self, spec: ModelSpec, request: SpeechRequest, reference: tuple[AudioClip, str] | None
    ) -> SynthesisRequest:
        """A cloning request: the voice's clip and transcript (or the given reference), then the edits that
        `instructions` and `speed` ask for."""
        options = spec.capabilities.edit_options
        edits = edits_from_instructions(request.instructions, options)
        speed = speed_edit(request.speed, options)
        label = "reference"
        if reference is None:
            label = spec.voice_for(request.voice_name)
            if not label:
                raise InvalidRequest(
                    f"model {spec.id!r} speaks in a cloned voice: set voice to a voice of the library "
                    f"({', '.join(self._voices.names()) or 'none yet: add one with POST /v1/voices'})",
                    param="voice",
                    code="voice_required",
                )
            try:
                voice, clip = await anyio.to_thread.run_sync(self._voices.clip, label)
            except VoiceError as error:
                raise InvalidRequest(str(error), param="voice", code="invalid_value") from error
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

    def edit(self, spec: ModelSpec, edit: EditRequest, prefix: str) -> EditRequest:
        """The edit checked against what the model accepts; `prefix` names the fields as the client sent them."""
        options = spec.capabilities.edit_options
        if not options:
            param = f"{prefix}mode" if prefix else "model"
            raise InvalidRequest(f"model {spec.id!r} does not edit audio", param=param, code="unsupported_value")
        checked = check_edit(edit.mode, edit.edit_info, options, f"{prefix}edit_info")
        if edit.mode not in ("denoise", "vad") and not edit.transcript.strip():
            param = f"{prefix}audio_text" if prefix else "transcript"
            raise InvalidRequest(f"{param} must say what the audio says", param=param, code="invalid_value")
        if edit.mode == "paralinguistic" and not (edit.text or "").strip():
            raise InvalidRequest(
                "paralinguistic edits need the new transcript with tags (text)", param="text", code="invalid_value"
            )
        if not 1 <= edit.iterations <= MAX_EDIT_ITERATIONS:
            raise InvalidRequest(
                f"n_edit_iter must be 1 to {MAX_EDIT_ITERATIONS}", param="n_edit_iter", code="invalid_value"
            )
        return replace(edit, edit_info=checked, text=edit.text if edit.mode == "paralinguistic" else None)

"""The Step-Audio-EditX fork's `step_audio` extension, still accepted so its clients keep working: a clone or an
edit on a Step-Audio-EditX variant, its audio sent as base64, as an allowed URL or as an upload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from service.audio.decode import AudioDecoder
from service.engines.base import AudioClip, EditRequest, SynthesisRequest
from service.errors import InvalidRequest
from service.models.catalog import STEP_AUDIO_ALIAS, ModelSpec
from service.speech.schema import SpeechRequest, StepAudioExtension

if TYPE_CHECKING:
    from service.speech.planner import SpeechPlanner


async def _audio(
    decoder: AudioDecoder, encoded: str | None, url: str | None, upload: bytes | None, param: str
) -> AudioClip | None:
    given = [source for source in (encoded, url, upload) if source is not None]
    if len(given) > 1:
        raise InvalidRequest(
            f"{param}: send the audio one way only (base64, URL or upload)", param=param, code="invalid_value"
        )
    if encoded is not None:
        return await decoder.read_base64(encoded, f"{param}_base64")
    if url is not None:
        return await decoder.fetch(url, f"{param}_url")
    if upload is not None:
        return await decoder.read(upload, f"{param}_file")
    return None


async def step_audio_work(
    planner: SpeechPlanner, request: SpeechRequest, extension: StepAudioExtension, uploads: Mapping[str, bytes]
) -> tuple[ModelSpec, str, SynthesisRequest | EditRequest, tuple[str, ...]]:
    """The model, mode and work the extension asks for, and the request fields it ignores."""
    catalog = planner.catalog
    name = f"{STEP_AUDIO_ALIAS}-{extension.model_variant}" if extension.model_variant else request.model
    spec = catalog.resolve(name)
    if not spec.capabilities.clones and STEP_AUDIO_ALIAS in catalog.aliases:
        spec = catalog.resolve(STEP_AUDIO_ALIAS)
    if not spec.capabilities.clones:
        raise InvalidRequest(
            f"the step_audio extension needs a Step-Audio-EditX model; {spec.id!r} is not one and none is configured",
            param="model",
            code="unsupported_value",
        )
    ignored = ("step_audio.intensity",) if extension.intensity is not None else ()
    if extension.mode == "clone":
        prompt = await _audio(
            planner.decoder,
            extension.prompt_audio_base64,
            extension.prompt_audio_url,
            uploads.get("prompt_audio_file"),
            "step_audio.prompt_audio",
        )
        if prompt is not None and not (extension.prompt_text or "").strip():
            raise InvalidRequest(
                "step_audio.prompt_text must say what the prompt audio says",
                param="step_audio.prompt_text",
                code="invalid_value",
            )
        reference = (prompt, extension.prompt_text or "") if prompt is not None else None
        return spec, "clone", await planner.clone(spec, request, reference), ignored
    audio = await _audio(
        planner.decoder,
        extension.input_audio_base64,
        extension.input_audio_url,
        uploads.get("input_audio_file"),
        "step_audio.input_audio",
    )
    if audio is None:
        raise InvalidRequest(
            f"step_audio.input_audio_base64 (or an upload) is needed for mode {extension.mode!r}",
            param="step_audio.input_audio_base64",
            code="invalid_value",
        )
    edit = planner.edit(
        spec,
        EditRequest(
            audio, extension.audio_text or "", extension.mode, extension.edit_info, request.input, extension.n_edit_iter
        ),
        "step_audio.",
    )
    return spec, extension.mode, edit, ignored

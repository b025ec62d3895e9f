from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import msgspec
import structlog
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi.spec import Example
from litestar.params import BodyKwarg, FromPath, MultipartBody
from litestar.response import Stream

from service.controllers.errors import ApiError
from service.controllers.openapi import AudioOperation, SpeechOperation, error_responses
from service.controllers.schemas import ModelCard, ModelList
from service.controllers.speech_response import speech_response
from service.engines.base import EditRequest
from service.lazy_loader import UnknownModel
from service.models.catalog import Catalog
from service.speech.planner import SpeechPlan
from service.speech.schema import SpeechRequest
from service.speech.service import SpeechOutcome, SpeechService

log = structlog.get_logger("service.controllers.api.openai")

# the status nginx made common for a client that went away before the answer
CLIENT_CLOSED_REQUEST = 499
# what a speech or edit request can answer besides its audio
SPEECH_ERRORS = error_responses(400, 403, 404, 413, 429, 500, 503, 504)

_EXAMPLES = [
    Example(
        summary="Speak with the embedded voice",
        value={
            "model": "tts-1",
            "input": "Hello from the speech server.",
            "voice": "alloy",
            "response_format": "mp3",
            "keep_alive": "10m",
        },
    ),
    Example(
        summary="Clone a library voice and make it happy and faster (Step-Audio-EditX)",
        value={
            "model": "step-audio-editx",
            "input": "What a lovely day.",
            "voice": "narrator",
            "instructions": "happy",
            "speed": 1.3,
            "response_format": "wav",
        },
    ),
    Example(
        summary="The fork's step_audio extension: an emotion edit",
        value={
            "model": "step-audio-editx",
            "input": "unused for emotion edits",
            "response_format": "wav",
            "step_audio": {
                "mode": "emotion",
                "edit_info": "sad",
                "audio_text": "What the clip says.",
                "input_audio_base64": "<base64 WAV>",
                "n_edit_iter": 2,
            },
        },
    ),
]


_EDIT_EXAMPLES = [
    Example(
        summary="Make a clip happier",
        value={
            "audio": "(a WAV/FLAC/OGG/MP3 file, up to MAX_AUDIO_SECONDS)",
            "transcript": "What the clip says.",
            "mode": "emotion",
            "edit_info": "happy",
            "n_edit_iter": 1,
        },
    ),
    Example(
        summary="Add laughter",
        value={
            "audio": "(file)",
            "transcript": "That was so funny.",
            "mode": "paralinguistic",
            "text": "That was so funny [Laughter].",
        },
    ),
    Example(summary="Remove noise", value={"audio": "(file)", "mode": "denoise"}),
]


@dataclass
class SpeechUpload:
    """The fork's multipart form: `payload` is the JSON speech request; audio files come beside it."""

    payload: str
    prompt_audio_file: UploadFile | None = None
    input_audio_file: UploadFile | None = None


@dataclass
class EditUpload:
    """An edit of an uploaded clip. `text` is the new transcript with tags (paralinguistic mode only)."""

    audio: UploadFile
    mode: str
    transcript: str = ""
    edit_info: str | None = None
    text: str | None = None
    n_edit_iter: int = 1
    model: str | None = None
    response_format: str = "wav"
    keep_alive: str | None = None


async def _cancel_when_client_leaves(request: Request[Any, Any, Any], scope: anyio.CancelScope) -> None:
    """Cancel the request's work if its client disconnects before the response starts (e.g. while queued)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    log.info("client_disconnected", path=request.url.path)
    scope.cancel()


async def _respond(
    request: Request[Any, Any, Any], speech: SpeechService, plan: SpeechPlan, stream_format: str | None
) -> Response[bytes] | Stream:
    result: SpeechOutcome | Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(_cancel_when_client_leaves, request, group.cancel_scope)
        try:
            if stream_format is None:
                result = await speech.speak(plan)
            else:
                result = await speech.stream(plan)
        except Exception as error:  # raised after the group, so it is not wrapped in an exception group
            result = error
        group.cancel_scope.cancel()
    if isinstance(result, Exception):
        raise result
    if result is None:
        return Response(b"", status_code=CLIENT_CLOSED_REQUEST)
    return speech_response(result, sse=stream_format == "sse")


def _model_cards(catalog: Catalog) -> list[ModelCard]:
    """The servable models, then the aliases, which name their target in `owned_by`."""
    entries = [ModelCard(spec.id, "model", 0, spec.owned_by) for spec in catalog.servable()]
    aliases = [ModelCard(alias, "model", 0, "alias:" + target) for alias, target in catalog.aliases.items()]
    return entries + aliases


class OpenAIController(Controller):
    path = "/v1"
    tags = ("openai",)

    @get("/models", operation_id="listModels", summary="List models (OpenAI)", responses=error_responses())
    async def list_models(self, catalog: NamedDependency[Catalog]) -> ModelList:
        """Models in OpenAI's list shape, with the aliases (tts-1 and tts-1-hd stand for the default model)."""
        return ModelList("list", _model_cards(catalog))

    @get(
        "/models/{model:str}",
        operation_id="retrieveModel",
        summary="Get a model (OpenAI)",
        responses=error_responses(404),
    )
    async def retrieve_model(self, catalog: NamedDependency[Catalog], model: FromPath[str]) -> ModelCard:
        """One model of the list, by its id or an alias, in OpenAI's Model shape (`client.models.retrieve`)."""
        cards = {card.id: card for card in _model_cards(catalog)}
        if model not in cards:
            raise UnknownModel(model, cards)
        return cards[model]

    @post(
        "/audio/speech",
        operation_id="createSpeech",
        summary="Generate speech from text (OpenAI)",
        status_code=200,
        responses=SPEECH_ERRORS,
        operation_class=SpeechOperation,
    )
    async def create_speech(
        self,
        request: Request[Any, Any, Any],
        speech: NamedDependency[SpeechService],
        data: Annotated[SpeechRequest, BodyKwarg(examples=_EXAMPLES)],
    ) -> Response[bytes] | Stream:
        """Generate audio from text (OpenAI-compatible). Loads the model first if needed; the X-Cold-Start and
        X-Model-Load-Seconds headers say whether it had to. Cloning models take a library voice, and turn
        `instructions` and `speed` into emotion, style and speed edits."""
        return await _respond(request, speech, await speech.planner.plan(data), data.stream_format)

    @post(
        "/audio/speech/upload",
        operation_id="createSpeechUpload",
        summary="Generate speech, multipart form (the fork's)",
        status_code=200,
        responses=SPEECH_ERRORS,
        operation_class=SpeechOperation,
    )
    async def create_speech_upload(
        self,
        request: Request[Any, Any, Any],
        speech: NamedDependency[SpeechService],
        data: MultipartBody[SpeechUpload],
    ) -> Response[bytes] | Stream:
        """The speech request as a multipart form (`payload` JSON plus `prompt_audio_file` / `input_audio_file`),
        as the fork accepted it."""
        try:
            speech_request = msgspec.json.decode(data.payload, type=SpeechRequest)
        except msgspec.ValidationError as error:
            raise ApiError(400, f"payload: {error}", param="payload", code="invalid_value") from error
        except msgspec.DecodeError as error:
            raise ApiError(400, f"payload is not valid JSON: {error}", param="payload", code="invalid_json") from error
        except RecursionError as error:
            message = "payload is JSON nested too deep to decode"
            raise ApiError(400, message, param="payload", code="invalid_json") from error
        uploads = {
            name: await upload.read()
            for name, upload in (
                ("prompt_audio_file", data.prompt_audio_file),
                ("input_audio_file", data.input_audio_file),
            )
            if upload is not None
        }
        return await _respond(
            request, speech, await speech.planner.plan(speech_request, uploads), speech_request.stream_format
        )

    @post(
        "/audio/edit",
        operation_id="editAudio",
        summary="Edit a clip: emotion, style, speed, sounds, denoise, trim",
        status_code=200,
        responses=SPEECH_ERRORS,
        operation_class=AudioOperation,
    )
    async def edit_audio(
        self,
        request: Request[Any, Any, Any],
        speech: NamedDependency[SpeechService],
        data: Annotated[EditUpload, BodyKwarg(media_type=RequestEncodingType.MULTI_PART, examples=_EDIT_EXAMPLES)],
    ) -> Response[bytes] | Stream:
        """Edit an existing clip: emotion, style or speed (with `edit_info`), paralinguistic (with `text`, the
        transcript with tags such as [Laughter]), denoise or vad; `n_edit_iter` repeats the edit on its own result.

        ```sh
        curl -F audio=@clip.wav -F transcript='What the clip says.' -F mode=emotion -F edit_info=happy \\
             localhost:7860/v1/audio/edit -o happy.wav
        ```
        """
        audio = await speech.decoder.read(await data.audio.read(), "audio")
        edit = EditRequest(audio, data.transcript, data.mode, data.edit_info, data.text, data.n_edit_iter)
        plan = await speech.planner.plan_edit(data.model, edit, data.response_format, data.keep_alive)
        return await _respond(request, speech, plan, None)

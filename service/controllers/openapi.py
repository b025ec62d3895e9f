"""What the OpenAPI schema says about responses beyond a handler's return type: every error in OpenAI's shape (the
one `service/controllers/errors.py` sends, in place of Litestar's own ValidationException shape for 400), and the
audio media types of the speech routes. The fuzz test (tests/test_fuzz.py) checks every answer against this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Example,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from service.audio.encode import MEDIA_TYPES, SUPPORTED_FORMATS


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct):
    """OpenAI's error shape: `type` is invalid_request_error for 4xx, server_error for 5xx; `param` names the
    request field at fault; `code` is a stable identifier."""

    error: OpenAIErrorDetail


class HealthBody(msgspec.Struct):
    status: str
    models: dict[str, int]


# status: (description, example (message, param, code))
_ERRORS: dict[int, tuple[str, tuple[str, str | None, str | None]]] = {
    400: (
        "A field is missing, malformed or out of range; `param` names it.",
        ("speed: Expected `float` <= 4.0", "speed", "invalid_value"),
    ),
    401: (
        "API keys are configured (API_KEY / API_KEYS_FILE) and the request carries no valid one.",
        ("an API key is required: send 'Authorization: Bearer <key>'", None, "invalid_api_key"),
    ),
    403: (
        "A write (POST, PUT, PATCH, DELETE) sent from another site's page: its Origin, Referer or Sec-Fetch-Site "
        "names another site, or it carries the session cookie and none of them. Bearer-key requests are never "
        "refused.",
        (
            "a write from another site's page is refused: it came from http://evil.example, not this server; API "
            "clients send a Bearer key",
            None,
            "cross_origin_request",
        ),
    ),
    404: (
        "Unknown model or voice; the message lists the known ones.",
        ("unknown model 'nope'; known models: piper-joe, tts-1, tts-1-hd", "model", "model_not_found"),
    ),
    409: (
        "The voice exists already, or is a read-only preset.",
        ("voice 'narrator' exists already", "name", "voice_conflict"),
    ),
    413: (
        "The request body is larger than MAX_UPLOAD_BYTES plus 64 KiB, or an audio clip in it larger than "
        "MAX_UPLOAD_BYTES.",
        ("Request Entity Too Large", None, None),
    ),
    429: (
        "MAX_QUEUE requests already wait for this model; try again after Retry-After seconds.",
        ("model 'piper-joe' has 512 requests waiting, the most it queues; try again later", None, "queue_full"),
    ),
    500: (
        "The engine failed on a valid request (engine_error).",
        ("the engine failed: out of memory", None, "engine_error"),
    ),
    503: (
        "The model cannot serve now: its load failed (the worker's reason; Retry-After while backing off), no room "
        "could be made for it within CAPACITY_WAIT, its worker died during the request (worker_crashed), or the "
        "server is shutting down.",
        ("model 'piper-joe' failed to load: ...", None, "model_unavailable"),
    ),
    504: (
        "The request waited REQUEST_TIMEOUT for its model and turn (timeout), or the generation ran past "
        "GENERATION_TIMEOUT and the watchdog stopped its worker (generation_timeout).",
        ("waited 600 s for model 'piper-joe' to load and be free; try again later", None, "timeout"),
    ),
    507: (
        "The disk under DATA_DIR is full (or over quota): the voice was not stored and nothing of it was left.",
        (
            "the voice library's disk is full (No space left on device); 'narrator' was not stored",
            None,
            "insufficient_storage",
        ),
    ),
}
# what every route but the public ones (health, login, static files) can answer
KEY_REQUIRED = frozenset({401})


def error_responses(*statuses: int, public: bool = False) -> dict[int, ResponseSpec]:
    """The OpenAI-shaped error responses a handler can answer with; 401 is added unless the route is public.

    Listing 400 replaces the 400 Litestar documents on its own for handlers with parameters or a body."""
    wanted = sorted(set(statuses) | (set() if public else KEY_REQUIRED))
    responses: dict[int, ResponseSpec] = {}
    for status in wanted:
        description, (message, param, code) = _ERRORS[status]
        error_type = "invalid_request_error" if status < 500 else "server_error"
        example = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        responses[status] = ResponseSpec(
            data_container=OpenAIError,
            description=description,
            generate_examples=False,
            examples=[Example(summary=description.split(";")[0].split(".")[0], value=example)],
        )
    return responses


def not_ready_response() -> dict[int, ResponseSpec]:
    """/readyz once shutdown has begun: the health body with status `shutting_down`."""
    return {503: ResponseSpec(data_container=HealthBody, description="Shutting down.", generate_examples=False)}


_AUDIO = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
_STRING = Schema(type=OpenAPIType.STRING)
# one server-sent event: its `data` is JSON, a chunk of base64 audio, the end of the stream or why it ended early
_EVENT = Schema(
    type=OpenAPIType.OBJECT,
    required=["data"],
    properties={
        "event": _STRING,
        "data": Schema(
            type=OpenAPIType.STRING,
            content_media_type="application/json",
            content_schema=Schema(
                one_of=[
                    Schema(
                        type=OpenAPIType.OBJECT,
                        required=["type", "audio"],
                        properties={
                            "type": Schema(const="speech.audio.delta"),
                            "audio": Schema(type=OpenAPIType.STRING, content_encoding="base64"),
                        },
                    ),
                    Schema(
                        type=OpenAPIType.OBJECT,
                        required=["type"],
                        properties={"type": Schema(const="speech.audio.done")},
                    ),
                    Schema(
                        type=OpenAPIType.OBJECT,
                        required=["type", "error"],
                        description="The stream could not be finished (its worker died, or the watchdog ended it); "
                        "no done event follows and the body ends unfinished.",
                        properties={
                            "type": Schema(const="error"),
                            "error": Reference("#/components/schemas/OpenAIErrorDetail"),
                        },
                    ),
                ]
            ),
        ),
    },
)
_HEADERS = {
    "X-Model": "the model that served the request",
    "X-Voice": "the voice it spoke with",
    "X-Sample-Rate": "sample rate of the audio",
    "X-Cold-Start": "true if the request waited for the model to load",
    "X-Model-Load-Seconds": "how long that load took (0.000 when warm)",
    "X-Queue-Seconds": "from arrival until generation started",
    "X-Audio-Seconds": "duration of the audio (complete files only)",
    "X-Generation-Seconds": "time the worker spent generating (complete files only)",
    "X-Mode": "tts, clone or the edit mode",
    "X-Edits": "the edits applied after a clone",
}


def _audio_response(event_stream: bool) -> OpenAPIResponse:
    media_types = sorted({MEDIA_TYPES[audio_format].split(";")[0] for audio_format in SUPPORTED_FORMATS})
    content = {media_type: OpenAPIMediaType(schema=_AUDIO) for media_type in media_types}
    description = "The audio in the requested response_format"
    if event_stream:
        content["text/event-stream"] = OpenAPIMediaType(schema=_EVENT)
        description += "; with stream_format sse, server-sent events carrying base64 chunks"
    headers: dict[str, OpenAPIHeader | Reference] = {
        name: OpenAPIHeader(description=text, schema=_STRING) for name, text in _HEADERS.items()
    }
    return OpenAPIResponse(description=description + ".", content=content, headers=headers)


@dataclass
class AudioOperation(Operation):
    """An operation whose 200 is audio in one of the encoder's media types (Litestar would document JSON)."""

    def __post_init__(self) -> None:
        if self.responses is not None:
            self.responses["200"] = _audio_response(event_stream=False)


@dataclass
class SpeechOperation(Operation):
    """Audio, or server-sent events with stream_format sse."""

    def __post_init__(self) -> None:
        if self.responses is not None:
            self.responses["200"] = _audio_response(event_stream=True)


# the API docs page's introduction (OpenAPI `info.description`, Markdown), with the way back to the web UI
API_DESCRIPTION = """Text to speech behind one port: the OpenAI-compatible speech endpoint, this server's model \
lifecycle and voice library, health and metrics. Each operation says what it does; errors are OpenAI's JSON shape.

**The web UI on this port:** [Speak](/) · [Clone & edit](/edit) · [Voices](/voices) · [Models](/models) · \
[Guide](/guide/api) (docs/api.md: every field, header and error)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body
from litestar.response import Stream

from service.catalog import OPENAI_MODEL_ALIASES, Catalog
from service.speech import SpeechRequest, SpeechService

_EXAMPLE = Example(
    summary="Speak with the embedded voice",
    value={
        "model": "tts-1",
        "input": "Hello from the speech server.",
        "voice": "alloy",
        "response_format": "mp3",
        "keep_alive": "10m",
    },
)


class OpenAIController(Controller):
    path = "/v1"
    tags = ("openai",)

    @get("/models", operation_id="listModels")
    async def list_models(self, catalog: NamedDependency[Catalog]) -> dict[str, Any]:
        """Models in OpenAI's list shape; tts-1 and tts-1-hd stand for the default model."""
        entries = [
            {"id": spec.id, "object": "model", "created": 0, "owned_by": spec.owned_by}
            for spec in catalog.specs.values()
        ]
        aliases = [
            {"id": alias, "object": "model", "created": 0, "owned_by": "alias:" + catalog.default_model}
            for alias in OPENAI_MODEL_ALIASES
        ]
        return {"object": "list", "data": entries + aliases}

    @post("/audio/speech", operation_id="createSpeech", status_code=200, responses=None)
    async def create_speech(
        self, speech: NamedDependency[SpeechService], data: Annotated[SpeechRequest, Body(examples=[_EXAMPLE])]
    ) -> Response[bytes] | Stream:
        """Generate audio from text (OpenAI-compatible). Loads the model first if needed; the X-Cold-Start and
        X-Model-Load-Seconds headers say whether it had to."""
        plan = speech.plan(data)
        if data.stream_format is None:
            result = await speech.speak(plan)
            assert isinstance(result.audio, bytes)
            return Response(result.audio, media_type=result.media_type, headers=result.headers)
        result = await speech.stream(plan, sse=data.stream_format == "sse")
        assert not isinstance(result.audio, bytes)
        return Stream(result.audio, media_type=result.media_type, headers=result.headers)

"""The Voices page: the voice library (presets and uploads) with players, an upload form (file or a recording made in
the browser) and delete buttons. Uploads and deletes go to the same VoiceLibrary as /v1/voices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
from litestar import Controller, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, MultipartBody
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from service.controllers.errors import ApiError
from service.controllers.pages.rendering import fragment, render
from service.library.voices import MAX_TRANSCRIPT_CHARS, VoiceLibrary
from service.models.catalog import Catalog
from service.settings import Settings
from service.speech.service import SpeechService


async def library_context(voices: VoiceLibrary, catalog: Catalog, settings: Settings) -> dict[str, Any]:
    listed = await anyio.to_thread.run_sync(voices.all)
    cloning = [spec.id for spec in catalog.servable() if spec.capabilities.clones]
    return {
        "voices": listed,
        "cloning_models": cloning,
        "max_audio_seconds": settings.max_audio_seconds,
        "max_transcript_chars": MAX_TRANSCRIPT_CHARS,
        "message": None,
    }


@dataclass
class VoiceForm:
    """The API's voice upload (POST /v1/voices) as the page sends it; a missing clip gets a readable error."""

    name: str
    transcript: str = ""
    audio: UploadFile | None = None
    locale: str | None = None
    gender: str | None = None
    description: str | None = None


def _optional(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


class VoicePagesController(Controller):
    path = "/voices"
    include_in_schema = False

    @get("/", operation_id="voicesPage")
    async def voices_page(
        self,
        request: HTMXRequest,
        voices: NamedDependency[VoiceLibrary],
        catalog: NamedDependency[Catalog],
        settings: NamedDependency[Settings],
    ) -> Template:
        """The library; with htmx, only the list."""
        context = await library_context(voices, catalog, settings)
        return render(
            request, "voices.html", "partials/voices_list.html", context, active="voices", partial_for=("voices-list",)
        )

    @post("/", operation_id="voicesPageAdd", status_code=200)
    async def add(
        self,
        voices: NamedDependency[VoiceLibrary],
        speech: NamedDependency[SpeechService],
        catalog: NamedDependency[Catalog],
        settings: NamedDependency[Settings],
        data: MultipartBody[VoiceForm],
    ) -> Template:
        """Store an uploaded or recorded clip with its transcript; answers with the updated list."""
        audio = await data.audio.read() if data.audio is not None else b""
        if not audio:
            raise ApiError(400, "choose an audio file or record one", param="audio", code="invalid_value")
        clip = await speech.decoder.read(audio, "audio")
        voice = await anyio.to_thread.run_sync(
            lambda: voices.add(
                data.name.strip(),
                clip,
                data.transcript,
                _optional(data.locale),
                _optional(data.gender),
                _optional(data.description),
            )
        )
        context = await library_context(voices, catalog, settings)
        context["message"] = f"Added voice {voice.name} ({voice.seconds:.1f} s)."
        return fragment("partials/voices_list.html", context)

    @delete("/{name:str}", operation_id="voicesPageDelete", status_code=200)
    async def remove(
        self,
        voices: NamedDependency[VoiceLibrary],
        catalog: NamedDependency[Catalog],
        settings: NamedDependency[Settings],
        name: FromPath[str],
    ) -> Template:
        """Delete an uploaded voice; answers with the updated list."""
        voice = await anyio.to_thread.run_sync(voices.delete, name)
        context = await library_context(voices, catalog, settings)
        context["message"] = f"Deleted voice {voice.name}."
        return fragment("partials/voices_list.html", context)

"""The Voices page: the voice library (presets, uploads and OpenAI's custom voices) with players, an upload form (file
or a recording made in the browser), the voice consents that custom voices are authorised by, and delete buttons.
Everything goes to the same VoiceLibrary and ConsentStore as /v1/voices and /v1/audio/voice_consents; a form's
problems are all reported at once (FormErrors), each next to its field."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from litestar import Controller, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, MultipartBody
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from service.controllers.errors import ApiError, as_api_error
from service.controllers.pages.rendering import FormErrors, fragment, render
from service.engines.base import AudioClip
from service.errors import ServiceError
from service.library.consents import ConsentStore, checked_language
from service.library.voices import (
    MAX_TRANSCRIPT_CHARS,
    VoiceConflict,
    VoiceLibrary,
    check_speech,
    checked_label,
    checked_transcript,
    validate_name,
    wav_bytes,
)
from service.models.catalog import Catalog
from service.settings import Settings
from service.speech.service import SpeechService

Value = TypeVar("Value")


async def library_context(
    voices: VoiceLibrary, consents: ConsentStore, catalog: Catalog, settings: Settings, message: str | None = None
) -> dict[str, Any]:
    listed = await anyio.to_thread.run_sync(voices.all)
    stored = await anyio.to_thread.run_sync(consents.all)
    cloning = [spec.id for spec in catalog.servable() if spec.capabilities.clones]
    return {
        "voices": listed,
        "consents": [(consent, [v.label or v.name for v in listed if v.consent == consent.id]) for consent in stored],
        "consent_names": {consent.id: consent.name for consent in stored},
        "cloning_models": cloning,
        "unavailable": catalog.unavailable,
        "consent_required": settings.consent_required,
        "max_audio_seconds": settings.max_audio_seconds,
        "max_transcript_chars": MAX_TRANSCRIPT_CHARS,
        "message": message,
    }


async def updated_list(
    voices: VoiceLibrary, consents: ConsentStore, catalog: Catalog, settings: Settings, message: str
) -> Template:
    """The library's list after a change, with a line saying what changed."""
    return fragment("partials/voices_list.html", await library_context(voices, consents, catalog, settings, message))


@dataclass
class VoiceForm:
    """The API's voice upload (POST /v1/voices) as the page sends it, or with `consent` a custom voice of OpenAI's
    API (POST /v1/audio/voices) labelled `name`; a missing clip gets a readable error."""

    name: str = ""
    transcript: str = ""
    audio: UploadFile | None = None
    consent: str = ""
    locale: str | None = None
    gender: str | None = None
    description: str | None = None


@dataclass
class ConsentForm:
    """A voice consent (POST /v1/audio/voice_consents): a name, the recording's language and the recording."""

    name: str = ""
    language: str = ""
    recording: UploadFile | None = None


def _optional(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


class Problems:
    """A form's checks, run one after another; each failure is kept (as the API's error), not raised, so that the
    answer names every field at fault."""

    def __init__(self) -> None:
        self.found: list[ApiError] = []

    def check(self, run: Callable[[], Value]) -> Value | None:
        try:
            return run()
        except ServiceError as error:
            self.found.append(as_api_error(error))
            return None

    async def clip(
        self, upload: UploadFile | None, param: str, decode: Callable[[bytes, str], Awaitable[AudioClip]]
    ) -> AudioClip | None:
        """The uploaded (or recorded) clip, decoded; an unreadable file is named by its file name, in words."""
        audio = await upload.read() if upload is not None else b""
        if not audio:
            self.found.append(ApiError(400, "choose an audio file or record one", param=param, code="invalid_value"))
            return None
        try:
            return await decode(audio, param)
        except ServiceError as error:
            problem = as_api_error(error)
            if problem.code == "invalid_audio":
                name = upload.filename if upload is not None and upload.filename else "the file"
                problem = ApiError(
                    400,
                    f"{name} is not an audio file this server can read: choose a WAV, FLAC, Ogg or MP3 recording",
                    param=param,
                    code="invalid_audio",
                )
            self.found.append(problem)
            return None

    def raise_any(self) -> None:
        if self.found:
            raise FormErrors(self.found)


class VoicePagesController(Controller):
    path = "/voices"
    include_in_schema = False

    @get("/", operation_id="voicesPage")
    async def voices_page(
        self,
        request: HTMXRequest,
        voices: NamedDependency[VoiceLibrary],
        consents: NamedDependency[ConsentStore],
        catalog: NamedDependency[Catalog],
        settings: NamedDependency[Settings],
    ) -> Template:
        """The library; with htmx, only the list."""
        context = await library_context(voices, consents, catalog, settings)
        return render(
            request, "voices.html", "partials/voices_list.html", context, active="voices", partial_for=("voices-list",)
        )

    @post("/", operation_id="voicesPageAdd", status_code=200)
    async def add(
        self,
        voices: NamedDependency[VoiceLibrary],
        consents: NamedDependency[ConsentStore],
        speech: NamedDependency[SpeechService],
        catalog: NamedDependency[Catalog],
        settings: NamedDependency[Settings],
        data: MultipartBody[VoiceForm],
    ) -> Template:
        """Store an uploaded or recorded clip with its transcript (with a consent: as a custom voice authorised by
        it); answers with the updated list, or with every problem of the form."""
        name, consent = data.name.strip(), data.consent.strip()
        problems = Problems()
        if consent:
            problems.check(lambda: checked_label(name, "name"))
            problems.check(lambda: consents.get(consent, "consent"))
        elif problems.check(lambda: validate_name(name)) and name in await anyio.to_thread.run_sync(voices.names):
            problems.found.append(
                as_api_error(VoiceConflict(f"a voice named {name!r} exists already; delete it or pick another name"))
            )
        clip = await problems.clip(data.audio, "audio", speech.decoder.read)
        if clip is not None:
            problems.check(lambda: check_speech(clip, "audio"))
        problems.check(lambda: checked_transcript(data.transcript, required=True))
        problems.raise_any()
        assert clip is not None
        if consent:
            voice = await anyio.to_thread.run_sync(
                lambda: consents.add_voice(
                    clip, name, data.transcript, consent, consent_required=settings.consent_required
                )
            )
        else:
            voice = await anyio.to_thread.run_sync(
                lambda: voices.add(
                    name,
                    clip,
                    data.transcript,
                    _optional(data.locale),
                    _optional(data.gender),
                    _optional(data.description),
                )
            )
        return await updated_list(
            voices, consents, catalog, settings, f"Added voice {voice.label or voice.name} ({voice.seconds:.1f} s)."
        )

    @delete("/{name:str}", operation_id="voicesPageDelete", status_code=200)
    async def remove(
        self,
        voices: NamedDependency[VoiceLibrary],
        consents: NamedDependency[ConsentStore],
        catalog: NamedDependency[Catalog],
        settings: NamedDependency[Settings],
        name: FromPath[str],
    ) -> Template:
        """Delete an uploaded voice; answers with the updated list."""
        voice = await anyio.to_thread.run_sync(voices.delete, name)
        return await updated_list(voices, consents, catalog, settings, f"Deleted voice {voice.label or voice.name}.")

    @post("/consents", operation_id="voicesPageAddConsent", status_code=200)
    async def add_consent(
        self,
        voices: NamedDependency[VoiceLibrary],
        consents: NamedDependency[ConsentStore],
        speech: NamedDependency[SpeechService],
        catalog: NamedDependency[Catalog],
        settings: NamedDependency[Settings],
        data: MultipartBody[ConsentForm],
    ) -> Template:
        """Store a consent recording (uploaded or recorded); answers with the updated list."""
        problems = Problems()
        problems.check(lambda: checked_label(data.name, "name"))
        problems.check(lambda: checked_language(data.language.strip()))
        recording = await problems.clip(data.recording, "recording", speech.decoder.read)
        problems.raise_any()
        assert recording is not None
        consent = await anyio.to_thread.run_sync(lambda: consents.add(recording, data.name, data.language.strip()))
        return await updated_list(
            voices, consents, catalog, settings, f"Added the voice consent {consent.name} ({consent.id})."
        )

    @get("/consents/{consent_id:str}/audio", operation_id="voicesPageConsentAudio", media_type="audio/wav")
    async def consent_audio(
        self, consents: NamedDependency[ConsentStore], consent_id: FromPath[str]
    ) -> Response[bytes]:
        """A consent's recording as WAV."""
        consent = await anyio.to_thread.run_sync(consents.get, consent_id)
        return Response(await anyio.to_thread.run_sync(wav_bytes, consent.recording_path), media_type="audio/wav")

    @delete("/consents/{consent_id:str}", operation_id="voicesPageDeleteConsent", status_code=200)
    async def remove_consent(
        self,
        voices: NamedDependency[VoiceLibrary],
        consents: NamedDependency[ConsentStore],
        catalog: NamedDependency[Catalog],
        settings: NamedDependency[Settings],
        consent_id: FromPath[str],
    ) -> Template:
        """Withdraw a consent that no voice uses (409 naming them otherwise); answers with the updated list."""
        consent = await anyio.to_thread.run_sync(consents.delete, consent_id)
        return await updated_list(voices, consents, catalog, settings, f"Deleted the voice consent {consent.name}.")

"""OpenAI's custom voices and voice consents (/v1/audio/voices, /v1/audio/voice_consents), on the server's one voice
library: a custom voice is a library voice named by its `voice_…` id, cloned by Step-Audio-EditX in speech requests,
and the consent that authorised it is kept with it (service/library/consents.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import anyio
import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, MultipartBody, Parameter

from service.controllers.openapi import error_responses
from service.controllers.schemas import (
    CustomVoiceBody,
    CustomVoiceDeleted,
    CustomVoiceList,
    VoiceConsentBody,
    VoiceConsentDeleted,
    VoiceConsentList,
)
from service.errors import InvalidRequest
from service.library.consents import ConsentStore
from service.library.voices import VoiceLibrary
from service.settings import Settings
from service.speech.service import SpeechService

After = Annotated[
    str | None, Parameter(description="The id of the last item of the previous page; the list goes on after it.")
]
Limit = Annotated[int, Parameter(ge=1, le=100, description="How many items a page holds: 1 to 100.")]


@dataclass
class CustomVoiceForm:
    """OpenAI's CreateVoiceRequest: `name` (free text), `audio_sample` (wav, flac, ogg, mp3; up to
    MAX_AUDIO_SECONDS) and `consent` (a voice consent's id; optional only with CONSENT_REQUIRED=false). This
    server's extension: `transcript`, what the sample says, which cloning needs (it may be given later with PATCH
    /v1/voices/{id}). `type` "prompt" (designing a voice from a text prompt) is not available here."""

    name: str
    audio_sample: UploadFile | None = None
    consent: str = ""
    transcript: str = ""
    type: Literal["audio_sample", "prompt"] = "audio_sample"


@dataclass
class VoiceConsentForm:
    """OpenAI's CreateVoiceConsentRequest: the speaker's consent `recording` (wav, flac, ogg, mp3; up to
    MAX_AUDIO_SECONDS), a `name` for it and the BCP 47 tag of the `language` it is spoken in."""

    name: str
    recording: UploadFile
    language: str


class VoiceConsentUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """OpenAI's UpdateVoiceConsentRequest: the consent's new name."""

    name: str


class CustomVoicesController(Controller):
    path = "/v1/audio/voices"
    tags = ("openai",)

    @post(
        "/",
        operation_id="createVoice",
        summary="Create a custom voice",
        status_code=200,
        responses=error_responses(400, 403, 404, 409, 413, 507),
    )
    async def create_voice(
        self,
        consents: NamedDependency[ConsentStore],
        speech: NamedDependency[SpeechService],
        settings: NamedDependency[Settings],
        data: MultipartBody[CustomVoiceForm],
    ) -> CustomVoiceBody:
        """Create a custom voice from a recording (`client.audio.voices.create`), authorised by a voice consent;
        it joins the voice library (GET /v1/voices) under its id, and speech requests clone it by that id."""
        if data.type == "prompt":
            raise InvalidRequest(
                "this server cannot design voices from a text prompt (type 'prompt'); create one from a recording: "
                "type 'audio_sample' with audio_sample and consent",
                param="type",
                code="unsupported_value",
            )
        if data.audio_sample is None:
            raise InvalidRequest(
                "audio_sample is required: a recording of the voice", param="audio_sample", code="invalid_value"
            )
        sample = await speech.decoder.read(await data.audio_sample.read(), "audio_sample")
        voice = await anyio.to_thread.run_sync(
            lambda: consents.add_voice(
                sample,
                data.name,
                data.transcript,
                data.consent.strip() or None,
                consent_required=settings.consent_required,
            )
        )
        return CustomVoiceBody.of(voice)

    @get("/", operation_id="listCustomVoices", summary="List custom voices", responses=error_responses(400))
    async def list_voices(
        self, voices: NamedDependency[VoiceLibrary], after: After = None, limit: Limit = 20
    ) -> CustomVoiceList:
        """The custom voices, newest first, a page at a time (this server's extension, in OpenAI's list shape)."""
        return CustomVoiceList.of(await anyio.to_thread.run_sync(voices.custom_page, after, limit))

    @get(
        "/{voice_id:str}",
        operation_id="retrieveCustomVoice",
        summary="Get a custom voice",
        responses=error_responses(400, 404),
    )
    async def retrieve_voice(self, voices: NamedDependency[VoiceLibrary], voice_id: FromPath[str]) -> CustomVoiceBody:
        """One custom voice (this server's extension)."""
        return CustomVoiceBody.of(await anyio.to_thread.run_sync(voices.get_custom, voice_id))

    @delete(
        "/{voice_id:str}",
        operation_id="deleteCustomVoice",
        summary="Delete a custom voice",
        status_code=200,
        responses=error_responses(400, 403, 404),
    )
    async def delete_voice(self, voices: NamedDependency[VoiceLibrary], voice_id: FromPath[str]) -> CustomVoiceDeleted:
        """Delete a custom voice; its consent stays, as at OpenAI."""
        voice = await anyio.to_thread.run_sync(voices.delete_custom, voice_id)
        return CustomVoiceDeleted(id=voice.name, deleted=True, object="audio.voice.deleted")


class VoiceConsentsController(Controller):
    path = "/v1/audio/voice_consents"
    tags = ("openai",)

    @post(
        "/",
        operation_id="createVoiceConsent",
        summary="Store a voice consent",
        status_code=200,
        responses=error_responses(400, 403, 413, 507),
    )
    async def create_consent(
        self,
        consents: NamedDependency[ConsentStore],
        speech: NamedDependency[SpeechService],
        data: MultipartBody[VoiceConsentForm],
    ) -> VoiceConsentBody:
        """Store a consent recording (`client.audio.voice_consents.create`). The server checks that it decodes
        within the upload limits and that `language` is a well-formed tag; it cannot check who speaks or what."""
        recording = await speech.decoder.read(await data.recording.read(), "recording")
        consent = await anyio.to_thread.run_sync(consents.add, recording, data.name, data.language)
        return VoiceConsentBody.of(consent)

    @get("/", operation_id="listVoiceConsents", summary="List voice consents", responses=error_responses(400))
    async def list_consents(
        self, consents: NamedDependency[ConsentStore], after: After = None, limit: Limit = 20
    ) -> VoiceConsentList:
        """The voice consents, newest first, a page at a time."""
        return VoiceConsentList.of(await anyio.to_thread.run_sync(consents.page, after, limit))

    @get(
        "/{consent_id:str}",
        operation_id="getVoiceConsent",
        summary="Get a voice consent",
        responses=error_responses(400, 404),
    )
    async def retrieve_consent(
        self, consents: NamedDependency[ConsentStore], consent_id: FromPath[str]
    ) -> VoiceConsentBody:
        """One voice consent."""
        return VoiceConsentBody.of(await anyio.to_thread.run_sync(consents.get, consent_id))

    @post(
        "/{consent_id:str}",
        operation_id="updateVoiceConsent",
        summary="Rename a voice consent",
        status_code=200,
        responses=error_responses(400, 403, 404, 413, 507),
    )
    async def update_consent(
        self, consents: NamedDependency[ConsentStore], consent_id: FromPath[str], data: JSONBody[VoiceConsentUpdate]
    ) -> VoiceConsentBody:
        """Rename a voice consent (its name only; the recording stays)."""
        return VoiceConsentBody.of(await anyio.to_thread.run_sync(consents.rename, consent_id, data.name))

    @delete(
        "/{consent_id:str}",
        operation_id="deleteVoiceConsent",
        summary="Delete a voice consent",
        status_code=200,
        responses=error_responses(400, 403, 404, 409),
    )
    async def delete_consent(
        self, consents: NamedDependency[ConsentStore], consent_id: FromPath[str]
    ) -> VoiceConsentDeleted:
        """Delete a voice consent; 409 while custom voices it authorised exist (delete them first)."""
        consent = await anyio.to_thread.run_sync(consents.delete, consent_id)
        return VoiceConsentDeleted(id=consent.id, object="audio.voice_consent", deleted=True)

from __future__ import annotations

from dataclasses import dataclass

import anyio
import msgspec
from litestar import Controller, Response, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, MultipartBody

from service.controllers.openapi import error_responses
from service.controllers.schemas import VoiceBody, VoiceDeleted, VoiceList
from service.library.voices import VoiceLibrary, wav_bytes
from service.speech.service import SpeechService


@dataclass
class VoiceUpload:
    """A reference clip (up to MAX_AUDIO_SECONDS) and exactly what it says."""

    name: str
    transcript: str
    audio: UploadFile
    locale: str | None = None
    gender: str | None = None
    description: str | None = None


class VoiceChanges(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to change of a voice; fields left out (or null) stay as they are."""

    transcript: str | None = None
    label: str | None = None
    description: str | None = None


class VoicesController(Controller):
    path = "/v1/voices"
    tags = ("voices",)

    @get("/", operation_id="listVoices", summary="List the voice library", responses=error_responses())
    async def list_voices(self, voices: NamedDependency[VoiceLibrary]) -> VoiceList:
        """The voice library: presets from the configuration and uploaded voices."""
        listed = await anyio.to_thread.run_sync(voices.all)
        return VoiceList(object="list", data=[VoiceBody.of(voice) for voice in listed])

    @post(
        "/",
        operation_id="addVoice",
        summary="Add a voice for cloning",
        status_code=201,
        responses=error_responses(400, 403, 409, 413, 507),
    )
    async def add_voice(
        self,
        voices: NamedDependency[VoiceLibrary],
        speech: NamedDependency[SpeechService],
        data: MultipartBody[VoiceUpload],
    ) -> VoiceBody:
        """Store a voice for cloning: `name` (letters, digits, - and _), `transcript`, `audio` (wav, flac, ogg,
        mp3), optional `locale`, `gender`, `description`."""
        clip = await speech.decoder.read(await data.audio.read(), "audio")
        voice = await anyio.to_thread.run_sync(
            lambda: voices.add(data.name, clip, data.transcript, data.locale, data.gender, data.description)
        )
        return VoiceBody.of(voice)

    @get("/{name:str}", operation_id="getVoice", summary="Get a voice", responses=error_responses(400, 404))
    async def get_voice(self, voices: NamedDependency[VoiceLibrary], name: FromPath[str]) -> VoiceBody:
        """One voice."""
        return VoiceBody.of(await anyio.to_thread.run_sync(voices.get, name))

    @get(
        "/{name:str}/audio",
        operation_id="getVoiceAudio",
        summary="A voice's reference clip (WAV)",
        media_type="audio/wav",
        responses=error_responses(400, 404),
    )
    async def voice_audio(self, voices: NamedDependency[VoiceLibrary], name: FromPath[str]) -> Response[bytes]:
        """The voice's reference clip as WAV."""
        voice = await anyio.to_thread.run_sync(voices.get, name)
        return Response(await anyio.to_thread.run_sync(wav_bytes, voice.audio_path), media_type="audio/wav")

    @patch(
        "/{name:str}",
        operation_id="updateVoice",
        summary="Change a voice's transcript, label or description",
        responses=error_responses(400, 403, 404, 409, 413, 507),
    )
    async def update_voice(
        self, voices: NamedDependency[VoiceLibrary], name: FromPath[str], data: JSONBody[VoiceChanges]
    ) -> VoiceBody:
        """Change an uploaded voice's `transcript` (e.g. give a custom voice made without one what its clip
        says, which cloning needs), `label` or `description` (empty removes it); presets are read-only."""
        voice = await anyio.to_thread.run_sync(
            lambda: voices.update(name, data.transcript, data.label, data.description)
        )
        return VoiceBody.of(voice)

    @delete(
        "/{name:str}",
        operation_id="deleteVoice",
        summary="Delete a voice",
        status_code=200,
        responses=error_responses(400, 403, 404, 409),
    )
    async def delete_voice(self, voices: NamedDependency[VoiceLibrary], name: FromPath[str]) -> VoiceDeleted:
        """Delete an uploaded voice (presets are read-only)."""
        voice = await anyio.to_thread.run_sync(voices.delete, name)
        return VoiceDeleted(deleted=True, name=voice.name)

"""The JSON bodies the API answers with, as msgspec Structs, so the OpenAPI schema documents each of them (the
model status and unload report are in service/models/views.py, the health body in service/controllers/openapi.py)."""

from __future__ import annotations

from typing import Literal

import msgspec

from service.library.consents import Consent
from service.library.voices import Page, Voice


class VoiceBody(msgspec.Struct):
    """A voice of the library: its transcript and clip's length and rate, and whether it is a read-only preset. A
    custom voice of OpenAI's API (POST /v1/audio/voices) is named by its id, has its OpenAI name as `label`,
    `openai_type` "audio_sample" and the id of the voice consent that authorised it (`consent`, if one did)."""

    name: str
    transcript: str
    seconds: float
    sample_rate: int
    locale: str | None
    gender: str | None
    description: str | None
    preset: bool
    created: float | None
    label: str | None
    openai_type: str | None
    consent: str | None

    @classmethod
    def of(cls, voice: Voice) -> VoiceBody:
        return cls(**voice.public())


class VoiceList(msgspec.Struct):
    object: Literal["list"]
    data: list[VoiceBody]


class VoiceDeleted(msgspec.Struct):
    deleted: bool
    name: str


class ModelCard(msgspec.Struct):
    """A model in OpenAI's Model shape; an alias names its target in `owned_by` (`alias:<model>`)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    object: Literal["list"]
    data: list[ModelCard]


def _first_and_last(ids: list[str]) -> tuple[str | None, str | None]:
    """A cursor page's `first_id` and `last_id`."""
    return (ids[0], ids[-1]) if ids else (None, None)


class CustomVoiceBody(msgspec.Struct):
    """OpenAI's Voice object for a custom voice made from a recording (`type` "audio_sample")."""

    object: Literal["audio.voice"]
    id: str
    name: str
    created_at: int
    type: Literal["audio_sample"]

    @classmethod
    def of(cls, voice: Voice) -> CustomVoiceBody:
        return cls("audio.voice", voice.name, voice.label or voice.name, int(voice.created or 0), "audio_sample")


class CustomVoiceList(msgspec.Struct):
    """A page of custom voices in OpenAI's cursor list shape, newest first."""

    object: Literal["list"]
    data: list[CustomVoiceBody]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, page: Page[Voice]) -> CustomVoiceList:
        data = [CustomVoiceBody.of(voice) for voice in page.items]
        return cls("list", data, *_first_and_last([voice.id for voice in data]), page.has_more)


class CustomVoiceDeleted(msgspec.Struct):
    id: str
    deleted: bool
    object: Literal["audio.voice.deleted"]


class VoiceConsentBody(msgspec.Struct):
    """OpenAI's voice consent object: a consent recording that authorises custom voices."""

    object: Literal["audio.voice_consent"]
    id: str
    name: str
    language: str
    created_at: int

    @classmethod
    def of(cls, consent: Consent) -> VoiceConsentBody:
        return cls("audio.voice_consent", consent.id, consent.name, consent.language, int(consent.created_at))


class VoiceConsentList(msgspec.Struct):
    """A page of voice consents in OpenAI's cursor list shape, newest first."""

    object: Literal["list"]
    data: list[VoiceConsentBody]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, page: Page[Consent]) -> VoiceConsentList:
        data = [VoiceConsentBody.of(consent) for consent in page.items]
        return cls("list", data, *_first_and_last([consent.id for consent in data]), page.has_more)


class VoiceConsentDeleted(msgspec.Struct):
    id: str
    object: Literal["audio.voice_consent"]
    deleted: bool

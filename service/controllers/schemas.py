"""The JSON bodies the API answers with, as msgspec Structs, so the OpenAPI schema documents each of them (the
model status and unload report are in service/models/views.py, the health body in service/controllers/openapi.py)."""

from __future__ import annotations

from typing import Literal

import msgspec

from service.library.voices import Voice


class VoiceBody(msgspec.Struct):
    """A voice of the library: its transcript and clip's length and rate, and whether it is a read-only preset."""

    name: str
    transcript: str
    seconds: float
    sample_rate: int
    locale: str | None
    gender: str | None
    description: str | None
    preset: bool
    created: float | None

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

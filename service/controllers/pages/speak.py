"""The Speak page, the home page of the web UI. The page's script sends the form to POST /v1/audio/speech, the
same route API clients use, and plays the answer; this controller only renders the form from the catalog."""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from service.controllers.pages.rendering import aliases_of, model_choices, render
from service.library.voices import VoiceLibrary
from service.models.catalog import Catalog, ModelSpec
from service.settings import Settings

# formats a browser's <audio> plays; pcm (headerless) and aac (no encoder here) are left to the API
PLAYABLE_FORMATS = (("mp3", "MP3"), ("wav", "WAV"), ("opus", "Ogg Opus"), ("flac", "FLAC"))


async def model_fields(spec: ModelSpec, voices: VoiceLibrary) -> dict[str, Any]:
    """The parts of the Speak form that depend on the model: its voices (or the library's, for cloning models),
    whether it takes speed and instructions."""
    capabilities = spec.capabilities
    if capabilities.clones:
        library = await anyio.to_thread.run_sync(voices.all)
        choices = [
            (voice.name, f"{voice.name} ({voice.seconds:.1f} s{', preset' if voice.preset else ''})")
            for voice in library
        ]
    else:
        choices = [(voice, voice) for voice in capabilities.voices]
    return {
        "spec": spec,
        "clones": capabilities.clones,
        "voice_choices": choices,
        "default_voice": capabilities.default_voice,
        "supports_speed": capabilities.supports_speed,
        "supports_instructions": capabilities.supports_instructions,
        "edit_options": capabilities.edit_options,
    }


class PagesController(Controller):
    include_in_schema = False

    @get("/", operation_id="home")
    async def speak(
        self,
        request: HTMXRequest,
        catalog: NamedDependency[Catalog],
        voices: NamedDependency[VoiceLibrary],
        settings: NamedDependency[Settings],
        model: FromQuery[str | None] = None,
    ) -> Template:
        """Speak: text, model, voice, format and speed; the answer plays in the page. With htmx (the model picker
        changed), only the fields that depend on the model."""
        spec = catalog.specs.get(catalog.aliases.get(model, model) if model else catalog.default_model)
        spec = spec or catalog.specs[catalog.default_model]
        choices = model_choices(catalog)
        context = {
            "models": [(choice, aliases_of(catalog, choice.id)) for choice in choices],
            "cloning_available": any(choice.capabilities.clones for choice in choices),
            "library_voices": len(await anyio.to_thread.run_sync(voices.names)),
            "selected": spec.id,
            "formats": PLAYABLE_FORMATS,
            "max_input_chars": settings.max_input_chars,
            **await model_fields(spec, voices),
        }
        return render(
            request, "index.html", "partials/speak_fields.html", context, active="speak", partial_for=("model-fields",)
        )

"""The wire schema of a speech request: OpenAI's fields and the Step-Audio-EditX fork's `step_audio` extension."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.engines.base import MAX_EDIT_ITERATIONS


class VoiceReference(msgspec.Struct):
    """OpenAI's object form of a voice: `{"id": "..."}`."""

    id: str


class StepAudioExtension(msgspec.Struct, kw_only=True):
    """The Step-Audio-EditX fork's request extension, still accepted so its clients keep working."""

    mode: Literal["clone", "emotion", "style", "speed", "paralinguistic", "denoise", "vad"] = "clone"
    model_variant: Literal["base", "bnb", "awq"] | None = None
    prompt_text: str | None = None
    prompt_audio_base64: str | None = None
    prompt_audio_url: str | None = None
    input_audio_base64: str | None = None
    input_audio_url: str | None = None
    audio_text: Annotated[str | None, msgspec.Meta(description="What input_audio says (edit modes).")] = None
    edit_info: Annotated[str | None, msgspec.Meta(description="The emotion, style or speed value.")] = None
    intensity: Annotated[float | None, msgspec.Meta(description="Accepted and ignored: the engine has none.")] = None
    n_edit_iter: Annotated[int, msgspec.Meta(ge=1, le=MAX_EDIT_ITERATIONS)] = 1


class SpeechRequest(msgspec.Struct, kw_only=True):
    """OpenAI's speech request, plus `keep_alive`, `sample_rate` and the fork's `step_audio` extension."""

    model: Annotated[str, msgspec.Meta(description="Model id, or tts-1 / tts-1-hd for the default model.")]
    input: Annotated[str, msgspec.Meta(description="Text to speak.")]
    voice: Annotated[
        str | VoiceReference | None,
        msgspec.Meta(description="A voice of the model (name or {id}); OpenAI voice names mean its default voice."),
    ] = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, msgspec.Meta(ge=0.25, le=4.0, description="0.25 to 4.0; 1.0 is normal.")] = 1.0
    instructions: Annotated[
        str | None, msgspec.Meta(description="Delivery instructions; refused by engines that cannot follow them.")
    ] = None
    stream_format: Annotated[
        Literal["audio", "sse"] | None,
        msgspec.Meta(
            description="audio: stream encoded audio as it is made; sse: server-sent events with base64 "
            "chunks; absent: one complete file."
        ),
    ] = None
    sample_rate: (
        Annotated[
            int,
            msgspec.Meta(
                ge=8000, le=48000, description="Output sample rate; default: the model's own (24 kHz for pcm)."
            ),
        ]
        | None
    ) = None
    keep_alive: Annotated[
        str | float | None,
        msgspec.Meta(
            description="How long the model stays loaded after this request: seconds or a duration such "
            "as '10m' or '1h30m'; negative: until unloaded by hand; 0: unload right after it."
        ),
    ] = None
    step_audio: StepAudioExtension | None = None
    metadata: dict[str, str] | None = None

    @property
    def voice_name(self) -> str | None:
        """The voice asked for, in either of OpenAI's forms (a name or `{"id": ...}`)."""
        return self.voice.id if isinstance(self.voice, VoiceReference) else self.voice

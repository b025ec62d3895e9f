"""Piper voices (ONNX, CPU): the embedded default voice and any voice found under the models folder."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.engines.base import AudioChunk, Capabilities, EngineInputError, GpuMemory, SynthesisRequest

if TYPE_CHECKING:
    from piper import PiperVoice


# what piper's PiperConfig.from_dict reads without a default: (path in the JSON, shown as)
_REQUIRED_CONFIG = (
    (("num_symbols",), "num_symbols"),
    (("num_speakers",), "num_speakers"),
    (("audio", "sample_rate"), "audio.sample_rate"),
    (("espeak", "voice"), "espeak.voice"),
    (("phoneme_id_map",), "phoneme_id_map"),
)


class PiperVoiceError(ValueError):
    """A voice's .onnx.json that piper cannot use; the message names the file and what it lacks."""


def _lacks(config: object, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return True
        config = config[key]
    return False


def _voice_config(options: Mapping[str, Any]) -> dict[str, Any]:
    model_path = Path(options["model_path"])
    config_path = Path(options.get("config_path") or f"{model_path}.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PiperVoiceError(f"{config_path} cannot be read as a Piper voice config: {error}") from error
    missing = [name for path, name in _REQUIRED_CONFIG if _lacks(config, path)]
    if missing:
        raise PiperVoiceError(f"{config_path} is not a complete Piper voice config: it lacks {', '.join(missing)}")
    checked: dict[str, Any] = config
    return checked


class PiperEngine:
    """Options: `model_path` (the .onnx file), optional `config_path` and `voice_name`."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        self._capabilities = self.describe(options)
        self._speaker_ids: dict[str, int] = dict(_voice_config(options).get("speaker_id_map") or {})
        self._voice: PiperVoice | None = None

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> Capabilities:
        config = _voice_config(options)
        speakers = tuple(sorted(config.get("speaker_id_map") or {}))
        default_voice = str(options.get("voice_name") or Path(options["model_path"]).name.split(".")[0])
        return Capabilities(
            sample_rate=int(config["audio"]["sample_rate"]),
            voices=speakers or (default_voice,),
            default_voice=speakers[0] if speakers else default_voice,
        )

    def load(self) -> None:
        from piper import PiperVoice

        self._voice = PiperVoice.load(self._options["model_path"], config_path=self._options.get("config_path"))

    def synthesize(self, request: SynthesisRequest) -> Iterator[AudioChunk]:
        from piper import SynthesisConfig

        if self._voice is None:
            raise RuntimeError("synthesize called before load")
        if request.voice not in self._capabilities.voices:
            raise EngineInputError("voice", f"voice {request.voice!r} is not one of {list(self._capabilities.voices)}")
        length_scale = self._voice.config.length_scale / request.speed
        config = SynthesisConfig(speaker_id=self._speaker_ids.get(request.voice), length_scale=length_scale)
        for chunk in self._voice.synthesize(request.text, syn_config=config):
            yield chunk.audio_float_array

    def gpu_memory(self) -> GpuMemory:
        return GpuMemory()

"""Piper voices (ONNX, CPU): the embedded default voice and any voice found under the models folder."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.engines.base import AudioChunk, Capabilities, EngineInputError, GpuMemory, SynthesisRequest
from service.engines.text import plain_letters

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


def _session_with_threads(model_path: str, threads: int) -> Any:
    """An onnxruntime session of the voice that computes each operator on `threads` CPU threads."""
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])


class PiperEngine:
    """Options: `model_path` (the .onnx file), optional `config_path`, `voice_name` and `threads` (onnxruntime's
    intra-op threads; default: onnxruntime's, one per core)."""

    # a replica's CPU threads (models file `threads`) arrive as the `threads` option
    takes_threads = True

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

    @classmethod
    def import_libraries(cls, options: Mapping[str, Any]) -> None:
        """piper, and through it onnxruntime, as a load imports them (a warm spare's work)."""
        import piper  # noqa: F401

    def load(self) -> None:
        from piper import PiperVoice

        threads = self._options.get("threads")
        if not threads:
            self._voice = PiperVoice.load(self._options["model_path"], config_path=self._options.get("config_path"))
            return
        from piper import PiperConfig

        session = _session_with_threads(str(self._options["model_path"]), int(threads))
        self._voice = PiperVoice(config=PiperConfig.from_dict(_voice_config(self._options)), session=session)

    def synthesize(self, request: SynthesisRequest) -> Iterator[AudioChunk]:
        from piper import SynthesisConfig

        if self._voice is None:
            raise RuntimeError("synthesize called before load")
        if request.voice not in self._capabilities.voices:
            raise EngineInputError("voice", f"voice {request.voice!r} is not one of {list(self._capabilities.voices)}")
        length_scale = self._voice.config.length_scale / request.speed
        config = SynthesisConfig(speaker_id=self._speaker_ids.get(request.voice), length_scale=length_scale)
        for chunk in self._voice.synthesize(plain_letters(request.text), syn_config=config):
            yield chunk.audio_float_array

    def gpu_memory(self) -> GpuMemory:
        return GpuMemory()

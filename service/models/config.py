"""The optional models file (TOML): explicitly configured models beside the discovered ones.

[[models]]
id = "my-voice"
engine = "piper"                 # or "package.module:Class"
idle_timeout = 600               # optional; default IDLE_TIMEOUT
load_timeout = 900               # optional; default LOAD_TIMEOUT
auto_unload = true               # optional
pinned = false                   # optional
preload = false                  # optional
aliases = ["tts-1-hd"]           # optional: more names for this model (MODEL_ALIASES overrides them)
[models.options]                 # passed to the engine
model_path = "/models/voice.onnx"
[models.openai_voices]           # optional: what OpenAI's voice names mean here (unmapped: the default voice)
alloy = "speaker_2"              # a voice of the engine, or a library voice for a cloning model
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import soundfile

from service.lazy_loader import ModelPolicy
from service.library.voices import Voice, VoiceError, validate_name
from service.models.catalog import OPENAI_VOICES, ModelSpec
from service.settings import Settings

_KNOWN_KEYS = {
    "id",
    "engine",
    "options",
    "idle_timeout",
    "load_timeout",
    "auto_unload",
    "pinned",
    "preload",
    "owned_by",
    "environment",
    "aliases",
    "openai_voices",
}
_VOICE_KEYS = {"name", "audio", "transcript", "locale", "gender", "description"}


class ModelConfigError(ValueError):
    """An invalid models file, naming the file, the entry and the reason."""


def _table(path: Path, section: str, index: int, raw: Any, name_key: str, known: set[str]) -> str:
    """Where an entry stands, for messages; checks that it is a table with known keys only."""
    where = f"{path}: {section}[{index}]"
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{where}: expected a table")
    where = f"{where} ({raw.get(name_key, f'no {name_key}')!s})"
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return where


def _entry(path: Path, index: int, raw: Any, settings: Settings) -> ModelSpec:
    where = _table(path, "models", index, raw, "id", _KNOWN_KEYS)
    if not isinstance(raw.get("id"), str) or not raw["id"] or "/" in raw["id"]:
        raise ModelConfigError(f"{where}: 'id' must be a non-empty string without '/'")
    if not isinstance(raw.get("engine"), str):
        raise ModelConfigError(f"{where}: 'engine' must be a string")
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise ModelConfigError(f"{where}: 'options' must be a table")
    idle_timeout = raw.get("idle_timeout", settings.idle_timeout)
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)):
        raise ModelConfigError(f"{where}: 'idle_timeout' must be a number of seconds, got {idle_timeout!r}")
    load_timeout = raw.get("load_timeout")
    if load_timeout is not None and (
        isinstance(load_timeout, bool) or not isinstance(load_timeout, (int, float)) or not load_timeout > 0
    ):
        raise ModelConfigError(f"{where}: 'load_timeout' must be a number of seconds above 0, got {load_timeout!r}")
    flags = {
        key: raw.get(key, default)
        for key, default in (("auto_unload", settings.auto_unload), ("pinned", False), ("preload", False))
    }
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ModelConfigError(f"{where}: {key!r} must be true or false, got {value!r}")
    policy = ModelPolicy(
        idle_timeout=float(idle_timeout), load_timeout=None if load_timeout is None else float(load_timeout), **flags
    )
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(alias, str) and alias for alias in aliases):
        raise ModelConfigError(f"{where}: 'aliases' must be a list of names")
    environment = raw.get("environment", {})
    if not isinstance(environment, dict) or not all(isinstance(value, str) for value in environment.values()):
        raise ModelConfigError(f"{where}: 'environment' must be a table of strings")
    openai_voices = _openai_voices(where, raw.get("openai_voices", {}))
    try:
        spec = ModelSpec.create(
            raw["id"],
            raw["engine"],
            options,
            policy,
            str(raw.get("owned_by", "local")),
            environment,
            tuple(aliases),
            openai_voices,
        )
    except Exception as error:  # an engine that cannot describe itself is a configuration error
        raise ModelConfigError(f"{where}: {type(error).__name__}: {error}") from error
    capabilities = spec.capabilities
    foreign = sorted(voice for voice in openai_voices.values() if voice not in capabilities.voices)
    if foreign and not capabilities.clones:
        raise ModelConfigError(
            f"{where}: openai_voices maps to {foreign}, which are not voices of this model ({capabilities.voices})"
        )
    return spec


def _openai_voices(where: str, raw: Any) -> dict[str, str]:
    """The `openai_voices` table: OpenAI voice names to voices of the model."""
    if not isinstance(raw, dict) or not all(isinstance(value, str) and value for value in raw.values()):
        raise ModelConfigError(f"{where}: 'openai_voices' must be a table of voice names")
    unknown = sorted(set(raw) - set(OPENAI_VOICES))
    if unknown:
        raise ModelConfigError(
            f"{where}: openai_voices has {unknown}, which are not OpenAI voice names {OPENAI_VOICES}"
        )
    return dict(raw)


def _document(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ModelConfigError(f"{path}: {error}") from error


def _voice(path: Path, index: int, raw: Any) -> Voice:
    where = _table(path, "voices", index, raw, "name", _VOICE_KEYS)
    if not all(isinstance(raw.get(key), str) and raw[key].strip() for key in ("name", "audio", "transcript")):
        raise ModelConfigError(f"{where}: 'name', 'audio' (a file) and 'transcript' are required strings")
    audio = Path(raw["audio"]) if Path(raw["audio"]).is_absolute() else path.parent / raw["audio"]
    try:
        validate_name(raw["name"])
        info = soundfile.info(str(audio))
    except (VoiceError, RuntimeError, OSError) as error:
        raise ModelConfigError(f"{where}: {error}") from error
    return Voice(
        name=raw["name"],
        transcript=raw["transcript"],
        audio_path=audio,
        seconds=info.duration,
        sample_rate=info.samplerate,
        locale=raw.get("locale"),
        gender=raw.get("gender"),
        description=raw.get("description"),
        preset=True,
    )


def load_voice_presets(path: Path) -> list[Voice]:
    """The `[[voices]]` of the models file: read-only presets of the voice library."""
    entries = _document(path).get("voices", [])
    if not isinstance(entries, list):
        raise ModelConfigError(f"{path}: 'voices' must be an array of tables ([[voices]])")
    voices = [_voice(path, index, raw) for index, raw in enumerate(entries)]
    names = [voice.name for voice in voices]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelConfigError(f"{path}: voices named more than once: {', '.join(duplicates)}")
    return voices


def load_model_config(path: Path, settings: Settings) -> list[ModelSpec]:
    document = _document(path)
    entries = document.get("models", [])
    if not isinstance(entries, list):
        raise ModelConfigError(f"{path}: 'models' must be an array of tables ([[models]])")
    return [_entry(path, index, raw, settings) for index, raw in enumerate(entries)]

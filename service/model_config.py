"""The optional models file (TOML): explicitly configured models beside the discovered ones.

[[models]]
id = "my-voice"
engine = "piper"                 # or "package.module:Class"
idle_timeout = 600               # optional; default IDLE_TIMEOUT
auto_unload = true               # optional
pinned = false                   # optional
preload = false                  # optional
[models.options]                 # passed to the engine
model_path = "/models/voice.onnx"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from service.catalog import ModelSpec
from service.lazy_loader import ModelPolicy
from service.settings import Settings

_KNOWN_KEYS = {"id", "engine", "options", "idle_timeout", "auto_unload", "pinned", "preload", "owned_by"}


class ModelConfigError(ValueError):
    """An invalid models file, naming the file, the entry and the reason."""


def _entry(path: Path, index: int, raw: Any, settings: Settings) -> ModelSpec:
    where = f"{path}: models[{index}]"
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{where}: expected a table")
    where = f"{where} ({raw.get('id', 'no id')!s})"
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ModelConfigError(f"{where}: unknown keys {unknown}; known: {sorted(_KNOWN_KEYS)}")
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
    flags = {
        key: raw.get(key, default)
        for key, default in (("auto_unload", settings.auto_unload), ("pinned", False), ("preload", False))
    }
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ModelConfigError(f"{where}: {key!r} must be true or false, got {value!r}")
    policy = ModelPolicy(idle_timeout=float(idle_timeout), **flags)
    try:
        return ModelSpec.create(raw["id"], raw["engine"], options, policy, str(raw.get("owned_by", "local")))
    except Exception as error:  # an engine that cannot describe itself is a configuration error
        raise ModelConfigError(f"{where}: {type(error).__name__}: {error}") from error


def load_model_config(path: Path, settings: Settings) -> list[ModelSpec]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ModelConfigError(f"{path}: {error}") from error
    entries = document.get("models", [])
    if not isinstance(entries, list):
        raise ModelConfigError(f"{path}: 'models' must be an array of tables ([[models]])")
    return [_entry(path, index, raw, settings) for index, raw in enumerate(entries)]

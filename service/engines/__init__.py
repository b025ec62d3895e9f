"""Speech engines, resolved by name ("piper") or by import path ("package.module:Class")."""

from __future__ import annotations

import importlib

from service.engines.base import EngineFactory

BUILTIN_ENGINES = {
    "piper": "service.engines.piper:PiperEngine",
    "step-audio": "service.engines.step_audio:StepAudioEngine",
    "transformers": "service.engines.transformers_tts:TransformersEngine",
}


def resolve_engine(name: str) -> EngineFactory:
    """The engine class for a configured engine name; imports only the engine's light module."""
    target = BUILTIN_ENGINES.get(name, name)
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"unknown engine {name!r}: use one of {sorted(BUILTIN_ENGINES)} or 'module:Class'")
    engine: EngineFactory = getattr(importlib.import_module(module_name), attribute)
    return engine

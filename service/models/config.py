"""The optional models file (TOML): explicitly configured models beside the discovered ones.

[[models]]
id = "my-voice"
engine = "piper"                 # or "package.module:Class"
idle_timeout = 600               # optional; default IDLE_TIMEOUT
load_timeout = 900               # optional; default LOAD_TIMEOUT
auto_unload = true               # optional
pinned = false                   # optional
preload = false                  # optional
replicas_min = 0                 # optional: replicas kept loaded once started; default REPLICAS_MIN
replicas_max = 2                 # optional: replicas it scales out to while requests queue; default REPLICAS_MAX
devices = ["cuda:0", "cuda:1"]   # optional: replica i on devices[i % len] (CUDA_VISIBLE_DEVICES per worker)
threads = 1                      # optional: CPU threads per replica; default REPLICA_THREADS
warm_spares = 1                  # optional: spare workers kept for it (default: its engine's, WARM_SPARES)
aliases = ["tts-1-hd"]           # optional: more names for this model (MODEL_ALIASES overrides them)
[models.ray]                     # optional, with RAY_ADDRESS: what each replica's actor asks of the cluster
num_gpus = 1                     # default: 1 if its device is a GPU, else 0; num_cpus: its threads, else 1
memory = 8_000_000_000           # bytes; resources = { a100 = 1 }; node = "<node id>"; node_soft = true
[models.options]                 # passed to the engine
model_path = "/models/voice.onnx"
[models.openai_voices]           # optional: what OpenAI's voice names mean here (unmapped: the default voice)
alloy = "speaker_2"              # a voice of the engine, or a library voice for a cloning model
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import soundfile

from service.lazy_loader import ModelPolicy
from service.library.voices import Voice, VoiceError, validate_name
from service.lifecycle.ray_request import RayRequest
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
    "warm_spares",
    "replicas_min",
    "replicas_max",
    "devices",
    "threads",
    "ray",
}
_RAY_KEYS = {"num_cpus", "num_gpus", "memory", "resources", "node", "node_soft"}
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
        idle_timeout=float(idle_timeout),
        load_timeout=None if load_timeout is None else float(load_timeout),
        **flags,
        **_replicas(where, raw, settings),
    )
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(alias, str) and alias for alias in aliases):
        raise ModelConfigError(f"{where}: 'aliases' must be a list of names")
    environment = raw.get("environment", {})
    if not isinstance(environment, dict) or not all(isinstance(value, str) for value in environment.values()):
        raise ModelConfigError(f"{where}: 'environment' must be a table of strings")
    openai_voices = _openai_voices(where, raw.get("openai_voices", {}))
    warm_spares = raw.get("warm_spares")
    if warm_spares is not None and (
        isinstance(warm_spares, bool) or not isinstance(warm_spares, int) or warm_spares < 0
    ):
        raise ModelConfigError(f"{where}: 'warm_spares' must be a whole number, 0 or more, got {warm_spares!r}")
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
    return replace(spec, warm_spares=warm_spares, ray=_ray_request(where, raw.get("ray", {})))


def _replicas(where: str, raw: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """`replicas_min`, `replicas_max`, `devices` and `threads`, checked as ModelPolicy checks them."""
    counts = {
        key: raw.get(key, default)
        for key, default in (("replicas_min", settings.replicas_min), ("replicas_max", settings.replicas_max))
    }
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelConfigError(f"{where}: {key!r} must be a whole number, got {value!r}")
    devices = raw.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(device, str) for device in devices):
        raise ModelConfigError(f'{where}: \'devices\' must be a list of device names, e.g. ["cuda:0", "cuda:1"]')
    threads = raw.get("threads", settings.replica_threads or None)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise ModelConfigError(f"{where}: 'threads' must be a whole number of CPU threads, got {threads!r}")
    replicas = {**counts, "devices": tuple(devices), "threads": threads}
    try:
        ModelPolicy(idle_timeout=0.0, **replicas)
    except ValueError as error:
        raise ModelConfigError(f"{where}: {error}") from error
    return replicas


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _ray_request(where: str, raw: Any) -> RayRequest:
    """The `[models.ray]` table: the resources each replica's actor asks of a Ray cluster."""
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{where}: 'ray' must be a table")
    unknown = sorted(set(raw) - _RAY_KEYS)
    if unknown:
        raise ModelConfigError(f"{where}: unknown keys in 'ray' {unknown}; known: {sorted(_RAY_KEYS)}")
    for key in ("num_cpus", "num_gpus"):
        if key in raw and not _is_number(raw[key]):
            raise ModelConfigError(f"{where}: 'ray.{key}' must be a number, got {raw[key]!r}")
    memory = raw.get("memory")
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int)):
        raise ModelConfigError(f"{where}: 'ray.memory' must be a whole number of bytes, got {memory!r}")
    resources = raw.get("resources", {})
    if not isinstance(resources, dict) or not all(_is_number(amount) for amount in resources.values()):
        raise ModelConfigError(f"{where}: 'ray.resources' must be a table of amounts, e.g. {{ a100 = 1 }}")
    node = raw.get("node")
    if node is not None and (not isinstance(node, str) or not node):
        raise ModelConfigError(f"{where}: 'ray.node' must be a node id (hex), got {node!r}")
    node_soft = raw.get("node_soft", False)
    if not isinstance(node_soft, bool):
        raise ModelConfigError(f"{where}: 'ray.node_soft' must be true or false, got {node_soft!r}")
    try:
        return RayRequest(raw.get("num_cpus"), raw.get("num_gpus"), memory, resources, node, node_soft)
    except ValueError as error:
        raise ModelConfigError(f"{where}: ray: {error}") from error


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

"""Typed settings: defaults, environment variables and command-line flags, in one place."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# warm spares per engine family, from docs/benchmarks.md: torch + transformers take seconds to import (a spare pays
# for itself), Piper's imports about 0.3 s (a spare would cost 50 MiB for that)
DEFAULT_WARM_SPARES = ("piper=0", "transformers=1", "step-audio=1")


def _split_ids(raw: str) -> tuple[str, ...]:
    """A comma-separated list (model ids, URL prefixes)."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


class SettingError(ValueError):
    """A setting with a value out of range; names the setting."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class Option:
    """How one setting is spelled on the command line and in the environment."""

    env: str
    flag: str
    help: str


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"option": Option("HOST", "--host", "address to bind")})
    port: int = field(default=7860, metadata={"option": Option("PORT", "--port", "port for UI and API")})
    idle_timeout: float = field(
        default=300.0,
        metadata={
            "option": Option(
                "IDLE_TIMEOUT", "--idle-timeout", "seconds a model may sit unused before it is unloaded (<0: never)"
            )
        },
    )
    auto_unload: bool = field(
        default=True,
        metadata={"option": Option("AUTO_UNLOAD", "--auto-unload", "unload idle models automatically (true/false)")},
    )
    models_dir: Path | None = field(
        default=None,
        metadata={
            "option": Option(
                "MODELS_DIR",
                "--models-dir",
                "folder searched for Piper voices (*.onnx + .json) and Hugging Face TTS model folders",
            )
        },
    )
    models_config: Path | None = field(
        default=None,
        metadata={"option": Option("MODELS_CONFIG", "--models-config", "TOML file listing models explicitly")},
    )
    default_model: str = field(
        default="piper-joe",
        metadata={"option": Option("DEFAULT_MODEL", "--default-model", "model used for tts-1 / tts-1-hd")},
    )
    max_loaded_models: int = field(
        default=3,
        metadata={
            "option": Option(
                "MAX_LOADED_MODELS",
                "--max-loaded-models",
                "models loaded at once before LRU eviction (each replica of a model counts as one)",
            )
        },
    )
    replicas_min: int = field(
        default=0,
        metadata={
            "option": Option(
                "REPLICAS_MIN",
                "--replicas-min",
                "replicas each model keeps loaded once started (0: lazy); per model: replicas_min in the models file",
            )
        },
    )
    replicas_max: int = field(
        default=1,
        metadata={
            "option": Option(
                "REPLICAS_MAX",
                "--replicas-max",
                "worker processes a model may scale out to while requests queue; per model: replicas_max",
            )
        },
    )
    replica_threads: int = field(
        default=0,
        metadata={
            "option": Option(
                "REPLICA_THREADS",
                "--replica-threads",
                "CPU threads per replica of a CPU engine (0: the engine's default); per model: threads",
            )
        },
    )
    memory_budget_bytes: int = field(
        default=0,
        metadata={
            "option": Option(
                "MEMORY_BUDGET_BYTES", "--memory-budget-bytes", "memory all loaded models may use (0: no budget)"
            )
        },
    )
    capacity_wait: float = field(
        default=30.0,
        metadata={
            "option": Option("CAPACITY_WAIT", "--capacity-wait", "seconds a load waits for room before answering 503")
        },
    )
    ray_address: str = field(
        default="",
        metadata={
            "option": Option(
                "RAY_ADDRESS",
                "--ray-address",
                "a Ray cluster (its head's host:port) whose actors run the models instead of worker processes here; "
                "per model: [models.ray] in the models file; needs the `ray` extra (default: none, local workers)",
            )
        },
    )
    preload: tuple[str, ...] = field(
        default=(),
        metadata={"option": Option("PRELOAD", "--preload", "comma-separated model ids loaded at start-up")},
    )
    pinned: tuple[str, ...] = field(
        default=(),
        metadata={"option": Option("PINNED", "--pinned", "comma-separated model ids never unloaded automatically")},
    )
    step_audio_dir: Path | None = field(
        default=None,
        metadata={
            "option": Option(
                "STEP_AUDIO_DIR", "--step-audio-dir", "a Step-Audio-EditX checkout (its code; models in its models/)"
            )
        },
    )
    step_audio_models_dir: Path | None = field(
        default=None,
        metadata={
            "option": Option(
                "STEP_AUDIO_MODELS_DIR",
                "--step-audio-models-dir",
                "folder with Step-Audio-Tokenizer and Step-Audio-EditX* (default: <step-audio-dir>/models)",
            )
        },
    )
    step_audio_variant: str = field(
        default="bnb",
        metadata={
            "option": Option(
                "STEP_AUDIO_VARIANT", "--step-audio-variant", "variant behind the model name step-audio-editx"
            )
        },
    )
    probe_engines: bool = field(
        default=True,
        metadata={
            "option": Option(
                "PROBE_ENGINES",
                "--probe-engines",
                "at start-up, import each engine's code in a process of its own to find a broken one (true/false)",
            )
        },
    )
    worker_python: Path | None = field(
        default=None,
        metadata={
            "option": Option(
                "WORKER_PYTHON",
                "--worker-python",
                "the Python interpreter worker processes run (default: the server's own), e.g. a GPU virtualenv's",
            )
        },
    )
    warm_spares: tuple[str, ...] = field(
        default=DEFAULT_WARM_SPARES,
        metadata={
            "option": Option(
                "WARM_SPARES",
                "--warm-spares",
                "comma-separated engine=N pairs: spare worker processes kept with the engine's libraries imported "
                "(no model, no GPU) so a load skips the imports, over the defaults piper=0,transformers=1,"
                "step-audio=1 (other engines: 0); per model: warm_spares in the models file",
            )
        },
    )
    data_dir: Path = field(
        default=PROJECT_ROOT / "data",
        metadata={
            "option": Option(
                "DATA_DIR", "--data-dir", "writable folder for uploaded voices and the workers' caches (workers/)"
            )
        },
    )
    max_audio_seconds: float = field(
        default=30.0,
        metadata={
            "option": Option("MAX_AUDIO_SECONDS", "--max-audio-seconds", "longest accepted reference or input clip")
        },
    )
    max_upload_bytes: int = field(
        default=20 * 1024 * 1024,
        metadata={"option": Option("MAX_UPLOAD_BYTES", "--max-upload-bytes", "largest accepted request body")},
    )
    audio_url_prefixes: tuple[str, ...] = field(
        default=(),
        metadata={
            "option": Option(
                "AUDIO_URL_PREFIXES",
                "--audio-url-prefixes",
                "comma-separated URL prefixes audio may be fetched from (default: none, URLs refused)",
            )
        },
    )
    max_queue: int = field(
        default=512,
        metadata={"option": Option("MAX_QUEUE", "--max-queue", "requests that may wait per model before 429")},
    )
    request_timeout: float = field(
        default=600.0,
        metadata={
            "option": Option(
                "REQUEST_TIMEOUT", "--request-timeout", "seconds a request may wait for its model and turn before 504"
            )
        },
    )
    generation_timeout: float = field(
        default=600.0,
        metadata={
            "option": Option(
                "GENERATION_TIMEOUT",
                "--generation-timeout",
                "seconds one generation may take before the watchdog kills its worker",
            )
        },
    )
    send_timeout: float = field(
        default=60.0,
        metadata={
            "option": Option(
                "SEND_TIMEOUT",
                "--send-timeout",
                "seconds a streaming client may take no data before its response is aborted",
            )
        },
    )
    max_stream_buffer_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={
            "option": Option(
                "MAX_STREAM_BUFFER_BYTES",
                "--max-stream-buffer-bytes",
                "audio bytes a request may hold for a client that reads slowly; past it the worker waits for it",
            )
        },
    )
    load_timeout: float = field(
        default=300.0,
        metadata={
            "option": Option(
                "LOAD_TIMEOUT",
                "--load-timeout",
                "seconds a model's worker may take to load before it is killed and the load fails (per model: "
                "load_timeout in the models file)",
            )
        },
    )
    load_backoff: float = field(
        default=1.0,
        metadata={
            "option": Option(
                "LOAD_BACKOFF", "--load-backoff", "seconds before retrying a model that failed twice (doubles, max 60)"
            )
        },
    )
    api_keys: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata={
            "option": Option("API_KEY", "--api-key", "comma-separated API key(s); when set, all but health need one")
        },
    )
    api_keys_file: Path | None = field(
        default=None,
        metadata={"option": Option("API_KEYS_FILE", "--api-keys-file", "file with one API key per line")},
    )
    allow_unauthenticated: bool = field(
        default=False,
        metadata={
            "option": Option(
                "ALLOW_UNAUTHENTICATED",
                "--allow-unauthenticated",
                "allow binding beyond localhost without an API key (true/false)",
            )
        },
    )
    cors_origins: tuple[str, ...] = field(
        default=(),
        metadata={"option": Option("CORS_ORIGINS", "--cors-origins", "comma-separated origins allowed by CORS")},
    )
    max_input_chars: int = field(
        default=4096,
        metadata={"option": Option("MAX_INPUT_CHARS", "--max-input-chars", "longest accepted speech input")},
    )
    model_aliases: tuple[str, ...] = field(
        default=(),
        metadata={
            "option": Option(
                "MODEL_ALIASES",
                "--model-aliases",
                "comma-separated alias=model pairs, over the models file's aliases and OpenAI's published model names "
                "(which mean DEFAULT_MODEL unless mapped), e.g. gpt-4o-mini-tts=step-audio-editx",
            )
        },
    )
    unsupported_instructions: str = field(
        default="ignore",
        metadata={
            "option": Option(
                "UNSUPPORTED_INSTRUCTIONS",
                "--unsupported-instructions",
                "instructions sent to a model that cannot follow them: ignore (speak anyway; X-Ignored-Fields and a "
                "log line say so) or refuse (400)",
            )
        },
    )
    consent_required: bool = field(
        default=True,
        metadata={
            "option": Option(
                "CONSENT_REQUIRED",
                "--consent-required",
                "POST /v1/audio/voices needs the id of a stored voice consent recording, as at OpenAI (true/false)",
            )
        },
    )
    shutdown_grace: float = field(
        default=10.0,
        metadata={
            "option": Option(
                "SHUTDOWN_GRACE", "--shutdown-grace", "seconds in-flight requests get to finish at shutdown"
            )
        },
    )
    header_timeout: float = field(
        default=10.0,
        metadata={
            "option": Option(
                "HEADER_TIMEOUT",
                "--header-timeout",
                "seconds a connection may take to send a request's line and headers (from connecting, or from the "
                "previous answer on it) before it is closed",
            )
        },
    )
    keep_alive_timeout: int = field(
        default=5,
        metadata={
            "option": Option(
                "KEEP_ALIVE_TIMEOUT", "--keep-alive-timeout", "seconds an idle connection stays open after an answer"
            )
        },
    )
    max_connections: int = field(
        default=0,
        metadata={
            "option": Option(
                "MAX_CONNECTIONS",
                "--max-connections",
                "open connections (and requests in flight) past which a new request gets 503 at once (0: no limit)",
            )
        },
    )
    max_header_bytes: int = field(
        default=16 * 1024,
        metadata={
            "option": Option(
                "MAX_HEADER_BYTES", "--max-header-bytes", "longest request line and headers; past it: 400, closed"
            )
        },
    )
    log_format: str = field(
        default="auto",
        metadata={"option": Option("LOG_FORMAT", "--log-format", "auto (JSON unless a terminal), json or console")},
    )
    log_level: str = field(
        default="info", metadata={"option": Option("LOG_LEVEL", "--log-level", "debug, info, warning or error")}
    )

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise SettingError("port", f"must be 1-65535, got {self.port}")
        if self.max_loaded_models < 1:
            raise SettingError("max_loaded_models", f"must be at least 1, got {self.max_loaded_models}")
        if self.replicas_max < 1:
            raise SettingError("replicas_max", f"must be at least 1, got {self.replicas_max}")
        if not 0 <= self.replicas_min <= self.replicas_max:
            raise SettingError(
                "replicas_min", f"must be 0 to REPLICAS_MAX ({self.replicas_max}), got {self.replicas_min}"
            )
        if self.replica_threads < 0:
            raise SettingError(
                "replica_threads", f"must be 0 (the engine's default) or more, got {self.replica_threads}"
            )
        if self.max_queue < 1:
            raise SettingError("max_queue", f"must be at least 1, got {self.max_queue}")
        if not self.load_timeout > 0:
            raise SettingError("load_timeout", f"must be more than 0 seconds, got {self.load_timeout}")
        if not self.send_timeout > 0:
            raise SettingError("send_timeout", f"must be more than 0 seconds, got {self.send_timeout}")
        if self.max_stream_buffer_bytes < 1:
            raise SettingError("max_stream_buffer_bytes", f"must be at least 1, got {self.max_stream_buffer_bytes}")
        if self.step_audio_variant not in {"base", "bnb", "awq"}:
            raise SettingError("step_audio_variant", f"must be base, bnb or awq, got {self.step_audio_variant!r}")
        if self.log_format not in {"auto", "json", "console"}:
            raise SettingError("log_format", f"must be auto, json or console, got {self.log_format!r}")
        if not self.header_timeout > 0:
            raise SettingError("header_timeout", f"must be more than 0 seconds, got {self.header_timeout}")
        if self.keep_alive_timeout < 1:
            raise SettingError("keep_alive_timeout", f"must be at least 1 second, got {self.keep_alive_timeout}")
        if self.max_connections < 0:
            raise SettingError("max_connections", f"must be 0 (no limit) or more, got {self.max_connections}")
        if self.unsupported_instructions not in {"ignore", "refuse"}:
            raise SettingError(
                "unsupported_instructions", f"must be ignore or refuse, got {self.unsupported_instructions!r}"
            )
        malformed = [pair for pair in self.model_aliases if pair.count("=") != 1 or "" in pair.split("=")]
        if malformed:
            raise SettingError("model_aliases", f"must be alias=model pairs, got {', '.join(malformed)}")
        if self.max_header_bytes < 1024:
            raise SettingError("max_header_bytes", f"must be at least 1024, got {self.max_header_bytes}")
        malformed = [pair for pair in self.warm_spares if not _is_spare_count(pair)]
        if malformed:
            raise SettingError("warm_spares", f"must be engine=N pairs (N a whole number, 0 or more), got {malformed}")


# how a raw flag or environment value becomes each field's type; the type comes from the field's annotation
_CONVERTERS: dict[object, Callable[[str], object]] = {
    int: int,
    float: float,
    bool: _parse_bool,
    str: str,
    Path: Path,
    Path | None: Path,
    tuple[str, ...]: _split_ids,
}


def _convert(name: str, raw: str) -> object:
    return _CONVERTERS[get_type_hints(Settings)[name]](raw)


def _as_typed(default: object) -> str:
    """A default as it would be given on the command line: plain strings and numbers, `none` for nothing."""
    if default is None or default == ():
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Text-to-speech server: web UI, REST API and OpenAI-compatible speech endpoint on one port.",
        epilog="Every option can also be set by the environment variable named in brackets.",
    )
    for settings_field in fields(Settings):
        option: Option = settings_field.metadata["option"]
        # a help text that says what its default means stands for it
        default = "" if "(default:" in option.help else f" (default: {_as_typed(settings_field.default)})"
        parser.add_argument(
            option.flag, dest=settings_field.name, default=None, help=f"{option.help} [{option.env}]{default}"
        )
    return parser


def _is_spare_count(pair: str) -> bool:
    engine, _, count = pair.rpartition("=")
    return bool(engine) and count.isdigit()


def warm_spares_by_engine(settings: Settings) -> dict[str, int]:
    """Engine name -> spares to keep: the defaults, then WARM_SPARES's pairs over them (engines named nowhere: 0)."""
    pairs = (pair.rpartition("=") for pair in (*DEFAULT_WARM_SPARES, *settings.warm_spares))
    return {engine: int(count) for engine, _, count in pairs}


def is_loopback(host: str) -> bool:
    return host in {"localhost", "::1"} or host.startswith("127.")


def api_keys(settings: Settings) -> tuple[str, ...]:
    """Every configured key: from API_KEY and from the keys file (one per line, # comments)."""
    keys = list(settings.api_keys)
    if settings.api_keys_file is not None:
        lines = settings.api_keys_file.read_text(encoding="utf-8").splitlines()
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return tuple(keys)


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond this machine without a key unless explicitly allowed."""
    if not is_loopback(settings.host) and not api_keys(settings) and not settings.allow_unauthenticated:
        raise SettingError(
            "host",
            f"is {settings.host!r} but no API key is set: anyone who can reach the port could use the GPU. Set "
            "API_KEY (or API_KEYS_FILE), or pass --allow-unauthenticated true to do it anyway",
        )


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then environment variables, then defaults."""
    env = os.environ if environ is None else environ
    arguments = vars(build_parser().parse_args(argv)) if argv is not None else {}
    values: dict[str, object] = {}
    for settings_field in fields(Settings):
        option: Option = settings_field.metadata["option"]
        raw = arguments.get(settings_field.name)
        if raw is None:
            raw = env.get(option.env)
        if raw is None or raw == "":
            continue
        try:
            values[settings_field.name] = _convert(settings_field.name, raw)
        except ValueError as error:
            raise ValueError(f"{option.flag} / {option.env}: {error}") from error
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except SettingError as error:
        option = next(f.metadata["option"] for f in fields(Settings) if f.name == error.name)
        raise ValueError(f"{option.flag} / {option.env}: {error.problem}") from error

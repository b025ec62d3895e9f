"""Settings: defaults, environment variables, command-line flags and `python -m service --help`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from service.settings import PROJECT_ROOT, Settings, build_parser, load_settings, warm_spares_by_engine


def test_defaults() -> None:
    settings = load_settings([], {})

    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 7860
    assert settings.idle_timeout == 300.0
    assert settings.auto_unload is True
    assert settings.models_dir is None
    assert settings.models_config is None
    assert settings.default_model == "piper-joe"
    assert settings.max_loaded_models == 3
    assert settings.memory_budget_bytes == 0
    assert settings.capacity_wait == 30.0
    assert settings.preload == ()
    assert settings.pinned == ()
    assert settings.max_input_chars == 4096
    assert settings.shutdown_grace == 10.0
    assert settings.log_format == "auto"
    assert settings.log_level == "info"


def test_without_argv_no_flags_are_read() -> None:
    assert load_settings(None, {"PORT": "9100"}).port == 9100


def test_environment_variables() -> None:
    environ = {
        "HOST": "0.0.0.0",
        "PORT": "8123",
        "IDLE_TIMEOUT": "12.5",
        "AUTO_UNLOAD": "false",
        "MODELS_DIR": "/srv/voices",
        "MODELS_CONFIG": "/etc/models.toml",
        "DEFAULT_MODEL": "piper-amy",
        "MAX_LOADED_MODELS": "5",
        "MEMORY_BUDGET_BYTES": "1000000",
        "CAPACITY_WAIT": "2",
        "PRELOAD": "piper-joe, piper-amy ,,",
        "PINNED": "piper-amy",
        "MAX_INPUT_CHARS": "100",
        "SHUTDOWN_GRACE": "3.5",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",
    }

    settings = load_settings([], environ)

    assert settings == Settings(
        host="0.0.0.0",
        port=8123,
        idle_timeout=12.5,
        auto_unload=False,
        models_dir=Path("/srv/voices"),
        models_config=Path("/etc/models.toml"),
        default_model="piper-amy",
        max_loaded_models=5,
        memory_budget_bytes=1_000_000,
        capacity_wait=2.0,
        preload=("piper-joe", "piper-amy"),
        pinned=("piper-amy",),
        max_input_chars=100,
        shutdown_grace=3.5,
        log_format="json",
        log_level="debug",
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        (" False ", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_auto_unload_booleans(raw: str, expected: bool) -> None:
    assert load_settings([], {"AUTO_UNLOAD": raw}).auto_unload is expected
    assert load_settings(["--auto-unload", raw], {}).auto_unload is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", ()), ("a", ("a",)), ("a,b", ("a", "b")), (" a , b ,", ("a", "b")), (",,", ())],
)
def test_comma_lists(raw: str, expected: tuple[str, ...]) -> None:
    assert load_settings([], {"PRELOAD": raw}).preload == expected
    assert load_settings([], {"PINNED": raw}).pinned == expected


def test_negative_idle_timeout_is_allowed() -> None:
    assert load_settings([], {"IDLE_TIMEOUT": "-1"}).idle_timeout == -1.0


def test_empty_environment_variable_means_default() -> None:
    assert load_settings([], {"PORT": "", "HOST": ""}) == Settings()


def test_flags() -> None:
    settings = load_settings(
        [
            "--host", "::1",
            "--port", "9000",
            "--idle-timeout", "60",
            "--auto-unload", "off",
            "--models-dir", "voices",
            "--default-model", "piper-x",
            "--preload", "piper-x,piper-joe",
            "--pinned", "piper-x",
            "--max-loaded-models", "2",
        ],
        {},
    )  # fmt: skip

    assert settings.host == "::1"
    assert settings.port == 9000
    assert settings.idle_timeout == 60.0
    assert settings.auto_unload is False
    assert settings.models_dir == Path("voices")
    assert settings.default_model == "piper-x"
    assert settings.preload == ("piper-x", "piper-joe")
    assert settings.pinned == ("piper-x",)
    assert settings.max_loaded_models == 2


def test_flags_override_environment() -> None:
    environ = {
        "HOST": "10.0.0.1",
        "PORT": "8000",
        "IDLE_TIMEOUT": "5",
        "MODELS_DIR": "/from/env",
        "DEFAULT_MODEL": "from-env",
        "PRELOAD": "from-env",
        "AUTO_UNLOAD": "true",
    }

    settings = load_settings(
        ["--port", "9000", "--idle-timeout", "7", "--models-dir", "/from/flag", "--preload", "a,b",
         "--auto-unload", "false"],
        environ,
    )  # fmt: skip

    assert settings.port == 9000
    assert settings.idle_timeout == 7.0
    assert settings.models_dir == Path("/from/flag")
    assert settings.preload == ("a", "b")
    assert settings.auto_unload is False
    # what no flag sets still comes from the environment
    assert settings.host == "10.0.0.1"
    assert settings.default_model == "from-env"


@pytest.mark.parametrize(
    ("env", "flag", "raw"),
    [
        ("PORT", "--port", "eighty"),
        ("PORT", "--port", "80.5"),
        ("IDLE_TIMEOUT", "--idle-timeout", "soon"),
        ("AUTO_UNLOAD", "--auto-unload", "maybe"),
        ("MAX_LOADED_MODELS", "--max-loaded-models", "many"),
        ("MEMORY_BUDGET_BYTES", "--memory-budget-bytes", "1GB"),
        ("CAPACITY_WAIT", "--capacity-wait", "a while"),
        ("SHUTDOWN_GRACE", "--shutdown-grace", "x"),
        ("MAX_INPUT_CHARS", "--max-input-chars", "lots"),
    ],
)
def test_unparsable_values_name_the_flag_and_variable(env: str, flag: str, raw: str) -> None:
    with pytest.raises(ValueError, match=rf"{flag} / {env}") as from_env:
        load_settings([], {env: raw})
    assert repr(raw) in str(from_env.value)
    with pytest.raises(ValueError, match=rf"{flag} / {env}"):
        load_settings([flag, raw], {})


@pytest.mark.parametrize(
    ("env", "flag", "raw"),
    [
        ("PORT", "--port", "0"),
        ("PORT", "--port", "70000"),
        ("MAX_LOADED_MODELS", "--max-loaded-models", "0"),
        ("LOG_FORMAT", "--log-format", "xml"),
        ("REPLICAS_MAX", "--replicas-max", "0"),
        ("REPLICAS_MIN", "--replicas-min", "2"),
        ("REPLICA_THREADS", "--replica-threads", "-1"),
        ("WARM_SPARES", "--warm-spares", "piper"),
        ("WARM_SPARES", "--warm-spares", "piper=-1"),
        ("WARM_SPARES", "--warm-spares", "=2"),
    ],
)
def test_out_of_range_values_name_the_flag_and_variable(env: str, flag: str, raw: str) -> None:
    with pytest.raises(ValueError, match=rf"{flag}|{env}"):
        load_settings([], {env: raw})
    with pytest.raises(ValueError, match=rf"{flag}|{env}"):
        load_settings([flag, raw], {})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 0},
        {"port": 65536},
        {"max_loaded_models": 0},
        {"log_format": "xml"},
        {"replicas_max": 0},
        {"replicas_min": 3, "replicas_max": 2},
        {"replica_threads": -2},
        {"warm_spares": ("transformers=one",)},
    ],
)
def test_settings_validate_themselves(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_unknown_flag_exits_with_usage_error() -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(["--no-such-flag", "1"], {})
    assert raised.value.code == 2


def test_parser_has_one_flag_per_setting() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    for settings_field in fields(Settings):
        option = settings_field.metadata["option"]
        assert option.flag in help_text
        assert f"[{option.env}]" in help_text
        assert vars(parser.parse_args([]))[settings_field.name] is None


def test_help_of_python_m_service_lists_every_flag() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: python -m service")
    for flag in ("--host", "--port", "--idle-timeout", "--models-dir", "--default-model", "--models-config",
                 "--auto-unload", "--preload", "--pinned", "--max-loaded-models"):  # fmt: skip
        assert flag in completed.stdout
    for settings_field in fields(Settings):
        assert settings_field.metadata["option"].flag in completed.stdout


def test_every_setting_has_a_converter_for_its_type() -> None:
    from typing import get_type_hints

    from service.settings import _CONVERTERS

    assert [name for name, hint in get_type_hints(Settings).items() if hint not in _CONVERTERS] == []


def test_help_shows_each_default_as_it_would_be_typed() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "COLUMNS": "1000"},  # no wrapping inside a help text
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    entries = {
        entry.split()[0]: " ".join(entry.split())
        for entry in re.split(r"\n(?=  -)", completed.stdout.split("options:", 1)[1])
        if entry.strip()
    }
    for flag, default in [
        ("--host", "127.0.0.1"),
        ("--idle-timeout", "300"),
        ("--auto-unload", "true"),
        ("--models-dir", "none"),
        ("--preload", "none"),
        ("--api-key", "none"),
        ("--data-dir", str(PROJECT_ROOT / "data")),
        ("--log-format", "auto"),
    ]:
        assert entries[flag].endswith(f"(default: {default})"), entries[flag]
    # a help text that says its default itself is not followed by another
    assert entries["--audio-url-prefixes"].count("(default:") == 1
    assert entries["--worker-python"].count("(default:") == 1
    for unnatural in ("PosixPath", "()", "None"):
        assert unnatural not in completed.stdout


def test_load_timeout_has_a_default_fit_for_gpu_loads_a_flag_and_a_variable() -> None:
    assert load_settings([], {}).load_timeout == 300.0
    assert load_settings([], {"LOAD_TIMEOUT": "900"}).load_timeout == 900.0
    assert load_settings(["--load-timeout", "45.5"], {"LOAD_TIMEOUT": "900"}).load_timeout == 45.5


@pytest.mark.parametrize("raw", ["0", "-5", "nan"])
def test_a_load_timeout_that_is_not_positive_is_refused_naming_the_setting(raw: str) -> None:
    with pytest.raises(ValueError, match="--load-timeout / LOAD_TIMEOUT: must be more than 0 seconds"):
        load_settings([], {"LOAD_TIMEOUT": raw})


def test_replica_settings_come_from_flags_and_variables() -> None:
    settings = load_settings(["--replicas-max", "4", "--replica-threads", "1"], {"REPLICAS_MIN": "1"})
    assert (settings.replicas_min, settings.replicas_max, settings.replica_threads) == (1, 4, 1)


def test_warm_spares_are_pairs_over_the_measured_defaults() -> None:
    """Spares default on for the families whose imports take seconds and off for Piper's (docs/benchmarks.md); the
    setting's pairs win over the defaults, and an engine named nowhere gets none."""
    assert warm_spares_by_engine(Settings()) == {"piper": 0, "transformers": 1, "step-audio": 1}
    chosen = load_settings([], {"WARM_SPARES": "piper=2,step-audio=0,tests.support.engines:ToneEngine=1"})
    assert warm_spares_by_engine(chosen) == {
        "piper": 2,
        "transformers": 1,
        "step-audio": 0,
        "tests.support.engines:ToneEngine": 1,
    }

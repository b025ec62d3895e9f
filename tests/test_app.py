"""The app factory's wiring: preloading and pinning from settings, and the launcher seam."""

from __future__ import annotations

import io
import os
from pathlib import Path

import anyio
import pytest
import soundfile
from litestar.testing import TestClient

from service.app import create_app
from service.lazy_loader import LazyLoader, ModelPolicy, SlotState
from service.lifecycle.worker_client import SpeechWorker
from service.models.catalog import ModelSpec
from service.settings import Settings
from tests.conftest import ClientFactory, tone_model
from tests.support.engines import TONE_ENGINE
from tests.support.memory_workers import app_with_in_memory_workers
from tests.support.processes import child_pids

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_preloaded_models_load_at_start_up_and_pinned_ones_stay(make_client: ClientFactory) -> None:
    settings = Settings(preload=("piper-joe",), pinned=("tone",), idle_timeout=0.1)
    async with make_client(settings, (tone_model("tone", idle_timeout=0.1),)) as client:
        with anyio.fail_after(30):
            while client.loader.state("piper-joe") is not SlotState.LOADED:
                await anyio.sleep(0.01)
        await client.post("/api/v1/models/tone/load")
        with anyio.fail_after(5):
            while client.loader.state("piper-joe") is not SlotState.UNLOADED:
                await anyio.sleep(0.01)
        status = (await client.get("/api/v1/models/status")).json()
        assert status["tone"]["state"] == "loaded"
        assert status["tone"]["pinned"] is True
        assert status["piper-joe"]["preload"] is True


def test_an_in_memory_launcher_serves_speech_in_process_without_a_worker_process(tmp_path: Path) -> None:
    """The launcher seam: the same app, its engine run in this process, driven through Litestar's test client."""
    tone = tone_model("tone")
    settings = Settings(data_dir=tmp_path / "data", default_model="tone")
    app = app_with_in_memory_workers(settings, (tone,))
    children_before = set(child_pids(os.getpid()))
    with TestClient(app) as client:
        answer = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "response_format": "wav"})
        assert answer.status_code == 200, answer.text
        assert (answer.headers["x-model"], answer.headers["x-cold-start"]) == ("tone", "true")
        audio, rate = soundfile.read(io.BytesIO(answer.content))
        assert (rate, len(audio)) == (16000, 2 * 4000)
        status = client.get("/api/v1/models/tone/status").json()
        assert status["state"] == "loaded"
        assert status["pid"] >= 10_000_000
        assert set(child_pids(os.getpid())) == children_before
        assert client.post("/api/v1/models/tone/unload").json()["worker_exited"] is True


async def test_the_app_gives_the_loader_its_load_timeout_and_each_model_its_own(tmp_path: Path) -> None:
    slow = ModelSpec.create("slow-gpu", TONE_ENGINE, {}, ModelPolicy(idle_timeout=300.0, load_timeout=900.0))
    loader: LazyLoader[SpeechWorker] = create_app(
        Settings(data_dir=tmp_path / "data", load_timeout=42.0), (slow,)
    ).state.loader
    assert loader._load_timeout == 42.0
    assert {snapshot.model: snapshot.policy.load_timeout for snapshot in loader.snapshots_now()} == {
        "piper-joe": None,
        "slow-gpu": 900.0,
    }

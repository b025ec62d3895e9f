"""The app factory's wiring: preloading, pinning from settings, and what the server process never imports."""

from __future__ import annotations

import sys

import anyio
import pytest

from service.lazy_loader import SlotState
from service.settings import Settings
from tests.conftest import AppClient, ClientFactory, tone_model

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

HEAVY_MODULES = ("torch", "onnxruntime", "piper", "transformers")


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


async def test_the_server_process_never_imports_an_engine_library(client: AppClient) -> None:
    response = await client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": "Only the worker.", "response_format": "pcm"}
    )
    assert response.status_code == 200
    assert [module for module in HEAVY_MODULES if module in sys.modules] == []

"""The app factory's wiring: preloading and pinning from settings."""

from __future__ import annotations

import anyio
import pytest

from service.lazy_loader import SlotState
from service.settings import Settings
from tests.conftest import ClientFactory, tone_model

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

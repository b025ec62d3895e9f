from __future__ import annotations

import pytest

from tests.conftest import AppClient

pytestmark = [pytest.mark.anyio, pytest.mark.in_process]


def sample(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} with {labels} not in metrics")


async def test_metrics_count_loads_requests_and_unloads(client: AppClient) -> None:
    await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Counting.", "response_format": "pcm"})
    await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Counting.", "response_format": "pcm"})
    loaded = (await client.get("/metrics")).text
    assert sample(loaded, "tts_model_loads_total", 'outcome="loaded"') == 1
    assert sample(loaded, "tts_model_loaded", 'model="piper-joe"') == 1
    assert sample(loaded, "tts_requests_total", 'cold="true"') == 1
    assert sample(loaded, "tts_requests_total", 'cold="false"') == 1
    assert sample(loaded, "tts_audio_seconds_total", 'model="piper-joe"') > 0.5
    assert sample(loaded, "tts_model_load_seconds_count", 'model="piper-joe"') == 1
    assert sample(loaded, "tts_real_time_factor_count", 'model="piper-joe"') == 2
    assert sample(loaded, "tts_requests_queued", 'model="piper-joe"') == 0
    await client.post("/api/v1/models/piper-joe/unload")
    unloaded = (await client.get("/metrics")).text
    assert sample(unloaded, "tts_model_unloads_total", 'reason="manual"') == 1
    assert sample(unloaded, "tts_model_loaded", 'model="piper-joe"') == 0


async def test_metrics_content_type_gives_each_parameter_once(client: AppClient) -> None:
    """Prometheus 3 refuses a scrape whose Content-Type repeats a parameter."""
    response = await client.get("/metrics")
    assert response.headers.get_list("content-type") == ["text/plain; version=1.0.0; charset=utf-8"]

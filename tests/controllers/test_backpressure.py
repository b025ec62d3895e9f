"""Limits under load: the queue bound, the request timeout (in-process, in-memory workers), the generation watchdog
and clients that leave (a real worker process, a real socket)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from service.settings import Settings
from tests.conftest import AppClient, ClientFactory, tone_model

pytestmark = [pytest.mark.anyio, pytest.mark.in_process]


def speech(text: str, **fields: object) -> dict[str, object]:
    return {"model": "slow", "input": text, "response_format": "pcm", **fields}


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


@asynccontextmanager
async def busy(client: AppClient, text: str = "first") -> AsyncIterator[dict[str, int]]:
    """One long request in flight while the test body runs; its status code lands in the dict. The model is loaded
    first, so that no timeout under test counts its load."""
    result: dict[str, int] = {}
    assert (await client.post("/api/v1/models/slow/load")).status_code == 200

    async def run() -> None:
        result["status"] = (await client.post("/v1/audio/speech", json=speech(text))).status_code

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await until(lambda: client.loader.snapshots_now()[-1].in_flight == 1)
        yield result


def requests_seen(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_past_the_queue_bound_requests_get_429_with_retry_after(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    model = tone_model("slow", chunks=20, chunk_seconds=0.05)
    async with make_client(Settings(max_queue=1, data_dir=tmp_path), (model,)) as client, busy(client):

        async def queued() -> None:
            await client.post("/v1/audio/speech", json=speech("second"))

        async with anyio.create_task_group() as group:
            group.start_soon(queued)
            await until(lambda: client.loader.snapshots_now()[-1].queued == 1)
            refused = await client.post("/v1/audio/speech", json=speech("third"))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"


async def test_a_request_that_waits_past_the_timeout_gets_504_and_never_reaches_the_model(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    seen = tmp_path / "requests.txt"
    model = tone_model("slow", chunks=20, chunk_seconds=0.05, requests_file=str(seen))
    async with make_client(Settings(request_timeout=0.3, data_dir=tmp_path), (model,)) as client:
        async with busy(client) as first:
            late = await client.post("/v1/audio/speech", json=speech("late"))
        assert late.status_code == 504
        assert late.json()["error"]["code"] == "timeout"
        assert first["status"] == 200
        assert requests_seen(seen) == ["first"]
        assert client.loader.snapshots_now()[-1].queued == 0


@pytest.mark.slow
@pytest.mark.real_processes
async def test_the_watchdog_kills_a_worker_busy_past_the_limit(make_client: ClientFactory, tmp_path: Path) -> None:
    model = tone_model("slow", chunks=100, chunk_seconds=0.1)
    async with make_client(Settings(generation_timeout=0.5, data_dir=tmp_path), (model,)) as client:
        response = await client.post("/v1/audio/speech", json=speech("forever"))
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "generation_timeout"
        status = (await client.get("/api/v1/models/slow/status")).json()
        assert status["state"] == "unloaded"
        assert status["last_unload_reason"] == "crash"
        assert "watchdog" in status["last_error"]
        metrics = (await client.get("/metrics")).text
        assert 'tts_watchdog_kills_total{model="slow"} 1.0' in metrics
        again = await client.post("/v1/audio/speech", json=speech("forever again"))
        assert again.status_code == 504
        assert (await client.get("/api/v1/models/slow/status")).json()["loads_total"] == 2  # a fresh worker


@pytest.mark.slow
@pytest.mark.real_processes
async def test_a_client_that_leaves_while_queued_is_dropped_before_the_model(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    seen = tmp_path / "requests.txt"
    model = tone_model("slow", chunks=20, chunk_seconds=0.05, requests_file=str(seen))
    async with make_client(Settings(data_dir=tmp_path), (model,)) as client:
        async with busy(client):
            async with httpx.AsyncClient(base_url=str(client.base_url)) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    await impatient.post("/v1/audio/speech", json=speech("impatient"), timeout=0.3)
            await until(lambda: client.loader.snapshots_now()[-1].queued == 0)
        assert (await client.post("/v1/audio/speech", json=speech("after"))).status_code == 200
        assert requests_seen(seen) == ["first", "after"]

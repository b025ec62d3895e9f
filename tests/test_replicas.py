"""Replicas with real Piper workers: one server, the embedded voice allowed two replicas of one CPU thread each."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from service.app import create_app
from service.lifecycle.memory import process_exists
from service.settings import Settings
from tests.conftest import AppClient, serve
from tests.support.processes import child_pids

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODEL = "piper-joe"
SHORT = "Hello there."
# long enough (about a second of generation) that requests sent together overlap on the two replicas
LONG = "The quick brown fox jumps over the lazy dog. A second sentence gives the voice a little more to say."


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AppClient]:
    data = tmp_path_factory.mktemp("replicas") / "data"
    settings = Settings(data_dir=Path(data), replicas_max=2, replica_threads=1)
    async with serve(create_app(settings)) as served:
        yield served
    assert not [pid for pid in child_pids(os.getpid()) if process_exists(pid)]


def environment(pid: int) -> dict[str, str]:
    """A process's environment as the kernel holds it."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in entries if b"=" in entry)


async def status(client: AppClient) -> dict[str, Any]:
    answer = await client.get(f"/api/v1/models/{MODEL}/status")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def speak_together(client: AppClient, count: int, text: str = SHORT, **body: Any) -> None:
    """`count` speech requests at once, each answered 200 with audio."""

    async def speak() -> None:
        answer = await client.post(
            "/v1/audio/speech", json={"model": MODEL, "input": text, "response_format": "pcm", **body}
        )
        assert answer.status_code == 200, answer.text
        assert answer.content

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(speak)


async def until_replicas(client: AppClient, count: int, timeout: float = 30.0) -> dict[str, Any]:
    """The status once the model has `count` loaded replicas and no other."""
    with anyio.fail_after(timeout):
        while True:
            body = await status(client)
            if [replica["state"] for replica in body["replicas"]] == ["loaded"] * count:
                return body
            await anyio.sleep(0.02)


async def test_requests_scale_out_spread_across_replicas_and_each_replica_idles_out_to_zero(
    client: AppClient,
) -> None:
    assert (await status(client))["replicas"] == []
    await speak_together(client, 3, keep_alive=-1)
    two = await until_replicas(client, 2)
    assert [(replica["index"], replica["threads"]) for replica in two["replicas"]] == [(0, 1), (1, 1)]
    # what each worker was started with: one onnxruntime thread (Piper's option) and one OpenMP thread
    assert [environment(replica["pid"]).get("OMP_NUM_THREADS") for replica in two["replicas"]] == ["1", "1"]
    assert two["rss_bytes"] == sum(replica["rss_bytes"] for replica in two["replicas"])
    assert two["pid"] == two["replicas"][0]["pid"]
    page = (await client.get("/models/")).text
    assert "2 of 2 replicas" in page
    assert all(f'data-replica="{replica["index"]}" data-state="loaded"' in page for replica in two["replicas"])
    served_before = [replica["requests"] for replica in two["replicas"]]
    await speak_together(client, 2, LONG, keep_alive=-1)
    spread = await status(client)
    assert [
        replica["requests"] - before for replica, before in zip(spread["replicas"], served_before, strict=True)
    ] == [
        1,
        1,
    ]
    metrics = (await client.get("/metrics")).text
    assert f'tts_model_replicas{{model="{MODEL}",state="loaded"}} 2.0' in metrics
    await speak_together(client, 1, keep_alive=1)  # the model's keep_alive, for both replicas
    gone = await until_replicas(client, 0)
    assert (gone["state"], gone["unloads"]) == ("unloaded", {"keep_alive": 2})
    assert not any(process_exists(replica["pid"]) for replica in spread["replicas"])


async def test_a_crashed_replica_leaves_the_other_serving_and_an_unload_reports_each_replica(
    client: AppClient,
) -> None:
    await speak_together(client, 3, keep_alive=-1)
    replicas = (await until_replicas(client, 2))["replicas"]
    crashed, survivor = replicas[0]["pid"], replicas[1]["pid"]
    os.kill(crashed, signal.SIGKILL)
    left = await until_replicas(client, 1)
    assert [replica["pid"] for replica in left["replicas"]] == [survivor]
    assert (left["state"], left["last_unload_reason"]) == ("loaded", "crash")
    answer = await client.post("/v1/audio/speech", json={"model": MODEL, "input": "Still here.", "keep_alive": -1})
    assert (answer.status_code, answer.headers["x-cold-start"]) == (200, "false")
    await speak_together(client, 2, LONG, keep_alive=-1)
    both = (await until_replicas(client, 2))["replicas"]
    report = (await client.post(f"/api/v1/models/{MODEL}/unload")).json()
    assert [(replica["index"], replica["pid"]) for replica in report["replicas"]] == [
        (replica["index"], replica["pid"]) for replica in both
    ]
    assert all(replica["memory_freed"]["rss_bytes"] > 0 for replica in report["replicas"])
    assert report["memory_freed"]["rss_bytes"] == sum(
        replica["memory_freed"]["rss_bytes"] for replica in report["replicas"]
    )
    assert not any(process_exists(replica["pid"]) for replica in both)
    assert (await status(client))["state"] == "unloaded"

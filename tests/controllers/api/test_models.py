"""The models API: status fields, manual load and unload with their reports, run-time settings. In-process with
in-memory workers, but where the point is a worker process (its pid, memory, a kill, a stopped load)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import TaskGroup

from service.lifecycle.memory import process_exists
from service.settings import Settings
from tests.conftest import AppClient, ClientFactory, tone_model

pytestmark = [pytest.mark.anyio, pytest.mark.in_process]

SEED_FIELDS = {
    "loaded",
    "auto_unload",
    "idle_timeout",
    "idle_time",
    "time_until_unload",
    "gpu_memory_allocated_gb",
    "gpu_memory_reserved_gb",
}
ADDED_FIELDS = {
    "state",
    "engine",
    "device",
    "pid",
    "rss_bytes",
    "in_flight",
    "queued",
    "loads_total",
    "last_load_seconds",
    "last_unload_reason",
    "last_error",
    "pinned",
}


async def test_status_has_the_seed_fields_and_ours_for_every_model(client: AppClient) -> None:
    status = (await client.get("/api/v1/models/status")).json()
    entry = status["piper-joe"]
    assert set(entry) >= SEED_FIELDS | ADDED_FIELDS
    assert (entry["state"], entry["loaded"], entry["pid"], entry["engine"], entry["device"]) == (
        "unloaded",
        False,
        None,
        "piper",
        "cpu",
    )
    assert entry["idle_timeout"] == 300


@pytest.mark.slow
@pytest.mark.real_processes
async def test_load_then_unload_reports_what_it_did(client: AppClient) -> None:
    loaded = (await client.post("/api/v1/models/piper-joe/load")).json()
    assert (loaded["state"], loaded["loaded"], loaded["loads_total"]) == ("loaded", True, 1)
    assert loaded["rss_bytes"] > 50 * 1024 * 1024
    assert 0 < loaded["time_until_unload"] <= 300
    pid = loaded["pid"]
    assert process_exists(pid)

    report = (await client.post("/api/v1/models/piper-joe/unload")).json()
    assert report["previous_state"] == "loaded"
    assert report["state"] == "unloaded"
    assert report["reason"] == "manual"
    assert report["pid"] == pid
    assert report["worker_exited"] is True
    assert report["exit_code"] == 0
    assert report["memory_freed"]["rss_bytes"] > 50 * 1024 * 1024
    assert not process_exists(pid)
    status = (await client.get("/api/v1/models/piper-joe/status")).json()
    assert (status["state"], status["pid"], status["last_unload_reason"]) == ("unloaded", None, "manual")


async def test_unload_waits_for_the_request_in_flight_and_counts_it(make_client: ClientFactory) -> None:
    async with make_client(Settings(), (tone_model("slow", chunks=20, chunk_seconds=0.05),)) as client:
        results: dict[str, int] = {}

        async def speak() -> None:
            response = await client.post(
                "/v1/audio/speech", json={"model": "slow", "input": "x", "response_format": "wav"}
            )
            results["speech"] = response.status_code
            results["bytes"] = len(response.content)

        async with anyio.create_task_group() as group:
            group.start_soon(speak)
            with anyio.fail_after(10):
                while (await client.loader.snapshot("slow")).in_flight == 0:
                    await anyio.sleep(0.01)
            report = (await client.post("/api/v1/models/slow/unload")).json()
        assert results["speech"] == 200
        assert results["bytes"] > 20 * 4000 * 2
        assert report["requests_drained"] == 1
        assert report["worker_exited"] is True


async def test_unknown_model_is_a_404_listing_the_known_ones(client: AppClient) -> None:
    for method, path in [
        ("POST", "/api/v1/models/nope/load"),
        ("POST", "/api/v1/models/nope/unload"),
        ("GET", "/api/v1/models/nope/status"),
        ("PATCH", "/api/v1/models/nope"),
    ]:
        response = await client.request(method, path, json={} if method == "PATCH" else None)
        assert response.status_code == 404, path
        assert "piper-joe" in response.json()["error"]["message"]


async def test_settings_change_at_run_time(client: AppClient) -> None:
    changed = (await client.patch("/api/v1/models/piper-joe", json={"idle_timeout": 0.2, "pinned": True})).json()
    assert (changed["idle_timeout"], changed["pinned"]) == (0.2, True)
    await client.post("/api/v1/models/piper-joe/load")
    await anyio.sleep(0.5)
    assert client.loader.state("piper-joe").value == "loaded"
    await client.patch("/api/v1/models/piper-joe", json={"pinned": False})
    with anyio.fail_after(5):
        while client.loader.state("piper-joe").value != "unloaded":
            await anyio.sleep(0.02)
    bad = await client.patch("/api/v1/models/piper-joe", json={"pinned": "yes"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "pinned"


@pytest.mark.slow
@pytest.mark.real_processes
async def test_a_worker_killed_mid_request_gives_a_clear_503_and_the_model_recovers(
    make_client: ClientFactory,
) -> None:
    import os
    import signal

    async with make_client(Settings(), (tone_model("slow", chunks=100, chunk_seconds=0.05),)) as client:
        results: list[tuple[int, str]] = []

        async def speak() -> None:
            response = await client.post("/v1/audio/speech", json={"model": "slow", "input": "x"})
            results.append((response.status_code, response.text))

        async with anyio.create_task_group() as group:
            group.start_soon(speak)
            with anyio.fail_after(10):
                while (snapshot := await client.loader.snapshot("slow")).in_flight == 0:
                    await anyio.sleep(0.01)
            worker_pid = snapshot.pid
            assert worker_pid is not None
            os.kill(worker_pid, signal.SIGKILL)
        assert worker_pid is not None
        status_code, body = results[0]
        assert status_code == 503
        assert "exited" in body
        status = (await client.get("/api/v1/models/slow/status")).json()
        assert (status["state"], status["last_unload_reason"], status["in_flight"]) == ("unloaded", "crash", 0)
        assert "-9" in status["last_error"]
        assert not process_exists(worker_pid)
        again = await client.post("/v1/audio/speech", json={"model": "slow", "input": "x", "keep_alive": 0})
        assert again.status_code == 200
        assert again.headers["x-cold-start"] == "true"


async def _loading_pid(client: AppClient, model: str) -> int:
    """The pid the status shows for a model whose load is under way (waits until the worker has started)."""
    with anyio.fail_after(20):
        while True:
            status = (await client.get(f"/api/v1/models/{model}/status")).json()
            if status["state"] == "loading" and status["pid"] is not None:
                pid: int = status["pid"]
                return pid
            await anyio.sleep(0.02)


async def _start_a_load_that_hangs(client: AppClient, group: TaskGroup, answers: list[httpx.Response]) -> int:
    """Ask for the `hangs` model's load in the background (its answer goes into `answers`) and SIGSTOP its worker
    as soon as its pid shows; returns the pid."""

    async def load() -> None:
        answers.append(await client.post("/api/v1/models/hangs/load"))

    group.start_soon(load)
    pid = await _loading_pid(client, "hangs")
    os.kill(pid, signal.SIGSTOP)
    return pid


@pytest.mark.slow
@pytest.mark.real_processes
async def test_a_load_that_hangs_shows_its_pid_then_fails_on_the_load_timeout_leaving_no_process(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", max_loaded_models=1, load_timeout=3.0, capacity_wait=0.5)
    async with make_client(settings, (tone_model("hangs", load_seconds=120), tone_model("other"))) as client:
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as group:
            pid = await _start_a_load_that_hangs(client, group, answers)
        (answer,) = answers
        assert (answer.status_code, "Retry-After" in answer.headers) == (503, True)
        assert "load timeout of 3 s" in answer.json()["error"]["message"]
        status = (await client.get("/api/v1/models/hangs/status")).json()
        assert (status["state"], status["pid"]) == ("failed", None)
        assert f"did not load within the load timeout of 3 s; its worker (pid {pid}) was killed" in status["last_error"]
        assert not process_exists(pid)
        assert (await client.post("/api/v1/models/other/load")).status_code == 200


@pytest.mark.slow
@pytest.mark.real_processes
async def test_unloading_a_model_while_it_loads_answers_at_once_and_ends_its_stopped_worker(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", max_loaded_models=1, capacity_wait=0.5)
    async with make_client(settings, (tone_model("hangs", load_seconds=120), tone_model("other"))) as client:
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as group:
            pid = await _start_a_load_that_hangs(client, group, answers)
            assert (await client.post("/api/v1/models/other/load")).status_code == 503  # no room while it loads
            with anyio.fail_after(10):
                report = (await client.post("/api/v1/models/hangs/unload")).json()
        assert (report["previous_state"], report["state"], report["reason"]) == ("loading", "unloaded", "manual")
        assert (report["worker_exited"], report["pid"], report["exit_code"]) == (True, pid, -signal.SIGKILL)
        assert not process_exists(pid)
        (answer,) = answers
        assert (answer.status_code, "Retry-After" in answer.headers) == (503, True)
        assert "called off" in answer.json()["error"]["message"]
        status = (await client.get("/api/v1/models/hangs/status")).json()
        assert (status["state"], status["pid"], status["last_unload_reason"]) == ("unloaded", None, "manual")
        assert (await client.post("/api/v1/models/other/load")).status_code == 200


async def test_a_failed_load_answers_503_with_retry_after_from_the_first_failure(make_client: ClientFactory) -> None:
    async with make_client(Settings(), (tone_model("broken", fail_load="no weights here"),)) as client:
        for _ in range(2):
            answer = await client.post("/api/v1/models/broken/load")
            assert (answer.status_code, answer.headers.get("Retry-After")) == (503, "1")
            assert "no weights here" in answer.json()["error"]["message"]


async def test_aliases_work_wherever_a_model_id_does(client: AppClient) -> None:
    assert (await client.get("/api/v1/models/tts-1/status")).json() == (
        await client.get("/api/v1/models/piper-joe/status")
    ).json()
    pinned = await client.patch("/api/v1/models/tts-1", json={"pinned": True})
    assert (pinned.status_code, pinned.json()["pinned"]) == (200, True)
    assert (await client.get("/api/v1/models/piper-joe/status")).json()["pinned"] is True
    loaded = await client.post("/api/v1/models/tts-1-hd/load")
    assert (loaded.status_code, loaded.json()["state"]) == (200, "loaded")
    progress = await client.get("/models/tts-1/progress", headers={"HX-Request": "true"})
    assert (progress.status_code, "piper-joe" in progress.text) == (200, True)
    assert (await client.post("/models/tts-1/unpin")).status_code == 200
    report = (await client.post("/api/v1/models/tts-1/unload")).json()
    assert (report["model"], report["worker_exited"]) == ("piper-joe", True)


async def test_patch_refuses_unknown_fields_and_a_negative_idle_timeout_means_never(client: AppClient) -> None:
    unknown = await client.patch("/api/v1/models/piper-joe", json={"idletimeout": 5})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "idletimeout"
    assert "unknown field `idletimeout`" in unknown.json()["error"]["message"]
    assert (await client.get("/api/v1/models/piper-joe/status")).json()["idle_timeout"] == 300
    never = (await client.patch("/api/v1/models/piper-joe", json={"idle_timeout": -1})).json()
    assert never["idle_timeout"] == -1
    loaded = (await client.post("/api/v1/models/piper-joe/load")).json()
    assert (loaded["state"], loaded["time_until_unload"]) == ("loaded", None)

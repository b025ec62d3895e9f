"""Lifecycle promises that hold on every backend, written once and run against a real server with local workers and
a real one on Ray (tests/lifecycle/test_ray_backend.py): concurrent first requests share one load, a lease pins its
replica past the keep_alive its request asked for, a manual unload drains then reports each replica, and a client
that leaves mid-stream stops the generation. Each check starts with its model unloaded and leaves it so."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile

from tests.support.engines import TONE_ENGINE

FLIGHT = "checked-flight"
SLOW = "checked-slow"
LEAVER = "checked-leaver"
SLOW_CHUNKS = 10  # of 0.25 s of audio, one per 0.1 s: a generation of 1 s
LEAVER_CHUNKS = 20  # one per 0.05 s: a client that leaves after the first leaves 1 s of generation to cancel


@dataclass(frozen=True)
class LifecycleServer:
    url: str
    worker_pids: Callable[[], set[int]]  # the processes serving its replicas now: workers, or Ray actors
    chunks_file: Path  # a line (the request's text) per chunk the LEAVER model's engine makes


def lifecycle_models(chunks_file: Path) -> str:
    """The models file entries the checks use; a server without Ray ignores their `ray` tables."""
    return "".join(
        f"""
[[models]]
id = "{model}"
engine = "{TONE_ENGINE}"
options = {options}
ray = {{ num_cpus = 0 }}
"""
        for model, options in (
            (FLIGHT, "{ load_seconds = 0.5 }"),
            (SLOW, f"{{ chunks = {SLOW_CHUNKS}, chunk_seconds = 0.1 }}"),
            (LEAVER, f'{{ chunks = {LEAVER_CHUNKS}, chunk_seconds = 0.05, chunks_file = "{chunks_file}" }}'),
        )
    )


def speak(url: str, model: str, text: str = "hello", **extra: Any) -> httpx.Response:
    body = {"model": model, "input": text, "response_format": "wav", **extra}
    return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60)


def assert_whole_generation(answer: httpx.Response) -> None:
    """A SLOW request answered with every chunk of its generation: not cut off."""
    assert answer.status_code == 200, answer.text
    samples, rate = soundfile.read(io.BytesIO(answer.content))
    assert len(samples) / rate == pytest.approx(SLOW_CHUNKS * 0.25, abs=0.01)


def status(url: str, model: str) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = httpx.get(f"{url}/api/v1/models/status", timeout=30).json()
    return models[model]


def unload(url: str, model: str) -> dict[str, Any]:
    answer = httpx.post(f"{url}/api/v1/models/{model}/unload", timeout=60)
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return report


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


@contextmanager
def generating(url: str, model: str, **extra: Any) -> Iterator[tuple[Future[httpx.Response], dict[str, Any]]]:
    """A request to `model` sent from another thread: its answer to come, and the replica serving it (once the
    model has it in flight)."""
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(speak, url, model, **extra)
        wait_for(lambda: status(url, model)["in_flight"] == 1 or answer.done(), f"a request to {model} in flight")
        (replica,) = status(url, model)["replicas"]
        yield answer, replica


def concurrent_first_requests_share_one_load(server: LifecycleServer) -> None:
    assert status(server.url, FLIGHT)["state"] == "unloaded"
    before = server.worker_pids()
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: speak(server.url, FLIGHT), range(3)))
    assert [answer.status_code for answer in answers] == [200] * 3
    model = status(server.url, FLIGHT)
    assert model["loads_total"] == 1
    (replica,) = model["replicas"]
    assert server.worker_pids() - before == {replica["pid"]}  # one process started for the three
    unload(server.url, FLIGHT)
    assert replica["pid"] not in server.worker_pids()


def a_lease_pins_its_replica_past_the_keep_alive_it_asked_for(server: LifecycleServer) -> None:
    with generating(server.url, SLOW, keep_alive=0.2) as (answer, replica):  # a generation of 1 s
        assert replica["pid"] in server.worker_pids()
    assert_whole_generation(answer.result())

    # then the request's keep_alive, not the model's idle timeout of 300 s, ends the replica
    wait_for(lambda: status(server.url, SLOW)["state"] == "unloaded", "the reaper ends the replica", timeout=10)
    assert status(server.url, SLOW)["last_unload_reason"] == "keep_alive"
    assert replica["pid"] not in server.worker_pids()


def a_manual_unload_drains_then_reports_each_replica(server: LifecycleServer) -> None:
    with generating(server.url, SLOW) as (answer, replica):
        report = unload(server.url, SLOW)
    assert_whole_generation(answer.result())
    assert report["requests_drained"] == 1
    (ended,) = report["replicas"]
    assert (ended["pid"], ended["node"]) == (replica["pid"], replica["node"])
    assert isinstance(ended["exit_code"], int)
    assert replica["pid"] not in server.worker_pids()
    assert status(server.url, SLOW)["last_unload_reason"] == "manual"


def a_client_that_leaves_mid_stream_stops_its_generation(server: LifecycleServer) -> None:
    server.chunks_file.unlink(missing_ok=True)
    body = {"model": LEAVER, "input": "left", "response_format": "pcm", "stream_format": "audio"}
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert next(response.iter_bytes())
        (replica,) = status(server.url, LEAVER)["replicas"]
    # the connection is closed: the next request is served by the same replica, and the one that left made no
    # chunk once it began, nor its whole generation
    answer = speak(server.url, LEAVER, "stayed")
    assert answer.status_code == 200, answer.text
    made = server.chunks_file.read_text().split()
    assert made.count("stayed") == LEAVER_CHUNKS
    assert "left" not in made[made.index("stayed") :]
    assert made.count("left") < LEAVER_CHUNKS, f"the request that left made all its {LEAVER_CHUNKS} chunks"
    model = status(server.url, LEAVER)
    assert (model["state"], model["loads_total"], model["in_flight"]) == ("loaded", 1, 0)
    assert [live["pid"] for live in model["replicas"]] == [replica["pid"]]
    unload(server.url, LEAVER)


LIFECYCLE_CHECKS = (
    concurrent_first_requests_share_one_load,
    a_lease_pins_its_replica_past_the_keep_alive_it_asked_for,
    a_manual_unload_drains_then_reports_each_replica,
    a_client_that_leaves_mid_stream_stops_its_generation,
)

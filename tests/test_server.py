"""`python -m service` as users run it: the official openai client, JSON logs, signals and orphans."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from service.lifecycle.memory import process_exists
from tests.conftest import ServerProcess
from tests.support.engines import TONE_ENGINE
from tests.support.processes import child_pids

pytestmark = pytest.mark.slow

StartServer = Callable[..., ServerProcess]


def log_events(server: ServerProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while process_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not process_exists(pid)


def test_the_official_openai_client_works_plain_and_streaming(start_server: StartServer) -> None:
    server = start_server()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    plain = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello from the official client.")
    assert plain.response.headers["content-type"] == "audio/mpeg"
    assert len(plain.content) > 2000

    text = "One sentence arrives. Then another one. And a third to finish."
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="nova", input=text, response_format="pcm", stream_format="audio"
    ) as response:
        assert response.headers["x-cold-start"] == "false"
        chunks = [chunk for chunk in response.iter_bytes() if chunk]
    assert len(chunks) >= 3
    assert sum(len(chunk) for chunk in chunks) > 24000 * 2 * 2

    with pytest.raises(openai.NotFoundError) as missing:
        client.audio.speech.create(model="no-such-model", voice="alloy", input="x")
    assert "piper-joe" in str(missing.value)
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="")
    models = [model.id for model in client.models.list()]
    assert "piper-joe" in models


def test_logs_are_json_lines_with_lifecycle_and_request_events(start_server: StartServer) -> None:
    server = start_server("--idle-timeout", "0.5")
    response = httpx.post(
        f"{server.base_url}/v1/audio/speech",
        json={"model": "tts-1", "input": "Log this.", "response_format": "wav"},
        timeout=60,
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 10
    while "model_unloaded" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    events = {str(event["event"]): event for event in log_events(server)}
    assert {"model_load_started", "model_loaded", "request_finished", "model_unloaded"} <= set(events)
    assert events["model_unloaded"]["reason"] == "idle"
    assert float(str(events["model_unloaded"]["idle_seconds"])) >= 0.5
    assert events["request_finished"]["cold"] is True
    assert any(event.get("logger") == "uvicorn.access" for event in log_events(server))


def test_sigterm_unloads_every_worker_and_exits_zero(start_server: StartServer) -> None:
    server = start_server()
    status = httpx.post(f"{server.base_url}/api/v1/models/piper-joe/load", timeout=60).json()
    worker = status["pid"]
    assert worker in child_pids(server.process.pid)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert wait_gone(worker)
    shutdown = [event for event in log_events(server) if event["event"] == "model_unloaded"]
    assert shutdown[-1]["reason"] == "shutdown"


def test_a_worker_does_not_outlive_a_server_killed_with_sigkill(start_server: StartServer) -> None:
    server = start_server()
    worker = httpx.post(f"{server.base_url}/api/v1/models/piper-joe/load", timeout=60).json()["pid"]
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    assert wait_gone(worker)


def test_engine_libraries_are_loaded_by_workers_only(start_server: StartServer) -> None:
    server = start_server()
    status = httpx.post(f"{server.base_url}/api/v1/models/piper-joe/load", timeout=60).json()
    response = httpx.post(
        f"{server.base_url}/v1/audio/speech", json={"model": "tts-1", "input": "Only there."}, timeout=60
    )
    assert response.status_code == 200

    def mapped_files(pid: int) -> str:
        with open(f"/proc/{pid}/maps") as maps:
            return maps.read()

    assert "onnxruntime" in mapped_files(status["pid"])
    server_maps = mapped_files(server.process.pid)
    assert [name for name in ("onnxruntime", "libtorch", "espeak") if name in server_maps] == []


def test_help_lists_the_options() -> None:
    import subprocess
    import sys

    from service.settings import PROJECT_ROOT

    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    for flag in ("--host", "--port", "--idle-timeout", "--models-dir", "--default-model"):
        assert flag in result.stdout


SHUTDOWN_MODELS = f"""
[[models]]
id = "long"
engine = "{TONE_ENGINE}"
options = {{ chunks = 400, chunk_seconds = 0.05 }}

[[models]]
id = "streamed"
engine = "{TONE_ENGINE}"
options = {{ chunks = 400, chunk_seconds = 0.05 }}

[[models]]
id = "loading"
engine = "{TONE_ENGINE}"
options = {{ load_seconds = 120 }}
"""


def _speak(base_url: str, model: str, stream: bool) -> tuple[int, str, str | None, bytes | None]:
    """One speech request: its status, content type, Retry-After and body (None: a stream that ended unfinished)."""
    body = {"model": model, "input": "x", "response_format": "pcm"} | ({"stream_format": "audio"} if stream else {})
    with httpx.stream("POST", f"{base_url}/v1/audio/speech", json=body, timeout=60) as response:
        headers = response.status_code, response.headers.get("content-type", ""), response.headers.get("retry-after")
        try:
            return *headers, response.read()
        except httpx.RemoteProtocolError:
            return *headers, None


def test_requests_unanswered_when_the_grace_runs_out_get_503_json_and_the_server_exits_zero(
    start_server: StartServer, tmp_path: Path
) -> None:
    config = tmp_path / "models.toml"
    config.write_text(SHUTDOWN_MODELS)
    server = start_server("--models-config", str(config), "--shutdown-grace", "1")
    for model in ("long", "streamed"):
        assert httpx.post(f"{server.base_url}/api/v1/models/{model}/load", timeout=60).status_code == 200
    sends = [("long", False)] * 3 + [("streamed", True)] * 2 + [("loading", False)]
    with ThreadPoolExecutor(len(sends)) as pool:
        futures = [pool.submit(_speak, server.base_url, model, stream) for model, stream in sends]
        deadline = time.monotonic() + 30
        while True:
            status = httpx.get(f"{server.base_url}/api/v1/models/status", timeout=10).json()
            waiting = {model: (status[model]["in_flight"], status[model]["queued"]) for model in status}
            # the third worker is the loading model's: its request is queued before its process has started
            workers = child_pids(server.process.pid)
            placed = waiting["long"] == (1, 2) and waiting["streamed"] == (1, 1) and waiting["loading"] == (0, 1)
            if placed and len(workers) == 3:
                break
            assert time.monotonic() < deadline, (waiting, workers)
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        answers = [future.result(timeout=60) for future in futures]
    assert server.process.wait(timeout=30) == 0
    for (model, stream), (code, content_type, retry_after, content) in zip(sends, answers, strict=True):
        if code == 200:
            assert stream, model
            continue
        assert (code, content_type, retry_after is not None) == (503, "application/json", True), (model, content)
        assert content is not None
        assert set(json.loads(content)["error"]) == {"message", "type", "param", "code"}
    assert sorted(code for code, *_ in answers) == [200] + [503] * 5
    assert "Exception in ASGI application" not in server.log()
    assert "timeout graceful shutdown exceeded" not in server.log()
    assert all(wait_gone(pid) for pid in workers)

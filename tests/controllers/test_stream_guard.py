"""Streams the server cannot finish end unfinished, so clients can tell: a worker SIGKILLed mid-stream, the
watchdog ending a generation, a client that stops reading. Real Piper and tone workers, httpx and the official
openai client."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import openai
import pytest

from service.settings import Settings
from tests.conftest import AppClient, ClientFactory, ServerProcess, tone_model
from tests.support.engines import TONE_ENGINE
from tests.support.processes import memory_kib, reset_peak

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# long enough that Piper is still speaking when the test kills its worker after the first bytes
LONG_TEXT = " ".join(f"This is sentence number {index} of a long reading." for index in range(70))

SLOW_READERS = 8
BUFFER_LIMIT = 4 << 20
# 200 s at 48 kHz: 38 MB of float32 audio per request, made in well under a second, and 19 MB of 48 kHz pcm: far
# more than loopback's socket buffers take in for a client that does not read
FLOOD_CHUNKS = 800
FLOOD_TOML = f"""
[[models]]
id = "flood"
engine = "{TONE_ENGINE}"
[models.options]
sample_rate = 48000
chunks = {FLOOD_CHUNKS}
"""
FLOOD_REQUEST = {"input": "hi", "stream_format": "audio", "response_format": "pcm", "sample_rate": 48000}


def aborted_count(metrics: str, cause: str) -> float:
    """How many streams the metrics count as aborted for a cause (a regular expression)."""
    pattern = rf'^tts_streams_aborted_total\{{[^}}]*cause="(?:{cause})"[^}}]*\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


async def worker_pid(client: AppClient, model: str) -> int:
    status = (await client.get("/api/v1/models/status")).json()
    pid = status[model]["pid"]
    assert pid, status[model]
    return int(pid)


async def kill_after_first_bytes(client: AppClient, response: httpx.Response, model: str) -> bytes:
    """Read the first bytes of a streamed response, SIGKILL the model's worker, then read on."""
    received = b""
    pieces = response.aiter_bytes()
    received += await anext(pieces)
    os.kill(await worker_pid(client, model), signal.SIGKILL)
    async for piece in pieces:
        received += piece
    return received


async def read_events(response: httpx.Response, events: list[dict[str, Any]], after_first: Any = None) -> None:
    """Collect a stream's server-sent events into `events`; `after_first` is awaited once the first arrived."""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line.removeprefix("data: ")))
            if len(events) == 1 and after_first is not None:
                await after_first()


@pytest.mark.parametrize("response_format", ["pcm", "wav", "mp3"])
async def test_an_audio_stream_whose_worker_is_killed_ends_unfinished(client: AppClient, response_format: str) -> None:
    body = {"model": "piper-joe", "input": LONG_TEXT, "stream_format": "audio", "response_format": response_format}
    async with client.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
            await kill_after_first_bytes(client, response, "piper-joe")
    metrics = (await client.get("/metrics")).text
    assert aborted_count(metrics, "worker_crashed") == 1
    again = await client.post("/v1/audio/speech", json=body | {"input": "Still here."})
    assert again.status_code == 200


async def test_an_sse_stream_whose_worker_is_killed_ends_with_an_error_event_and_no_done(client: AppClient) -> None:
    body = {"model": "piper-joe", "input": LONG_TEXT, "stream_format": "sse", "response_format": "pcm"}
    events: list[dict[str, Any]] = []
    async with client.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200

        async def kill_worker() -> None:
            os.kill(await worker_pid(client, "piper-joe"), signal.SIGKILL)

        with pytest.raises(httpx.RemoteProtocolError):
            await read_events(response, events, kill_worker)
    types = [event["type"] for event in events]
    assert types[0] == "speech.audio.delta"
    assert types[-1] == "error"
    assert "speech.audio.done" not in types
    error = events[-1]["error"]
    assert error["code"] == "worker_crashed"
    assert error["type"] == "server_error"
    assert set(error) == {"message", "type", "param", "code"}


async def test_the_openai_client_raises_on_a_stream_cut_short(client: AppClient) -> None:
    def read_streamed_speech(pid_seen: anyio.Event) -> bytes:
        speech = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="unused", max_retries=0)
        received = b""
        with speech.audio.speech.with_streaming_response.create(
            model="piper-joe", input=LONG_TEXT, voice="alloy", response_format="pcm", stream_format="audio"
        ) as response:
            for piece in response.iter_bytes():
                received += piece
                if not pid_seen.is_set():
                    anyio.from_thread.run(kill_worker, pid_seen)
        return received

    async def kill_worker(pid_seen: anyio.Event) -> None:
        os.kill(await worker_pid(client, "piper-joe"), signal.SIGKILL)
        pid_seen.set()

    # the openai package talks through httpx2, its own fork of httpx
    with pytest.raises(httpx2.RemoteProtocolError, match="incomplete chunked read"):
        await anyio.to_thread.run_sync(read_streamed_speech, anyio.Event())


async def test_the_watchdog_ending_a_stream_is_an_error_event_with_generation_timeout(
    make_client: ClientFactory, tmp_path: Any
) -> None:
    slow = tone_model("slow", chunks=40, chunk_seconds=0.1)
    settings = Settings(data_dir=tmp_path / "data", generation_timeout=1.0)
    async with make_client(settings, (slow,)) as client:
        body = {"model": "slow", "input": "hi", "stream_format": "sse", "response_format": "pcm"}
        events: list[dict[str, Any]] = []
        async with client.stream("POST", "/v1/audio/speech", json=body) as response:
            with pytest.raises(httpx.RemoteProtocolError):
                await read_events(response, events)
        assert events[-1]["type"] == "error"
        assert events[-1]["error"]["code"] == "generation_timeout"
        async with client.stream("POST", "/v1/audio/speech", json=body | {"stream_format": "audio"}) as response:
            with pytest.raises(httpx.RemoteProtocolError):
                await response.aread()
        metrics = (await client.get("/metrics")).text
        assert aborted_count(metrics, "generation_timeout") == 2


async def test_a_client_that_stops_reading_is_cut_off_and_the_model_is_free_again(
    make_client: ClientFactory, tmp_path: Any
) -> None:
    chatty = tone_model("chatty", sample_rate=48000, chunks=FLOOD_CHUNKS)
    settings = Settings(data_dir=tmp_path / "data", send_timeout=1.0, max_stream_buffer_bytes=64 << 20)
    async with make_client(settings, (chatty,)) as client, httpx.AsyncClient(base_url=str(client.base_url)) as stalled:
        body = {"model": "chatty", **FLOOD_REQUEST}
        async with stalled.stream("POST", "/v1/audio/speech", json=body) as response:
            pieces = response.aiter_raw()
            await anext(pieces)
            with anyio.fail_after(60):
                while aborted_count((await client.get("/metrics")).text, "client_stalled") < 1:
                    await anyio.sleep(0.2)
            with pytest.raises(httpx.RemoteProtocolError):
                async for _piece in pieces:
                    pass
        answer = await client.post("/v1/audio/speech", json=body | {"stream_format": None})
        assert answer.status_code == 200
        status = (await client.get("/api/v1/models/status")).json()["chatty"]
        assert status["in_flight"] == 0


def test_slow_readers_cost_at_most_the_buffer_limit_each_and_the_memory_comes_back(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Eight clients read 200 bytes of a long stream and stop. Each may cost the server its buffer limit of audio
    (plus what encoding and the socket hold), not its whole generation; once they are cut off and gone, the
    server's memory is back near where it was."""
    models = tmp_path / "models.toml"
    models.write_text(FLOOD_TOML)
    server = start_server(
        "--models-config", str(models), "--max-stream-buffer-bytes", str(BUFFER_LIMIT), "--send-timeout", "3"
    )
    pid = server.process.pid
    body = {"model": "flood", **FLOOD_REQUEST}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        assert client.post("/v1/audio/speech", json=body).status_code == 200  # loaded, every code path run once
        reset_peak(pid)
        before = memory_kib(pid)
        with contextlib.ExitStack() as readers:
            # each reader's iterator is kept: one garbage-collected would close its connection, a client gone
            # rather than one that stopped reading
            pieces = []
            for _ in range(SLOW_READERS):
                reader = readers.enter_context(httpx.Client(base_url=server.base_url, timeout=60))
                response = readers.enter_context(reader.stream("POST", "/v1/audio/speech", json=body))
                pieces.append(response.iter_raw(200))
                assert len(next(pieces[-1])) == 200
            deadline = time.monotonic() + 120
            while aborted_count(client.get("/metrics").text, "client_stalled") < SLOW_READERS:
                assert time.monotonic() < deadline, client.get("/metrics").text
                time.sleep(0.2)
        peak = memory_kib(pid)["VmHWM"]
        status = client.get("/api/v1/models/status").json()["flood"]
        assert status["in_flight"] == 0
        after = memory_kib(pid)["VmRSS"]
    growth, kept = (peak - before["VmRSS"]) << 10, (after - before["VmRSS"]) << 10
    print(f"server RSS {before['VmRSS']} KiB, peak {peak} KiB, after {after} KiB")
    # without the limit each reader held its whole generation: 8 x 38 MB
    assert growth < SLOW_READERS * BUFFER_LIMIT + (24 << 20), f"peak grew by {growth >> 20} MiB"
    assert kept < 16 << 20, f"{kept >> 20} MiB still held after the readers left"

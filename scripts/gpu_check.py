"""GPU check: serve a transformers TTS model of a few hundred million parameters (random weights, built here from
a config: nothing is downloaded) through the service, in bf16/fp16 and with bitsandbytes 4-bit, and record load
seconds, GPU memory while loaded and GPU memory after unload as nvidia-smi shows it.

    python scripts/gpu_check.py --out gpu_check.json            # on a machine with an NVIDIA GPU
    python scripts/gpu_check.py --device cpu --layers 2         # the same flow on a CPU, as a smoke test

What it checks, each a field of the JSON and a line of the summary:
- a worker's GPU memory after unload is 0 MiB: its process is gone (`zero_after_unload`, per model);
- a warm spare with its imports done holds 0 MiB of GPU memory, nvidia-smi does not list it (`spare.zero_gpu`);
- a cold start (POST /v1/audio/speech right after an unload) with a warm spare and, on a second server with
  WARM_SPARES off, without one (`cold_with_spare`, `cold_without_spare`);
- a bitsandbytes 4-bit load (the `gpu-check-4bit` model; not on --device cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from tests.support.processes import child_pids, free_port  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyz '"
TEXT = "the quick brown fox jumps over the lazy dog"


def build_model(folder: Path, layers: int, hidden: int) -> int:
    """A VITS model whose text encoder is scaled up to the requested size; returns its parameter count."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<unk>": 1} | {char: index + 2 for index, char in enumerate(ALPHABET)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    VitsTokenizer(vocab_file=str(folder / "vocab.json"), phonemize=False, add_blank=True).save_pretrained(folder)
    config = VitsConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        ffn_dim=4 * hidden,
    )
    torch.manual_seed(0)
    model = VitsModel(config)
    model.save_pretrained(folder)
    return sum(parameter.numel() for parameter in model.parameters())


def nvidia_smi() -> dict[str, Any] | None:
    """Used memory per GPU and per compute process (MiB), or None without NVIDIA tools."""
    try:
        gpus = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
        )
        apps = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return {
        "gpus": [
            dict(
                zip(("index", "name", "used_mib", "total_mib"), (part.strip() for part in line.split(",")), strict=True)
            )
            for line in gpus.stdout.splitlines()
            if line.strip()
        ],
        "processes": {
            int(pid): int(mib) for pid, mib in (line.split(",") for line in apps.stdout.splitlines() if line.strip())
        },
    }


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in child_pids(pending.pop()):
            found.add(child)
            pending.append(child)
    return found


def wait_for_spare(client: httpx.Client, model: str, timeout: float = 600) -> dict[str, Any]:
    """The model's warm-spare figures once one is ready (its imports done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spares = client.get(f"/api/v1/models/{model}/status").json().get("warm_spares")
        if spares and spares["ready"]:
            return dict(spares)
        time.sleep(0.2)
    raise SystemExit(f"no warm spare for {model} within {timeout} s")


def check_spare(client: httpx.Client, model: str) -> dict[str, Any]:
    """A ready spare's GPU memory as nvidia-smi lists it (absent: 0 MiB)."""
    spares = wait_for_spare(client, model)
    smi = nvidia_smi()
    held = {pid: (smi or {"processes": {}})["processes"].get(pid, 0) for pid in spares["pids"]}
    return {"status": spares, "nvidia_smi_mib": held, "zero_gpu": smi is not None and not any(held.values())}


def cold_start(client: httpx.Client, model: str, *, with_spare: bool) -> dict[str, Any]:
    """One speech request right after an unload: with a ready spare (waited for) or on a server without spares."""
    spare_pids = wait_for_spare(client, model)["pids"] if with_spare else []
    client.post(f"/api/v1/models/{model}/unload", timeout=120).raise_for_status()
    started = time.perf_counter()
    speech = client.post(
        "/v1/audio/speech", json={"model": model, "input": TEXT, "response_format": "wav"}, timeout=900
    )
    seconds = time.perf_counter() - started
    pid = client.get(f"/api/v1/models/{model}/status").json()["pid"]
    client.post(f"/api/v1/models/{model}/unload", timeout=120)
    return {
        "speech_status": speech.status_code,
        "request_seconds": round(seconds, 3),
        "load_seconds": speech.headers.get("x-model-load-seconds"),
        "took_the_spare": pid in spare_pids,
    }


def check_model(client: httpx.Client, model: str, server_pid: int) -> dict[str, Any]:
    started = time.perf_counter()
    loaded = client.post(f"/api/v1/models/{model}/load", timeout=900)
    load_wall = time.perf_counter() - started
    if loaded.status_code != 200:
        return {"model": model, "error": loaded.text}
    status = loaded.json()
    while_loaded = nvidia_smi()
    speech = client.post(
        "/v1/audio/speech", json={"model": model, "input": TEXT, "response_format": "wav"}, timeout=300
    )
    report = client.post(f"/api/v1/models/{model}/unload", timeout=120).json()
    deadline = time.monotonic() + 30
    after = nvidia_smi()
    while after is not None and status["pid"] in after["processes"] and time.monotonic() < deadline:
        time.sleep(0.2)
        after = nvidia_smi()
    service_pids = {server_pid, *descendants(server_pid)}
    held = {pid: mib for pid, mib in (after or {"processes": {}})["processes"].items() if pid in service_pids}
    return {
        "model": model,
        "load_seconds": status["last_load_seconds"],
        "load_request_seconds": round(load_wall, 3),
        "worker_pid": status["pid"],
        "worker_rss_bytes": status["rss_bytes"],
        "worker_gpu_bytes_while_loaded": status["gpu_bytes"],
        "torch_allocated_gb": status["gpu_memory_allocated_gb"],
        "torch_reserved_gb": status["gpu_memory_reserved_gb"],
        "nvidia_smi_while_loaded": while_loaded,
        "speech_status": speech.status_code,
        "speech_seconds": speech.headers.get("x-generation-seconds"),
        "unload_report": report,
        "nvidia_smi_after_unload": after,
        "service_processes_holding_gpu_after_unload": held,
        "zero_after_unload": not held,
    }


@contextmanager
def serve(config: Path, workdir: Path, warm_spares: str, exit_codes: list[int]) -> Iterator[tuple[httpx.Client, int]]:
    """`python -m service` with the models file and these warm spares, once it answers /readyz; then SIGTERM (its
    exit code goes into `exit_codes`)."""
    port = free_port()
    log = (workdir / f"server-{port}.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "--port",
            str(port),
            "--models-config",
            str(config),
            "--log-format",
            "json",
            "--data-dir",
            str(workdir / "data"),
            "--warm-spares",
            warm_spares,
        ],
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"server did not start; log in {log.name}")
                time.sleep(0.2)
            yield client, server.pid
    finally:
        server.send_signal(signal.SIGTERM)
        exit_codes.append(server.wait(timeout=60))
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    parser.add_argument("--layers", type=int, default=24, help="text-encoder layers (24 x 1024 wide: ~330M params)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    parameters = build_model(workdir / "models" / "gpu-check-vits", args.layers, args.hidden)
    path = str(workdir / "models" / "gpu-check-vits")
    entries = [
        (
            "gpu-check-16bit",
            {"path": path, "device": args.device, "dtype": "float16" if args.device != "cpu" else "float32"},
        )
    ]
    if args.device != "cpu":
        entries.append(
            ("gpu-check-4bit", {"path": path, "device": args.device, "dtype": "float16", "quantization": "4bit"})
        )
    config = workdir / "models.toml"
    config.write_text(
        "".join(
            f'[[models]]\nid = "{name}"\nengine = "transformers"\n[models.options]\n'
            + "".join(f'{key} = "{value}"\n' for key, value in options.items())
            + "\n"
            for name, options in entries
        )
    )

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "parameters": parameters,
        "device": args.device,
        "before": nvidia_smi(),
        "models": [],
        "server_exit_codes": [],
    }
    first = entries[0][0]
    with serve(config, workdir, "transformers=1", results["server_exit_codes"]) as (client, server_pid):
        results["spare"] = check_spare(client, first)
        results["cold_with_spare"] = cold_start(client, first, with_spare=True)
        for name, _ in entries:
            results["models"].append(check_model(client, name, server_pid))
    with serve(config, workdir, "transformers=0", results["server_exit_codes"]) as (client, _):
        results["cold_without_spare"] = cold_start(client, first, with_spare=False)
    results["after_shutdown"] = nvidia_smi()
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    print(f"\nparameters: {parameters / 1e6:.0f} M")
    for model in results["models"]:
        gpu = model.get("worker_gpu_bytes_while_loaded")
        print(
            f"{model['model']}: load {model.get('load_seconds')} s, GPU while loaded "
            f"{None if gpu is None else round(gpu / 2**20)} MiB, service processes holding GPU after unload: "
            f"{model.get('service_processes_holding_gpu_after_unload')}"
        )
    spare = results["spare"]
    print(f"warm spare {spare['status']['pids']}: GPU {spare['nvidia_smi_mib']} MiB, zero: {spare['zero_gpu']}")
    for side in ("cold_with_spare", "cold_without_spare"):
        cold = results[side]
        took = cold["took_the_spare"]
        print(f"{side}: {cold['request_seconds']} s (load {cold['load_seconds']} s, took a spare: {took})")
    zero = all(model.get("zero_after_unload") for model in results["models"])
    return 0 if zero and (spare["zero_gpu"] or args.device == "cpu") else 1


if __name__ == "__main__":
    sys.exit(main())

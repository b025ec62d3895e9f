"""Measuring a worker's memory from outside it: resident set from /proc, GPU memory from nvidia-smi."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio

NVIDIA_SMI_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class MemoryUsage:
    """One worker's memory; None where the figure cannot be measured on this machine."""

    rss_bytes: int | None
    gpu_bytes: int | None


def process_rss_bytes(pid: int) -> int | None:
    """Resident set size of a live process, or None when it is gone or /proc is unavailable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def process_exists(pid: int) -> bool:
    """Whether the pid still names a process that has not been reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def gpu_bytes_by_pid() -> dict[int, int] | None:
    """GPU memory held by each process as nvidia-smi reports it; None on a machine without NVIDIA tools."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        with anyio.fail_after(NVIDIA_SMI_TIMEOUT_SECONDS):
            result = await anyio.run_process(
                [executable, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"], check=False
            )
    except (OSError, TimeoutError):
        return None
    if result.returncode != 0:
        return None
    usage: dict[int, int] = {}
    for line in result.stdout.decode().splitlines():
        pid, _, mebibytes = line.partition(",")
        if pid.strip().isdigit() and mebibytes.strip().isdigit():
            usage[int(pid)] = usage.get(int(pid), 0) + int(mebibytes) * 1024 * 1024
    return usage


async def measure(pid: int) -> MemoryUsage:
    gpu = await gpu_bytes_by_pid()
    return MemoryUsage(rss_bytes=process_rss_bytes(pid), gpu_bytes=None if gpu is None else gpu.get(pid, 0))

"""Ports and processes for the tests, the benchmarks and the scripts: a free loopback port, and what /proc says of
a process (its children, command line, open file descriptors and resident memory, now and at its peak). Whether a
pid is still alive, and its resident set, come from service/lifecycle/memory.py (`process_exists`,
`process_rss_bytes`).

bench/ and scripts/ run as plain scripts (`python scripts/soak.py`): they put the project root on sys.path first."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def child_pids(pid: int) -> list[int]:
    """Direct children of a process's main thread, from /proc; empty when it is gone."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in children.read_text().split()]
    except OSError:
        return []


def thread_children(pid: int) -> list[int]:
    """Direct children of every thread of a process (zombies included), from /proc/<pid>/task/*/children, in the
    order /proc lists them; a child started by another thread than the main one is only found here."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def cmdline(pid: int) -> str:
    """A process's command line, its arguments joined by spaces; empty when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def fd_count(pid: int) -> int:
    """How many file descriptors a live process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the peak of resident memory) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def reset_peak(pid: int) -> None:
    """Set VmHWM back to the resident size now, so the next peak is measured from here."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")

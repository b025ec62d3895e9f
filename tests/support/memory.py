"""A process's resident memory from /proc, now and at its peak."""

from __future__ import annotations

from pathlib import Path


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the peak of resident memory) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def reset_peak(pid: int) -> None:
    """Set VmHWM back to the resident size now, so the next peak is measured from here."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")

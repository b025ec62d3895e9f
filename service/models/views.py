"""JSON shapes of model state, shared by the API and the pages."""

from __future__ import annotations

from typing import Any

from service.lazy_loader import SlotSnapshot, UnloadReport
from service.models.catalog import ModelSpec

_GIB = 1024**3


def _gigabytes(value: int) -> float:
    return round(value / _GIB, 3)


def model_status(
    snapshot: SlotSnapshot,
    spec: ModelSpec,
    gpu_allocated: int,
    gpu_reserved: int,
    engine_probe: str | None = None,
    unavailable: str | None = None,
) -> dict[str, Any]:
    """One entry of /api/v1/models/status: the seed's fields first, then this service's."""
    memory = snapshot.memory
    return {
        "loaded": snapshot.loaded,
        "auto_unload": snapshot.policy.auto_unload,
        "idle_timeout": snapshot.keep_alive if snapshot.keep_alive is not None else snapshot.policy.idle_timeout,
        "idle_time": None if snapshot.idle_seconds is None else round(snapshot.idle_seconds, 3),
        "time_until_unload": None if snapshot.seconds_until_unload is None else round(snapshot.seconds_until_unload, 3),
        "gpu_memory_allocated_gb": _gigabytes(gpu_allocated) if snapshot.loaded else 0.0,
        "gpu_memory_reserved_gb": _gigabytes(gpu_reserved) if snapshot.loaded else 0.0,
        "state": snapshot.state.value,
        "engine": spec.engine,
        "device": spec.capabilities.device,
        "pid": snapshot.pid,
        "rss_bytes": memory.rss_bytes if memory else None,
        "gpu_bytes": memory.gpu_bytes if memory else None,
        "in_flight": snapshot.in_flight,
        "queued": snapshot.queued,
        "loads_total": snapshot.loads_total,
        "last_load_seconds": None if snapshot.last_load_seconds is None else round(snapshot.last_load_seconds, 3),
        "last_unload_reason": snapshot.last_unload_reason.value if snapshot.last_unload_reason else None,
        "last_error": snapshot.last_error,
        "pinned": snapshot.policy.pinned,
        "consecutive_failures": snapshot.consecutive_failures,
        "retry_in": None if snapshot.retry_in is None else round(snapshot.retry_in, 3),
        "preload": snapshot.policy.preload,
        "default_idle_timeout": snapshot.policy.idle_timeout,
        "keep_alive": snapshot.keep_alive,
        "unloads": dict(snapshot.unloads_by_reason),
        "sample_rate": spec.capabilities.sample_rate,
        "voices": list(spec.capabilities.voices),
        "default_voice": spec.capabilities.default_voice,
        "engine_probe": engine_probe,
        "unavailable": unavailable,
    }


def unload_report(report: UnloadReport) -> dict[str, Any]:
    return {
        "model": report.model,
        "previous_state": report.previous_state.value,
        "state": report.state.value,
        "unloaded": report.worker_exited,
        "reason": report.reason.value if report.reason else None,
        "requests_drained": report.requests_drained,
        "pid": report.pid,
        "worker_exited": report.worker_exited,
        "exit_code": report.exit_code,
        "memory_freed": {"rss_bytes": report.freed_rss_bytes, "gpu_bytes": report.freed_gpu_bytes},
        "seconds": report.seconds,
    }

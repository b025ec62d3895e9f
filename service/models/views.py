"""JSON shapes of model state, shared by the API and the pages."""

from __future__ import annotations

import msgspec

from service.lazy_loader import SlotSnapshot, SlotState, UnloadReason, UnloadReport
from service.models.catalog import ModelSpec

_GIB = 1024**3


def _gigabytes(value: int) -> float:
    return round(value / _GIB, 3)


class ModelStatus(msgspec.Struct):
    """One entry of /api/v1/models/status: the seed's fields first, then this service's (docs/api.md has each)."""

    loaded: bool
    auto_unload: bool
    idle_timeout: float
    idle_time: float | None
    time_until_unload: float | None
    gpu_memory_allocated_gb: float
    gpu_memory_reserved_gb: float
    state: SlotState
    engine: str
    device: str
    pid: int | None
    rss_bytes: int | None
    gpu_bytes: int | None
    in_flight: int
    queued: int
    loads_total: int
    last_load_seconds: float | None
    last_unload_reason: UnloadReason | None
    last_error: str | None
    pinned: bool
    consecutive_failures: int
    retry_in: float | None
    preload: bool
    default_idle_timeout: float
    keep_alive: float | None
    unloads: dict[str, int]
    sample_rate: int
    voices: list[str]
    default_voice: str
    engine_probe: str | None
    unavailable: str | None


class FreedMemory(msgspec.Struct):
    """The worker's memory measured just before it ended."""

    rss_bytes: int | None
    gpu_bytes: int | None


class UnloadResult(msgspec.Struct):
    """What POST /api/v1/models/{id}/unload did."""

    model: str
    previous_state: SlotState
    state: SlotState
    unloaded: bool
    reason: UnloadReason | None
    requests_drained: int
    pid: int | None
    worker_exited: bool
    exit_code: int | None
    memory_freed: FreedMemory
    seconds: float


def model_status(
    snapshot: SlotSnapshot,
    spec: ModelSpec,
    gpu_allocated: int,
    gpu_reserved: int,
    engine_probe: str | None = None,
    unavailable: str | None = None,
) -> ModelStatus:
    memory = snapshot.memory
    return ModelStatus(
        loaded=snapshot.loaded,
        auto_unload=snapshot.policy.auto_unload,
        idle_timeout=snapshot.keep_alive if snapshot.keep_alive is not None else snapshot.policy.idle_timeout,
        idle_time=None if snapshot.idle_seconds is None else round(snapshot.idle_seconds, 3),
        time_until_unload=None if snapshot.seconds_until_unload is None else round(snapshot.seconds_until_unload, 3),
        gpu_memory_allocated_gb=_gigabytes(gpu_allocated) if snapshot.loaded else 0.0,
        gpu_memory_reserved_gb=_gigabytes(gpu_reserved) if snapshot.loaded else 0.0,
        state=snapshot.state,
        engine=spec.engine,
        device=spec.capabilities.device,
        pid=snapshot.pid,
        rss_bytes=memory.rss_bytes if memory else None,
        gpu_bytes=memory.gpu_bytes if memory else None,
        in_flight=snapshot.in_flight,
        queued=snapshot.queued,
        loads_total=snapshot.loads_total,
        last_load_seconds=None if snapshot.last_load_seconds is None else round(snapshot.last_load_seconds, 3),
        last_unload_reason=snapshot.last_unload_reason,
        last_error=snapshot.last_error,
        pinned=snapshot.policy.pinned,
        consecutive_failures=snapshot.consecutive_failures,
        retry_in=None if snapshot.retry_in is None else round(snapshot.retry_in, 3),
        preload=snapshot.policy.preload,
        default_idle_timeout=snapshot.policy.idle_timeout,
        keep_alive=snapshot.keep_alive,
        unloads=dict(snapshot.unloads_by_reason),
        sample_rate=spec.capabilities.sample_rate,
        voices=list(spec.capabilities.voices),
        default_voice=spec.capabilities.default_voice,
        engine_probe=engine_probe,
        unavailable=unavailable,
    )


def unload_result(report: UnloadReport) -> UnloadResult:
    return UnloadResult(
        model=report.model,
        previous_state=report.previous_state,
        state=report.state,
        unloaded=report.worker_exited,
        reason=report.reason,
        requests_drained=report.requests_drained,
        pid=report.pid,
        worker_exited=report.worker_exited,
        exit_code=report.exit_code,
        memory_freed=FreedMemory(rss_bytes=report.freed_rss_bytes, gpu_bytes=report.freed_gpu_bytes),
        seconds=report.seconds,
    )

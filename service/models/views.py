"""JSON shapes of model state, shared by the API and the pages."""

from __future__ import annotations

import time

import msgspec

from service.lazy_loader import ReplicaReport, ReplicaSnapshot, SlotSnapshot, SlotState, UnloadReason, UnloadReport
from service.lifecycle.spares import SpareFigures
from service.models.catalog import ModelSpec

_GIB = 1024**3


def _gigabytes(value: int) -> float:
    return round(value / _GIB, 3)


class WarmSpares(msgspec.Struct):
    """The warm spares that can serve this model (shared by the models with its engine and environment)."""

    configured: int
    ready: int
    starting: bool
    pids: list[int]
    rss_bytes: int
    gpu_bytes: int | None
    losses: int
    last_error: str | None
    next_start_in: float | None


class ReplicaStatus(msgspec.Struct):
    """One worker of a model: where it runs, what it serves, since when it is idle (wall clock), what it holds."""

    index: int
    state: SlotState
    pid: int | None
    node: str
    device: str | None
    threads: int | None
    in_flight: int
    requests: int
    idle_since: float | None
    time_until_unload: float | None
    last_load_seconds: float | None
    rss_bytes: int | None
    gpu_bytes: int | None


class ModelStatus(msgspec.Struct):
    """One entry of /api/v1/models/status: the seed's fields first, then this service's (docs/api.md has each). The
    seed's single-worker fields are aggregates over the replicas: pid the first one's, memory and requests summed,
    idle_time and time_until_unload those of the model as a whole."""

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
    replicas_min: int
    replicas_max: int
    replicas: list[ReplicaStatus]
    load_stage: str | None = None
    load_stage_seconds: float | None = None
    warm_spares: WarmSpares | None = None


class FreedMemory(msgspec.Struct):
    """The worker's memory measured just before it ended."""

    rss_bytes: int | None
    gpu_bytes: int | None


class ReplicaUnloaded(msgspec.Struct):
    """One replica an unload ended."""

    index: int
    pid: int | None
    node: str
    device: str | None
    exit_code: int | None
    memory_freed: FreedMemory


class UnloadResult(msgspec.Struct):
    """What POST /api/v1/models/{id}/unload did: the first replica's pid and exit code, the memory all freed, and
    each replica."""

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
    replicas: list[ReplicaUnloaded]


def model_status(
    snapshot: SlotSnapshot,
    spec: ModelSpec,
    gpu_allocated: int,
    gpu_reserved: int,
    engine_probe: str | None = None,
    unavailable: str | None = None,
    spares: SpareFigures | None = None,
) -> ModelStatus:
    memory = snapshot.memory
    stage = snapshot.load_stage
    return ModelStatus(
        loaded=snapshot.loaded,
        auto_unload=snapshot.policy.auto_unload,
        idle_timeout=snapshot.keep_alive if snapshot.keep_alive is not None else snapshot.policy.idle_timeout,
        idle_time=_rounded(snapshot.idle_seconds),
        time_until_unload=_rounded(snapshot.seconds_until_unload),
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
        last_load_seconds=_rounded(snapshot.last_load_seconds),
        last_unload_reason=snapshot.last_unload_reason,
        last_error=snapshot.last_error,
        pinned=snapshot.policy.pinned,
        consecutive_failures=snapshot.consecutive_failures,
        retry_in=_rounded(snapshot.retry_in),
        preload=snapshot.policy.preload,
        default_idle_timeout=snapshot.policy.idle_timeout,
        keep_alive=snapshot.keep_alive,
        unloads=dict(snapshot.unloads_by_reason),
        sample_rate=spec.capabilities.sample_rate,
        voices=list(spec.capabilities.voices),
        default_voice=spec.capabilities.default_voice,
        engine_probe=engine_probe,
        unavailable=unavailable,
        load_stage=None if stage is None else stage[0],
        load_stage_seconds=None if stage is None else round(max(0.0, time.time() - stage[1]), 3),
        warm_spares=None if spares is None else _warm_spares(spares),
        replicas_min=snapshot.policy.replicas_min,
        replicas_max=snapshot.policy.replicas_max,
        replicas=[replica_status(replica) for replica in snapshot.replicas],
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def replica_status(replica: ReplicaSnapshot) -> ReplicaStatus:
    memory = replica.memory
    return ReplicaStatus(
        index=replica.index,
        state=replica.state,
        pid=replica.pid,
        node=replica.node,
        device=replica.device,
        threads=replica.threads,
        in_flight=replica.in_flight,
        requests=replica.served,
        idle_since=_rounded(replica.idle_since),
        time_until_unload=_rounded(replica.seconds_until_unload),
        last_load_seconds=_rounded(replica.load_seconds),
        rss_bytes=memory.rss_bytes if memory else None,
        gpu_bytes=memory.gpu_bytes if memory else None,
    )


def replica_unloaded(report: ReplicaReport) -> ReplicaUnloaded:
    return ReplicaUnloaded(
        index=report.index,
        pid=report.pid,
        node=report.node,
        device=report.device,
        exit_code=report.exit_code,
        memory_freed=FreedMemory(rss_bytes=report.freed_rss_bytes, gpu_bytes=report.freed_gpu_bytes),
    )


def _warm_spares(figures: SpareFigures) -> WarmSpares:
    return WarmSpares(
        configured=figures.configured,
        ready=figures.ready,
        starting=figures.starting,
        pids=list(figures.pids),
        rss_bytes=figures.rss_bytes,
        gpu_bytes=figures.gpu_bytes,
        losses=figures.losses,
        last_error=figures.last_error,
        next_start_in=_rounded(figures.next_start_in),
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
        replicas=[replica_unloaded(replica) for replica in report.replicas],
    )

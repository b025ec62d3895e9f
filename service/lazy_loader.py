"""Model slots: lazy, single-flight loading into worker processes, replicas, leases, idle reaping, eviction and
unloads.

Knows nothing of HTTP or of any ML framework: a model's slot holds up to `replicas_max` replicas, each a `Worker`
that a launcher started for the replica's `Placement`, and every request holds a `Lease` on one replica for its
whole duration. State machine per replica:

    loading -> loaded -> unloading -> (gone)        (loading -> gone on a failure, a timeout or an unload)

and the model's state is their aggregate (loaded while any replica is, else loading, unloading, failed or unloaded).
A load that runs past its timeout, or is unloaded while it runs, is called off: its worker is ended and the model
goes `failed` (timeout) or `unloaded` (unload) unless another replica is up. What fits, what to evict, when an idle
replica unloads and when one more loads are decided by the pure functions of `service.lifecycle.policy`, from a
`SlotView` of each slot.
"""

from __future__ import annotations

import platform
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Generic, Protocol, Self, TypeVar, runtime_checkable

import anyio
import structlog
from anyio.abc import TaskGroup

from service.lifecycle.memory import MemoryUsage
from service.lifecycle.policy import (
    Capacity,
    Deadline,
    ModelPolicy,
    Placement,
    SlotState,
    SlotView,
    UnloadReason,
    eviction_candidate,
    has_room,
    idle_deadline,
    model_deadline,
    placement,
    replica_deadlines,
    wants_replica,
)

__all__ = [
    "CapacityExhausted",
    "EventRecord",
    "LazyLoader",
    "Lease",
    "LifecycleEvent",
    "LoadCalledOff",
    "LoadFailed",
    "ModelPolicy",
    "ModelUnavailable",
    "Placement",
    "QueueFull",
    "ReplicaReport",
    "ReplicaSnapshot",
    "ShuttingDown",
    "SlotSnapshot",
    "SlotState",
    "UnknownModel",
    "UnloadReason",
    "UnloadReport",
    "Worker",
    "WorkerLauncher",
]

log = structlog.get_logger("service.lazy_loader")

EVENT_HISTORY = 200
REAPER_RETRY_SECONDS = 1.0
# Retry-After for a load that failed while the next request may try again at once
LOAD_RETRY_SECONDS = 1.0
# where a worker runs when its launcher does not say (a launcher's worker may carry a `node` of its own)
LOCAL_NODE = platform.node() or "local"


class LifecycleEvent(StrEnum):
    """What happened to a model slot; the value is the event's name in the logs."""

    POLICY_CHANGED = "model_policy_changed"
    LOAD_STARTED = "model_load_started"
    LOADED = "model_loaded"
    LOAD_FAILED = "model_load_failed"
    LOAD_REFUSED = "model_load_refused"
    WORKER_EXITED = "worker_exited_unexpectedly"
    UNLOADED = "model_unloaded"
    UNLOAD_FAILED = "model_unload_failed"

    @property
    def is_failure(self) -> bool:
        return self in _FAILURES


_FAILURES = frozenset(
    {
        LifecycleEvent.LOAD_FAILED,
        LifecycleEvent.LOAD_REFUSED,
        LifecycleEvent.WORKER_EXITED,
        LifecycleEvent.UNLOAD_FAILED,
    }
)


@dataclass(frozen=True)
class EventRecord:
    """One lifecycle event: when it happened (wall clock), what, to which model, and its figures (`replica`: the
    replica's index, for events of one replica)."""

    time: float
    event: LifecycleEvent
    model: str
    fields: Mapping[str, Any]


class Worker(Protocol):
    """A started engine process as the loader sees it: loading until `ready` returns, then loaded."""

    @property
    def pid(self) -> int: ...

    async def ready(self) -> None:
        """Wait until the engine is loaded; raise when it cannot load. Cancelled, it ends the process first."""
        ...

    async def wait(self) -> int:
        """Return the exit code once the process has ended, however it ended."""
        ...

    async def stop(self) -> int:
        """End the process and return its exit code; must not be cancellable half-way."""
        ...

    async def memory(self) -> MemoryUsage: ...

    @property
    def exit_reason(self) -> str | None:
        """Why the worker was ended from the server's side (e.g. a watchdog), if it was."""
        ...


@runtime_checkable
class ReportsLoadStage(Protocol):
    """A worker that reports its load's stage: (name, wall-clock time it began), None before the first."""

    @property
    def load_stage(self) -> tuple[str, float] | None: ...


@runtime_checkable
class ReportsNode(Protocol):
    """A worker whose launcher placed it on a machine of its choosing (another backend than local processes)."""

    @property
    def node(self) -> str: ...


W = TypeVar("W", bound=Worker)
# starts one replica of a model where its placement says, its background tasks in the loader's task group
WorkerLauncher = Callable[[str, Placement, TaskGroup], Awaitable[W]]


def node_of(worker: Worker) -> str:
    """The machine a worker runs on: the one it reports, else this one."""
    return worker.node if isinstance(worker, ReportsNode) else LOCAL_NODE


class UnknownModel(LookupError):
    def __init__(self, model_id: str, known: Iterable[str]) -> None:
        self.model_id = model_id
        self.known = sorted(known)
        super().__init__(f"unknown model {model_id!r}; known models: {', '.join(self.known)}")


class ModelUnavailable(RuntimeError):
    """The model cannot serve now; `retry_after` says when to try again, if known."""

    retry_after: float | None = None


class LoadFailed(ModelUnavailable):
    retry_after: float

    def __init__(self, model_id: str, reason: str, retry_after: float, *, backing_off: bool = False) -> None:
        suffix = f" (failed repeatedly: next try in {retry_after:.0f} s)" if backing_off else ""
        super().__init__(f"model {model_id!r} failed to load: {reason}{suffix}")
        self.reason = reason
        self.retry_after = retry_after


class LoadCalledOff(ModelUnavailable):
    """The model was unloaded by hand while it loaded."""

    def __init__(self, model_id: str) -> None:
        super().__init__(f"the load of {model_id!r} was called off: the model was unloaded while it loaded")
        self.retry_after = LOAD_RETRY_SECONDS


class QueueFull(ModelUnavailable):
    """Too many requests are already waiting for this model."""

    def __init__(self, model_id: str, queued: int, retry_after: float) -> None:
        super().__init__(f"model {model_id!r} has {queued} requests waiting, the most it queues; try again later")
        self.retry_after = retry_after


class CapacityExhausted(ModelUnavailable):
    def __init__(self, model_id: str, waited: float) -> None:
        super().__init__(f"no room to load {model_id!r}: every loaded model is busy or pinned (waited {waited:.1f} s)")
        self.retry_after = max(1.0, waited)


class ShuttingDown(ModelUnavailable):
    def __init__(self) -> None:
        super().__init__("the server is shutting down")
        self.retry_after = 5.0


@dataclass(frozen=True)
class ReplicaReport:
    """One replica ended by an unload: its worker, where it ran, and the memory it held just before."""

    index: int
    pid: int | None
    node: str
    device: str | None
    exit_code: int | None
    freed_rss_bytes: int | None
    freed_gpu_bytes: int | None


def _total(values: Iterable[int | None]) -> int | None:
    """The sum of the values known; None when none is."""
    known = [value for value in values if value is not None]
    return sum(known) if known else None


@dataclass(frozen=True)
class UnloadReport:
    """What an unload did: the model's figures as one worker's (the first replica's pid and exit code, the memory
    of all), and each replica it ended."""

    model: str
    previous_state: SlotState
    state: SlotState
    reason: UnloadReason | None
    requests_drained: int
    seconds: float
    replicas: tuple[ReplicaReport, ...] = ()

    @property
    def worker_exited(self) -> bool:
        return bool(self.replicas)

    @property
    def pid(self) -> int | None:
        return self.replicas[0].pid if self.replicas else None

    @property
    def exit_code(self) -> int | None:
        return self.replicas[0].exit_code if self.replicas else None

    @property
    def freed_rss_bytes(self) -> int | None:
        return _total(replica.freed_rss_bytes for replica in self.replicas)

    @property
    def freed_gpu_bytes(self) -> int | None:
        return _total(replica.freed_gpu_bytes for replica in self.replicas)


@dataclass(frozen=True)
class ReplicaSnapshot:
    index: int
    state: SlotState
    pid: int | None
    node: str
    device: str | None
    threads: int | None
    in_flight: int
    served: int
    idle_since: float | None  # wall clock, while loaded and serving nothing
    seconds_until_unload: float | None
    load_seconds: float | None
    memory: MemoryUsage | None


@dataclass(frozen=True)
class SlotSnapshot:
    """A model's state; the single-worker fields are aggregates over its replicas (pid: the first replica's;
    memory: the sum; seconds_until_unload: until the last replica goes), `replicas` has each one."""

    model: str
    state: SlotState
    policy: ModelPolicy
    keep_alive: float | None
    pid: int | None
    in_flight: int
    queued: int
    loads_total: int
    last_load_seconds: float | None
    last_unload_reason: UnloadReason | None
    last_error: str | None
    idle_seconds: float | None
    seconds_until_unload: float | None
    unloads_by_reason: Mapping[str, int]
    memory: MemoryUsage | None
    consecutive_failures: int = 0
    retry_in: float | None = None
    load_started_at: float | None = None  # wall clock, while loading
    load_stage: tuple[str, float] | None = None  # the worker's stage and when it began (wall clock), while loading
    replicas: tuple[ReplicaSnapshot, ...] = ()

    @property
    def loaded(self) -> bool:
        return self.state is SlotState.LOADED


@dataclass
class _LoadAttempt(Generic[W]):
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    error: ModelUnavailable | None = None
    seconds: float = 0.0
    worker: W | None = None
    called_off: UnloadReason | None = None


@dataclass
class _Replica(Generic[W]):
    """One worker of a model, from the start of its load until it has ended."""

    placement: Placement
    scale_out: bool  # loaded beside another replica: it neither evicts nor waits for room
    attempt: _LoadAttempt[W] = field(default_factory=_LoadAttempt)
    state: SlotState = SlotState.LOADING
    worker: W | None = None
    launching: bool = False
    busy: bool = False
    served: int = 0  # requests handed to it
    idle_since: float = 0.0
    loaded_at: float = 0.0
    load_seconds: float | None = None
    load_started_at: float | None = None
    memory: MemoryUsage | None = None

    @property
    def index(self) -> int:
        return self.placement.index

    @property
    def process(self) -> W | None:
        """The worker loaded, or the one loading."""
        return self.attempt.worker if self.worker is None else self.worker

    def memory_bytes(self) -> int:
        if self.memory is None:
            return 0
        return (self.memory.rss_bytes or 0) + (self.memory.gpu_bytes or 0)


@dataclass
class _Waiter(Generic[W]):
    """A request (or a manual load) waiting: for a replica to be handed to it, or for the failure that ends the
    wait. `admitted`: it came while the model served and no drain had begun, so a drain lets it run first."""

    arrived: float
    replica: _Replica[W] | None = None
    error: ModelUnavailable | None = None
    admitted: bool = False


@dataclass
class _Slot(Generic[W]):
    model: str
    policy: ModelPolicy
    replicas: list[_Replica[W]] = field(default_factory=list)
    queue: deque[_Waiter[W]] = field(default_factory=deque)
    loads: list[_Waiter[W]] = field(default_factory=list)  # manual loads waiting: they take no replica
    failed: bool = False
    drains: int = 0
    running: int = 0
    keep_alive: float | None = None
    last_used: float = 0.0
    loads_total: int = 0
    last_load_seconds: float | None = None
    last_unload_reason: UnloadReason | None = None
    last_error: str | None = None
    replica_bytes: int = 0  # the last measured replica's RSS + GPU memory
    failures: int = 0
    retry_not_before: float = 0.0
    hold_seconds: float = 0.0
    unloads: Counter[str] = field(default_factory=Counter)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def in_state(self, state: SlotState) -> list[_Replica[W]]:
        return sorted((replica for replica in self.replicas if replica.state is state), key=lambda r: r.index)

    @property
    def state(self) -> SlotState:
        for state in (SlotState.LOADED, SlotState.LOADING, SlotState.UNLOADING):
            if any(replica.state is state for replica in self.replicas):
                return state
        return SlotState.FAILED if self.failed else SlotState.UNLOADED

    @property
    def serving(self) -> bool:
        """Whether a replica is loaded or loading (what a waiter may still get)."""
        return any(replica.state in (SlotState.LOADED, SlotState.LOADING) for replica in self.replicas)

    @property
    def admitted(self) -> int:
        """Requests a drain lets finish first: those generating and those admitted while they wait."""
        return self.running + sum(1 for waiter in self.queue if waiter.admitted)

    @property
    def idle(self) -> bool:
        return not self.queue and self.running == 0 and self.drains == 0

    def free(self) -> list[_Replica[W]]:
        """Loaded replicas serving no request, by index."""
        return [replica for replica in self.in_state(SlotState.LOADED) if not replica.busy]

    def view(self) -> SlotView:
        occupied = [
            replica
            for replica in self.replicas
            if replica.state in (SlotState.LOADED, SlotState.UNLOADING) or replica.launching
        ]
        return SlotView(
            model=self.model,
            state=self.state,
            policy=self.policy,
            keep_alive=self.keep_alive,
            replicas=len(self.replicas),
            occupied=len(occupied),
            loaded=len(self.in_state(SlotState.LOADED)),
            loading=len(self.in_state(SlotState.LOADING)),
            free_since=tuple(replica.idle_since for replica in self.free()),
            waiting=len(self.queue),
            idle=self.idle,
            draining=self.drains > 0,
            last_used=self.last_used,
            memory_bytes=sum(replica.memory_bytes() or self.replica_bytes for replica in occupied),
            replica_bytes=self.replica_bytes,
        )


class Lease(Generic[W]):
    """A request's hold on one loaded replica: while any lease is held, nothing unloads that replica."""

    def __init__(
        self,
        loader: LazyLoader[W],
        slot: _Slot[W],
        replica: _Replica[W],
        load_seconds: float | None,
        queued_seconds: float,
        started: float,
    ) -> None:
        assert replica.worker is not None
        self._loader = loader
        self._slot = slot
        self._replica = replica
        self.worker: W = replica.worker
        self.model = slot.model
        self.replica = replica.index
        self.load_seconds = load_seconds
        self.queued_seconds = queued_seconds
        self.started = started
        self._released = False

    @property
    def cold(self) -> bool:
        """Whether this request had to wait for its replica to load."""
        return self.load_seconds is not None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._loader._release(self._slot, self._replica, anyio.current_time() - self.started)


class LazyLoader(Generic[W]):
    def __init__(
        self,
        policies: Mapping[str, ModelPolicy],
        launcher: WorkerLauncher[W],
        *,
        max_loaded: int = 3,
        memory_budget_bytes: int = 0,
        capacity_wait: float = 30.0,
        max_queue: int = 512,
        load_backoff: float = 1.0,
        max_load_backoff: float = 60.0,
        load_timeout: float = 300.0,
    ) -> None:
        self._slots: dict[str, _Slot[W]] = {model: _Slot(model, policy) for model, policy in policies.items()}
        self._launcher = launcher
        self._capacity = Capacity(max_loaded, memory_budget_bytes)
        self._capacity_wait = capacity_wait
        self._max_queue = max_queue
        self._load_backoff = load_backoff
        self._max_load_backoff = max_load_backoff
        self._load_timeout = load_timeout
        self._task_group: TaskGroup | None = None
        self._grace: float | None = None
        self._changed = anyio.Event()
        self._closing = False
        self._shut_down = anyio.Event()
        self._shutdown_reports: list[UnloadReport] = []
        self.events: deque[EventRecord] = deque(maxlen=EVENT_HISTORY)
        self.listeners: list[Callable[[EventRecord], None]] = []

    # ---- lifetime

    @asynccontextmanager
    async def running(self, grace: float) -> AsyncIterator[Self]:
        """Run the loader in a task group of its own: one reaper per model, the preloads the policies ask for
        (`preload`, or `replicas_min` above 0), loads, watchers and whatever the launcher starts. On exit it shuts
        down (see `shutdown`), then closes the group."""
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            self._grace = grace
            for slot in self._slots.values():
                task_group.start_soon(self._reap, slot, name=f"reaper:{slot.model}")
                if slot.policy.preload or slot.policy.replicas_min:
                    self._start_load(slot)
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self.shutdown()
                task_group.cancel_scope.cancel()

    async def shutdown(self) -> list[UnloadReport]:
        """Refuse new requests, call off loads under way (their waiters get ShuttingDown), let the requests admitted
        to a loaded model finish within the grace `running` was given, then end every replica: requests still
        waiting for their turn get ShuttingDown, those generating lose their worker. Leaving `running` calls it; call
        it to begin sooner. A second call waits for the first one's end."""
        assert self._grace is not None, "LazyLoader.running() was not entered"
        grace = self._grace
        if self._closing:
            await self._shut_down.wait()
            return list(self._shutdown_reports)
        self._closing = True
        for slot in self._slots.values():
            self._notify(slot)
        started = anyio.current_time()

        async def close(slot: _Slot[W]) -> None:
            with anyio.move_on_after(grace):
                self._shutdown_reports.append(await self._unload(slot, UnloadReason.SHUTDOWN))
                return
            self._shutdown_reports.append(await self._end_every_replica(slot, UnloadReason.SHUTDOWN, started))

        try:
            async with anyio.create_task_group() as group:
                for slot in self._slots.values():
                    group.start_soon(close, slot)
        finally:
            self._shut_down.set()
        return list(self._shutdown_reports)

    @property
    def closing(self) -> bool:
        return self._closing

    # ---- requests

    def models(self) -> list[str]:
        return list(self._slots)

    def _slot(self, model: str) -> _Slot[W]:
        try:
            return self._slots[model]
        except KeyError:
            raise UnknownModel(model, self._slots) from None

    async def acquire(self, model: str, keep_alive: float | None = None) -> Lease[W]:
        """Wait until a replica of the model is loaded and free (loading one if the scale-out rule says so, see
        `policy.wants_replica`) and hold it until release. Free replicas are handed out in arrival order, the
        lowest-numbered free replica first, so a light load stays on few replicas and the others can idle out."""
        slot = self._slot(model)
        if self._closing:
            raise ShuttingDown
        queued = len(slot.queue)
        if queued >= self._max_queue:
            loaded = max(1, len(slot.in_state(SlotState.LOADED)))
            raise QueueFull(model, queued, max(1.0, slot.hold_seconds * queued / loaded))
        waiter = _Waiter[W](anyio.current_time())
        slot.queue.append(waiter)
        self._notify(slot)
        try:
            while waiter.replica is None:
                changed = slot.changed
                if waiter.error is not None:
                    raise waiter.error
                if self._closing and not waiter.admitted:
                    raise ShuttingDown
                self._scale(slot)
                if waiter.replica is None:
                    await changed.wait()
        except BaseException:
            self._withdraw(slot, waiter)
            raise
        replica = waiter.replica
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        slot.last_used = time.time()
        self._notify(slot)
        cold = replica.loaded_at >= waiter.arrived
        now = anyio.current_time()
        return Lease(self, slot, replica, replica.load_seconds if cold else None, now - waiter.arrived, now)

    def _dispatch(self, slot: _Slot[W]) -> None:
        """Hand free replicas to admitted waiters, first come first served. A drain admits no newcomer; a model
        with no replica loaded admits none (its waiters wait for a load again)."""
        loaded = slot.in_state(SlotState.LOADED)
        for waiter in slot.queue:
            waiter.admitted = bool(loaded) and (waiter.admitted or not slot.drains)
        free = [replica for replica in loaded if not replica.busy]
        for waiter in [waiter for waiter in slot.queue if waiter.admitted][: len(free)]:
            replica = free.pop(0)
            slot.queue.remove(waiter)
            waiter.replica = replica
            replica.busy = True
            replica.served += 1
            slot.running += 1

    def _withdraw(self, slot: _Slot[W], waiter: _Waiter[W]) -> None:
        """A waiter that gave up (cancelled, timed out, refused): out of the queue, its replica (if one was handed
        to it meanwhile) free again."""
        if waiter in slot.queue:
            slot.queue.remove(waiter)
        elif waiter.replica is not None:
            self._free(slot, waiter.replica)
        self._notify(slot)

    def _release(self, slot: _Slot[W], replica: _Replica[W], held: float) -> None:
        slot.hold_seconds = held if slot.hold_seconds == 0 else 0.8 * slot.hold_seconds + 0.2 * held
        self._free(slot, replica)
        self._notify(slot)

    def _free(self, slot: _Slot[W], replica: _Replica[W]) -> None:
        slot.running -= 1
        replica.busy = False
        replica.idle_since = anyio.current_time()
        slot.last_used = time.time()

    # ---- scaling

    def _scale(self, slot: _Slot[W]) -> None:
        """Start loading one more replica if the policy wants one: the first one (making room as it must, unless
        the model is backing off after failures, which refuses the request), or one more beside those loaded
        (only if there is room now and the model is not backing off: a scale-out never evicts nor waits)."""
        if self._closing:
            return
        view = slot.view()
        if not wants_replica(view):
            return
        backoff = slot.retry_not_before - anyio.current_time()
        if view.loaded:
            if backoff <= 0 and has_room(view, self._views(), self._capacity):
                self._start_load(slot, scale_out=True)
            return
        self._start_first_load(slot)

    def _start_first_load(self, slot: _Slot[W]) -> None:
        backoff = slot.retry_not_before - anyio.current_time()
        if slot.failed and backoff > 0:
            raise LoadFailed(slot.model, slot.last_error or "unknown", retry_after=backoff, backing_off=True)
        self._start_load(slot)

    # ---- manual control

    async def load(self, model: str) -> SlotSnapshot:
        """Load a model now if no replica is loaded (sharing a load already running); takes no turn on it."""
        slot = self._slot(model)
        waiter = _Waiter[W](anyio.current_time())
        slot.loads.append(waiter)
        try:
            while slot.state is not SlotState.LOADED or slot.drains:
                changed = slot.changed
                if waiter.error is not None:
                    raise waiter.error
                if self._closing:
                    raise ShuttingDown
                if not slot.replicas and not slot.drains:
                    self._start_first_load(slot)
                await changed.wait()
        finally:
            slot.loads.remove(waiter)
        return await self.snapshot(model)

    async def unload(self, model: str, reason: UnloadReason = UnloadReason.MANUAL) -> UnloadReport:
        """Drain the model's requests, then end every replica; loads under way are called off and their workers
        ended. The report has each replica's pid and the memory it freed."""
        return await self._unload(self._slot(model), reason)

    def configure(
        self,
        model: str,
        *,
        idle_timeout: float | None = None,
        auto_unload: bool | None = None,
        pinned: bool | None = None,
    ) -> None:
        slot = self._slot(model)
        current = slot.policy
        slot.policy = replace(
            current,
            idle_timeout=current.idle_timeout if idle_timeout is None else idle_timeout,
            auto_unload=current.auto_unload if auto_unload is None else auto_unload,
            pinned=current.pinned if pinned is None else pinned,
        )
        self._record(
            LifecycleEvent.POLICY_CHANGED,
            slot,
            idle_timeout=slot.policy.idle_timeout,
            auto_unload=slot.policy.auto_unload,
            pinned=slot.policy.pinned,
        )
        self._notify(slot)

    # ---- loading

    def _start_load(self, slot: _Slot[W], *, scale_out: bool = False) -> None:
        """Start loading one replica, in the lowest position none holds (which picks its placement)."""
        assert self._task_group is not None, "LazyLoader.running() was not entered"
        taken = {replica.index for replica in slot.replicas}
        index = min(set(range(slot.policy.replicas_max)) - taken)
        replica = _Replica[W](placement(slot.policy, index), scale_out)
        slot.replicas.append(replica)
        slot.failed = False
        self._notify(slot)
        self._task_group.start_soon(self._load, slot, replica, name=f"load:{slot.model}#{index}")

    async def _load(self, slot: _Slot[W], replica: _Replica[W]) -> None:
        assert self._task_group is not None
        attempt = replica.attempt
        started = anyio.current_time()
        timeout = self._load_timeout if slot.policy.load_timeout is None else slot.policy.load_timeout
        with attempt.scope:
            try:
                await self._make_room(slot, replica)
                self._record(LifecycleEvent.LOAD_STARTED, slot, replica, device=replica.placement.device)
                attempt.scope.deadline = anyio.current_time() + timeout
                worker = attempt.worker = await self._launcher(slot.model, replica.placement, self._task_group)
                self._notify(slot)
                await worker.ready()
            except CapacityExhausted as error:
                self._end_attempt(slot, replica, error, LifecycleEvent.LOAD_REFUSED, reason=str(error))
                return
            except Exception as error:  # whatever the launcher raised becomes the slot's readable last_error
                self._fail_load(slot, replica, str(error) or type(error).__name__, started)
                return
            finally:
                replica.launching = False
        if attempt.scope.cancelled_caught:
            self._call_off(slot, replica, timeout, started)
            return
        attempt.seconds = anyio.current_time() - started
        memory = await worker.memory()
        replica.worker = worker
        replica.state = SlotState.LOADED
        replica.loaded_at = replica.idle_since = anyio.current_time()
        replica.load_seconds = attempt.seconds
        replica.memory = memory
        slot.replica_bytes = replica.memory_bytes()
        slot.loads_total += 1
        slot.last_load_seconds = attempt.seconds
        slot.last_error = None
        slot.failures = 0
        slot.last_used = time.time()
        self._task_group.start_soon(self._watch, slot, replica, worker, name=f"watch:{slot.model}#{replica.index}")
        attempt.done.set()
        self._record(
            LifecycleEvent.LOADED,
            slot,
            replica,
            seconds=round(attempt.seconds, 3),
            pid=worker.pid,
            device=replica.placement.device,
            rss_bytes=memory.rss_bytes,
            gpu_bytes=memory.gpu_bytes,
        )
        self._notify(slot)

    def _call_off(self, slot: _Slot[W], replica: _Replica[W], timeout: float, started: float) -> None:
        """The load was cancelled and its worker ended: by an unload (the replica is gone), else by the load
        timeout (a failure)."""
        attempt = replica.attempt
        pid = None if attempt.worker is None else attempt.worker.pid
        if attempt.called_off is None:
            killed = "" if pid is None else f"; its worker (pid {pid}) was killed"
            self._fail_load(slot, replica, f"did not load within the load timeout of {timeout:g} s{killed}", started)
            return
        slot.last_unload_reason = attempt.called_off
        error = ShuttingDown() if attempt.called_off is UnloadReason.SHUTDOWN else LoadCalledOff(slot.model)
        reason = f"unloaded ({attempt.called_off}) while loading"
        self._end_attempt(slot, replica, error, LifecycleEvent.LOAD_REFUSED, reason=reason, pid=pid)

    def _fail_load(self, slot: _Slot[W], replica: _Replica[W], reason: str, started: float) -> None:
        slot.failed = True
        slot.last_error = reason
        slot.failures += 1
        if slot.failures >= 2:
            backoff = min(self._max_load_backoff, self._load_backoff * 2 ** (slot.failures - 2))
            slot.retry_not_before = anyio.current_time() + backoff
        retry_after = max(LOAD_RETRY_SECONDS, slot.retry_not_before - anyio.current_time())
        self._end_attempt(
            slot,
            replica,
            LoadFailed(slot.model, reason, retry_after),
            LifecycleEvent.LOAD_FAILED,
            reason=reason,
            seconds=round(anyio.current_time() - started, 3),
        )

    def _end_attempt(
        self, slot: _Slot[W], replica: _Replica[W], error: ModelUnavailable, event: LifecycleEvent, **fields: Any
    ) -> None:
        """A load that ended without a replica: it is gone; when no other replica is loaded or loading, every
        request and manual load waiting for the model gets the error."""
        replica.attempt.error = error
        replica.attempt.done.set()
        slot.replicas.remove(replica)
        if not slot.serving:
            for waiter in [*slot.queue, *slot.loads]:
                waiter.error = error
        self._record(event, slot, replica, **fields)
        self._notify(slot)

    async def _make_room(self, slot: _Slot[W], replica: _Replica[W]) -> None:
        """Room for one more replica: the first replica of a model evicts idle models and waits for room up to the
        capacity wait; a scale-out takes only room that is free now."""
        started = anyio.current_time()
        deadline = started + self._capacity_wait
        while not has_room(newcomer := slot.view(), views := self._views(), self._capacity):
            if replica.scale_out:
                raise CapacityExhausted(slot.model, 0.0)
            victim = eviction_candidate(newcomer, views)
            if victim is not None:
                await self._evict_one(self._slots[victim.model])
                continue
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise CapacityExhausted(slot.model, anyio.current_time() - started)
            changed = self._changed
            with anyio.move_on_after(remaining):
                await changed.wait()
        replica.launching = True

    async def _evict_one(self, slot: _Slot[W]) -> None:
        """End the highest-numbered replica of an idle model to make room."""
        free = slot.free()
        if free and slot.idle:
            await self._stop_replica(slot, free[-1], UnloadReason.EVICTED)

    async def _watch(self, slot: _Slot[W], replica: _Replica[W], worker: W) -> None:
        """Notice a worker that ends on its own (crash, kill -9, out of memory) and free its replica; the model's
        other replicas go on serving."""
        code = await worker.wait()
        if replica.worker is not worker or replica.state is not SlotState.LOADED:
            return
        slot.replicas.remove(replica)
        if not slot.replicas:
            slot.keep_alive = None
        slot.last_unload_reason = UnloadReason.CRASH
        cause = worker.exit_reason or f"exited unexpectedly with code {code}"
        slot.last_error = f"worker (pid {worker.pid}) {cause}"
        slot.unloads[UnloadReason.CRASH] += 1
        self._record(
            LifecycleEvent.WORKER_EXITED,
            slot,
            replica,
            pid=worker.pid,
            exit_code=code,
            cause=cause,
            watchdog=worker.exit_reason is not None,
            requests_affected=int(replica.busy),
            level="warning",
        )
        self._notify(slot)

    # ---- unloading

    async def _unload(self, slot: _Slot[W], reason: UnloadReason) -> UnloadReport:
        """Drain the model: call off its loads, let the requests admitted before the drain finish, then end every
        replica (those another unload is ending are waited for)."""
        started = anyio.current_time()
        previous = slot.state
        reports: list[ReplicaReport] = []
        slot.drains += 1
        self._notify(slot)
        try:
            while loading := slot.in_state(SlotState.LOADING):
                for replica in loading:
                    report = await self._call_off_load(slot, replica, reason)
                    if report is not None:
                        reports.append(report)
            drained = slot.admitted
            while slot.admitted:
                await self._wait_for_change(slot)
            while loaded := slot.in_state(SlotState.LOADED):
                reports.append(await self._stop_replica(slot, loaded[0], reason, drained))
            while slot.replicas:
                await self._wait_for_change(slot)
        finally:
            slot.drains -= 1
            self._notify(slot)
        return self._report(slot, previous, reason if reports else None, drained, reports, started)

    async def _end_every_replica(self, slot: _Slot[W], reason: UnloadReason, started: float) -> UnloadReport:
        """End every replica now, whatever it serves (shutdown past its grace); shielded."""
        with anyio.CancelScope(shield=True):
            previous = slot.state
            drained = slot.admitted
            reports: list[ReplicaReport] = []
            for replica in slot.in_state(SlotState.LOADING):
                if (report := await self._call_off_load(slot, replica, reason)) is not None:
                    reports.append(report)
            while loaded := slot.in_state(SlotState.LOADED):
                reports.append(await self._stop_replica(slot, loaded[0], reason, drained))
        return self._report(slot, previous, reason, drained, reports, started)

    async def _call_off_load(self, slot: _Slot[W], replica: _Replica[W], reason: UnloadReason) -> ReplicaReport | None:
        """Cancel a replica's load under way and wait until its worker is gone; None when the load ended by itself
        first (the caller then ends whatever it left)."""
        attempt = replica.attempt
        usage = await attempt.worker.memory() if attempt.worker is not None else None
        if replica not in slot.replicas or replica.state is not SlotState.LOADING:
            return None
        attempt.called_off = attempt.called_off or reason
        attempt.scope.cancel()
        await attempt.done.wait()
        if attempt.error is None:
            return None  # a launcher that never yielded finished the load before the cancel could reach it
        worker = attempt.worker
        if worker is None:
            return ReplicaReport(replica.index, None, LOCAL_NODE, replica.placement.device, None, None, None)
        exit_code = await worker.wait()
        return self._replica_report(replica, worker, exit_code, usage)

    async def _stop_replica(
        self, slot: _Slot[W], replica: _Replica[W], reason: UnloadReason, drained: int = 0
    ) -> ReplicaReport:
        """End a loaded replica's worker; shielded, so a cancelled caller never leaves it half-unloaded."""
        worker = replica.worker
        assert worker is not None
        with anyio.CancelScope(shield=True):
            idle_seconds = 0.0 if replica.busy else anyio.current_time() - replica.idle_since
            replica.state = SlotState.UNLOADING
            self._notify(slot)
            usage = await worker.memory()
            exit_code = await worker.stop()
            slot.replicas.remove(replica)
            if not slot.replicas:
                slot.keep_alive = None
            slot.last_unload_reason = reason
            slot.unloads[reason] += 1
            self._record(
                LifecycleEvent.UNLOADED,
                slot,
                replica,
                reason=reason,
                pid=worker.pid,
                exit_code=exit_code,
                idle_seconds=round(idle_seconds, 3),
                requests_drained=drained,
                freed_rss_bytes=usage.rss_bytes,
                freed_gpu_bytes=usage.gpu_bytes,
            )
            self._notify(slot)
        return self._replica_report(replica, worker, exit_code, usage)

    @staticmethod
    def _replica_report(replica: _Replica[W], worker: W, exit_code: int, usage: MemoryUsage | None) -> ReplicaReport:
        return ReplicaReport(
            index=replica.index,
            pid=worker.pid,
            node=node_of(worker),
            device=replica.placement.device,
            exit_code=exit_code,
            freed_rss_bytes=usage.rss_bytes if usage else None,
            freed_gpu_bytes=usage.gpu_bytes if usage else None,
        )

    def _report(
        self,
        slot: _Slot[W],
        previous: SlotState,
        reason: UnloadReason | None,
        drained: int,
        replicas: list[ReplicaReport],
        started: float,
    ) -> UnloadReport:
        return UnloadReport(
            model=slot.model,
            previous_state=previous,
            state=slot.state,
            reason=reason,
            requests_drained=drained,
            seconds=round(anyio.current_time() - started, 3),
            replicas=tuple(sorted(replicas, key=lambda report: report.index)),
        )

    # ---- idle reaping

    async def _reap(self, slot: _Slot[W]) -> None:
        """Keep the model at replicas_min while it is in use, and sleep until its next idle replica's deadline
        (woken by every change to the slot), then end that replica."""
        while True:
            changed = slot.changed
            if slot.in_state(SlotState.LOADED):
                self._scale(slot)
            view = slot.view()
            deadlines = replica_deadlines(view)
            deadline = idle_deadline(view)
            if deadline is None:
                await changed.wait()
                continue
            remaining = deadline.at - anyio.current_time()
            if remaining > 0:
                with anyio.move_on_after(remaining):
                    await changed.wait()
                continue
            replica = slot.free()[deadlines.index(deadline)]
            try:
                await self._stop_replica(slot, replica, deadline.reason)
            except Exception as error:  # a reaper must outlive any one failed unload
                self._record(
                    LifecycleEvent.UNLOAD_FAILED, slot, level="error", error=f"{type(error).__name__}: {error}"
                )
                await anyio.sleep(REAPER_RETRY_SECONDS)

    # ---- observation

    def _snapshot(self, slot: _Slot[W], memory: Mapping[int, MemoryUsage] | None) -> SlotSnapshot:
        now = anyio.current_time()
        wall = time.time()
        view = slot.view()
        until = model_deadline(view)
        free = slot.free()
        deadlines = dict(zip((replica.index for replica in free), replica_deadlines(view), strict=True))
        replicas = sorted(slot.replicas, key=lambda replica: replica.index)
        loading = slot.in_state(SlotState.LOADING)
        idle = view.idle and view.loaded > 0 and len(free) == view.loaded
        return SlotSnapshot(
            model=slot.model,
            state=slot.state,
            policy=slot.policy,
            keep_alive=slot.keep_alive,
            pid=next((replica.process.pid for replica in replicas if replica.process is not None), None),
            in_flight=slot.running,
            queued=len(slot.queue),
            loads_total=slot.loads_total,
            last_load_seconds=slot.last_load_seconds,
            last_unload_reason=slot.last_unload_reason,
            last_error=slot.last_error,
            idle_seconds=now - max(view.free_since) if idle else None,
            seconds_until_unload=max(0.0, until.at - now) if until is not None else None,
            unloads_by_reason=dict(slot.unloads),
            memory=None if memory is None else _sum_memory(memory.values()),
            consecutive_failures=slot.failures,
            retry_in=max(0.0, slot.retry_not_before - now) if slot.state is SlotState.FAILED else None,
            load_started_at=loading[0].load_started_at if loading and slot.state is SlotState.LOADING else None,
            load_stage=(
                loading[0].process.load_stage
                if loading and slot.state is SlotState.LOADING and isinstance(loading[0].process, ReportsLoadStage)
                else None
            ),
            replicas=tuple(
                ReplicaSnapshot(
                    index=replica.index,
                    state=replica.state,
                    pid=replica.process.pid if replica.process is not None else None,
                    node=LOCAL_NODE if replica.process is None else node_of(replica.process),
                    device=replica.placement.device,
                    threads=replica.placement.threads,
                    in_flight=int(replica.busy),
                    served=replica.served,
                    idle_since=wall - (now - replica.idle_since) if replica in free else None,
                    seconds_until_unload=_seconds_until(deadlines.get(replica.index), now),
                    load_seconds=replica.load_seconds,
                    memory=None if memory is None else memory.get(replica.index),
                )
                for replica in replicas
            ),
        )

    async def snapshot(self, model: str) -> SlotSnapshot:
        """The slot's state with each replica's memory (loaded or loading) measured now."""
        slot = self._slot(model)
        memory = {
            replica.index: await replica.process.memory()
            for replica in list(slot.replicas)
            if replica.process is not None
        }
        return self._snapshot(slot, memory)

    def snapshots_now(self) -> list[SlotSnapshot]:
        """Every slot's state without measuring memory (for synchronous readers such as metrics)."""
        return [self._snapshot(slot, None) for slot in self._slots.values()]

    def state(self, model: str) -> SlotState:
        return self._slot(model).state

    def workers(self, model: str) -> list[W]:
        """The model's loaded workers, by replica (for reading what they reported; not for requests)."""
        return [replica.worker for replica in self._slot(model).in_state(SlotState.LOADED) if replica.worker]

    def _views(self) -> list[SlotView]:
        return [slot.view() for slot in self._slots.values()]

    def _notify(self, slot: _Slot[W]) -> None:
        """A change to the slot: hand out free replicas, then wake whoever waits on it or on any slot."""
        self._dispatch(slot)
        slot.changed.set()
        slot.changed = anyio.Event()
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_for_change(self, slot: _Slot[W]) -> None:
        await slot.changed.wait()

    def _record(
        self,
        event: LifecycleEvent,
        slot: _Slot[W],
        replica: _Replica[W] | None = None,
        level: str = "info",
        **fields: Any,
    ) -> None:
        if replica is not None:
            fields = {"replica": replica.index, **fields}
        record = EventRecord(time.time(), event, slot.model, fields)
        if event is LifecycleEvent.LOAD_STARTED and replica is not None:
            replica.load_started_at = record.time
        self.events.append(record)
        for listener in self.listeners:
            listener(record)
        getattr(log, level)(event.value, model=slot.model, **fields)


def _sum_memory(usages: Iterable[MemoryUsage]) -> MemoryUsage | None:
    """The memory of several workers together; None when there are none."""
    usages = list(usages)
    if not usages:
        return None
    return MemoryUsage(
        rss_bytes=_total(usage.rss_bytes for usage in usages), gpu_bytes=_total(usage.gpu_bytes for usage in usages)
    )


def _seconds_until(deadline: Deadline | None, now: float) -> float | None:
    return None if deadline is None else max(0.0, deadline.at - now)

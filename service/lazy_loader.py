"""Model slots: lazy, single-flight loading into worker processes, leases, idle reaping, eviction and unloads.

Knows nothing of HTTP or of any ML framework: a slot holds a `Worker` that a launcher started, and every
request holds a `Lease` on the slot for its whole duration. State machine per slot:

    unloaded -> loading -> loaded -> unloading -> unloaded        (loading -> failed -> loading on retry)

A load that runs past its timeout, or is unloaded while it runs, is called off: its worker is ended and the slot
goes `failed` (timeout) or `unloaded` (unload). What fits, what to evict and when an idle slot unloads are decided
by the pure functions of `service.lifecycle.policy`, from a `SlotView` of each slot.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Generic, Protocol, Self, TypeVar

import anyio
import structlog
from anyio.abc import TaskGroup

from service.lifecycle.memory import MemoryUsage
from service.lifecycle.policy import (
    Capacity,
    ModelPolicy,
    SlotState,
    SlotView,
    UnloadReason,
    eviction_candidate,
    has_room,
    idle_deadline,
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
    "QueueFull",
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
    """One lifecycle event: when it happened (wall clock), what, to which model, and its figures."""

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


W = TypeVar("W", bound=Worker)
WorkerLauncher = Callable[[str, TaskGroup], Awaitable[W]]


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
class UnloadReport:
    model: str
    previous_state: SlotState
    state: SlotState
    reason: UnloadReason | None
    requests_drained: int
    pid: int | None
    worker_exited: bool
    exit_code: int | None
    freed_rss_bytes: int | None
    freed_gpu_bytes: int | None
    seconds: float


@dataclass(frozen=True)
class SlotSnapshot:
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
class _Slot(Generic[W]):
    model: str
    policy: ModelPolicy
    turns: anyio.Semaphore
    state: SlotState = SlotState.UNLOADED
    worker: W | None = None
    attempt: _LoadAttempt[W] | None = None
    launching: bool = False
    drains: int = 0
    waiting: int = 0
    admitted: int = 0
    running: int = 0
    keep_alive: float | None = None
    idle_since: float = 0.0
    last_used: float = 0.0
    loads_total: int = 0
    last_load_seconds: float | None = None
    load_started_at: float | None = None
    last_unload_reason: UnloadReason | None = None
    last_error: str | None = None
    last_memory: MemoryUsage | None = None
    failures: int = 0
    retry_not_before: float = 0.0
    hold_seconds: float = 0.0
    unloads: Counter[str] = field(default_factory=Counter)
    changed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def idle(self) -> bool:
        return self.admitted == 0 and self.waiting == 0 and self.drains == 0

    @property
    def queued(self) -> int:
        return self.waiting + self.admitted - self.running

    @property
    def process(self) -> W | None:
        """The worker loaded, or the one loading."""
        if self.worker is None and self.state is SlotState.LOADING and self.attempt is not None:
            return self.attempt.worker
        return self.worker

    def memory_estimate(self) -> int:
        if self.last_memory is None:
            return 0
        return (self.last_memory.rss_bytes or 0) + (self.last_memory.gpu_bytes or 0)

    def view(self) -> SlotView:
        return SlotView(
            model=self.model,
            state=self.state,
            policy=self.policy,
            keep_alive=self.keep_alive,
            launching=self.launching,
            idle=self.idle,
            idle_since=self.idle_since,
            last_used=self.last_used,
            memory_bytes=self.memory_estimate(),
        )


class Lease(Generic[W]):
    """A request's hold on a loaded model: while any lease is held, nothing unloads it."""

    def __init__(
        self,
        loader: LazyLoader[W],
        slot: _Slot[W],
        worker: W,
        load_seconds: float | None,
        queued_seconds: float,
        started: float,
    ) -> None:
        self._loader = loader
        self._slot = slot
        self.worker = worker
        self.model = slot.model
        self.load_seconds = load_seconds
        self.queued_seconds = queued_seconds
        self.started = started
        self._released = False

    @property
    def cold(self) -> bool:
        """Whether this request had to wait for the model to load."""
        return self.load_seconds is not None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._loader._release(self._slot, anyio.current_time() - self.started)


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
        self._slots: dict[str, _Slot[W]] = {
            model: _Slot(model, model_policy, anyio.Semaphore(1)) for model, model_policy in policies.items()
        }
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
        """Run the loader in a task group of its own: one reaper per model, the preloads the policies ask for, loads,
        watchers and whatever the launcher starts. On exit it shuts down (see `shutdown`), then closes the group."""
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            self._grace = grace
            for slot in self._slots.values():
                task_group.start_soon(self._reap, slot, name=f"reaper:{slot.model}")
                if slot.policy.preload:
                    self._start_load(slot)
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self.shutdown()
                task_group.cancel_scope.cancel()

    async def shutdown(self) -> list[UnloadReport]:
        """Refuse new requests, call off loads under way (their waiters get ShuttingDown), let the requests admitted
        to a loaded model finish within the grace `running` was given, then end every worker: requests still waiting
        for their turn get ShuttingDown, those generating lose their worker. Leaving `running` calls it; call it to
        begin sooner. A second call waits for the first one's end."""
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
            report = await self._stop_worker(slot, UnloadReason.SHUTDOWN, slot.admitted, slot.state, started)
            self._shutdown_reports.append(report)

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
        """Wait until the model is loaded (loading it if needed) and a turn on it is free; hold it until release."""
        slot = self._slot(model)
        if self._closing:
            raise ShuttingDown
        if slot.queued >= self._max_queue:
            raise QueueFull(model, slot.queued, max(1.0, slot.hold_seconds * slot.queued))
        arrived = anyio.current_time()
        load_seconds: float | None = None
        slot.waiting += 1
        self._notify(slot)
        try:
            while (worker := await self._take_turn(slot)) is None:
                waited_for_load = await self._progress(slot)
                load_seconds = waited_for_load if waited_for_load is not None else load_seconds
        except BaseException:
            slot.waiting -= 1
            self._notify(slot)
            raise
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        slot.running += 1
        slot.last_used = time.time()
        self._notify(slot)
        return Lease(self, slot, worker, load_seconds, anyio.current_time() - arrived, anyio.current_time())

    async def _progress(self, slot: _Slot[W]) -> float | None:
        """One step towards a loaded slot: start a load if none runs, then wait for it (returning its seconds) or for
        any change to the slot."""
        if self._closing:
            raise ShuttingDown
        if slot.state in (SlotState.UNLOADED, SlotState.FAILED) and slot.drains == 0:
            self._start_load_unless_backing_off(slot)
        if slot.state is SlotState.LOADING and slot.attempt is not None:
            attempt = slot.attempt
            await attempt.done.wait()
            if attempt.error is not None:
                raise attempt.error
            return attempt.seconds
        await self._wait_for_change(slot)
        return None

    async def _take_turn(self, slot: _Slot[W]) -> W | None:
        """If the slot is loaded and not draining: admit the request, wait for its turn and return the worker.
        None when the slot is not ready, or its worker changed while the request waited."""
        if self._closing or slot.state is not SlotState.LOADED or slot.drains:
            return None
        worker = slot.worker
        assert worker is not None
        slot.waiting -= 1
        slot.admitted += 1
        try:
            await slot.turns.acquire()
        except BaseException:
            slot.waiting += 1
            self._leave(slot)
            raise
        if slot.worker is worker and slot.state is SlotState.LOADED:
            return worker
        slot.turns.release()
        slot.waiting += 1
        self._leave(slot)
        return None

    def _start_load_unless_backing_off(self, slot: _Slot[W]) -> None:
        backoff = slot.retry_not_before - anyio.current_time()
        if slot.state is SlotState.FAILED and backoff > 0:
            raise LoadFailed(slot.model, slot.last_error or "unknown", retry_after=backoff, backing_off=True)
        self._start_load(slot)

    def _leave(self, slot: _Slot[W]) -> None:
        slot.admitted -= 1
        if slot.admitted == 0:
            slot.idle_since = anyio.current_time()
        self._notify(slot)

    def _release(self, slot: _Slot[W], held: float) -> None:
        slot.hold_seconds = held if slot.hold_seconds == 0 else 0.8 * slot.hold_seconds + 0.2 * held
        slot.running -= 1
        slot.turns.release()
        slot.last_used = time.time()
        self._leave(slot)

    # ---- manual control

    async def load(self, model: str) -> SlotSnapshot:
        """Load a model now if it is not loaded (sharing a load already running); takes no turn on it."""
        slot = self._slot(model)
        while slot.state is not SlotState.LOADED or slot.drains:
            await self._progress(slot)
        return await self.snapshot(model)

    async def unload(self, model: str, reason: UnloadReason = UnloadReason.MANUAL) -> UnloadReport:
        """Drain the model's requests, then end its worker; a load under way is called off and its worker ended."""
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

    def _start_load(self, slot: _Slot[W]) -> None:
        assert self._task_group is not None, "LazyLoader.running() was not entered"
        slot.state = SlotState.LOADING
        slot.attempt = _LoadAttempt[W]()
        self._notify(slot)
        self._task_group.start_soon(self._load, slot, slot.attempt, name=f"load:{slot.model}")

    async def _load(self, slot: _Slot[W], attempt: _LoadAttempt[W]) -> None:
        assert self._task_group is not None
        started = anyio.current_time()
        timeout = self._load_timeout if slot.policy.load_timeout is None else slot.policy.load_timeout
        with attempt.scope:
            try:
                await self._make_room(slot)
                self._record(LifecycleEvent.LOAD_STARTED, slot)
                attempt.scope.deadline = anyio.current_time() + timeout
                worker = attempt.worker = await self._launcher(slot.model, self._task_group)
                self._notify(slot)
                await worker.ready()
            except CapacityExhausted as error:
                slot.state = SlotState.UNLOADED
                self._finish_attempt(slot, attempt, error, LifecycleEvent.LOAD_REFUSED, reason=str(error))
                return
            except Exception as error:  # whatever the launcher raised becomes the slot's readable last_error
                self._fail_load(slot, attempt, str(error) or type(error).__name__, started)
                return
            finally:
                slot.launching = False
        if attempt.scope.cancelled_caught:
            self._call_off(slot, attempt, timeout, started)
            return
        attempt.seconds = anyio.current_time() - started
        slot.worker = worker
        slot.state = SlotState.LOADED
        slot.loads_total += 1
        slot.last_load_seconds = attempt.seconds
        slot.last_error = None
        slot.failures = 0
        slot.idle_since = anyio.current_time()
        slot.last_used = time.time()
        slot.last_memory = await worker.memory()
        self._task_group.start_soon(self._watch, slot, worker, name=f"watch:{slot.model}")
        self._finish_attempt(
            slot,
            attempt,
            None,
            LifecycleEvent.LOADED,
            seconds=round(attempt.seconds, 3),
            pid=worker.pid,
            rss_bytes=slot.last_memory.rss_bytes,
            gpu_bytes=slot.last_memory.gpu_bytes,
        )

    def _call_off(self, slot: _Slot[W], attempt: _LoadAttempt[W], timeout: float, started: float) -> None:
        """The load was cancelled and its worker ended: by an unload (the slot is left unloaded), else by the load
        timeout (a failure)."""
        pid = None if attempt.worker is None else attempt.worker.pid
        if attempt.called_off is None:
            killed = "" if pid is None else f"; its worker (pid {pid}) was killed"
            self._fail_load(slot, attempt, f"did not load within the load timeout of {timeout:g} s{killed}", started)
            return
        slot.state = SlotState.UNLOADED
        slot.last_unload_reason = attempt.called_off
        error = ShuttingDown() if attempt.called_off is UnloadReason.SHUTDOWN else LoadCalledOff(slot.model)
        reason = f"unloaded ({attempt.called_off}) while loading"
        self._finish_attempt(slot, attempt, error, LifecycleEvent.LOAD_REFUSED, reason=reason, pid=pid)

    def _fail_load(self, slot: _Slot[W], attempt: _LoadAttempt[W], reason: str, started: float) -> None:
        slot.state = SlotState.FAILED
        slot.last_error = reason
        slot.failures += 1
        if slot.failures >= 2:
            backoff = min(self._max_load_backoff, self._load_backoff * 2 ** (slot.failures - 2))
            slot.retry_not_before = anyio.current_time() + backoff
        retry_after = max(LOAD_RETRY_SECONDS, slot.retry_not_before - anyio.current_time())
        self._finish_attempt(
            slot,
            attempt,
            LoadFailed(slot.model, reason, retry_after),
            LifecycleEvent.LOAD_FAILED,
            reason=reason,
            seconds=round(anyio.current_time() - started, 3),
        )

    def _finish_attempt(
        self,
        slot: _Slot[W],
        attempt: _LoadAttempt[W],
        error: ModelUnavailable | None,
        event: LifecycleEvent,
        **fields: Any,
    ) -> None:
        attempt.error = error
        attempt.done.set()
        self._record(event, slot, **fields)
        self._notify(slot)

    async def _make_room(self, slot: _Slot[W]) -> None:
        started = anyio.current_time()
        deadline = started + self._capacity_wait
        while not has_room(newcomer := slot.view(), views := self._views(), self._capacity):
            victim = eviction_candidate(newcomer, views)
            if victim is not None:
                await self._unload(self._slots[victim.model], UnloadReason.EVICTED)
                continue
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise CapacityExhausted(slot.model, anyio.current_time() - started)
            changed = self._changed
            with anyio.move_on_after(remaining):
                await changed.wait()
        slot.launching = True

    async def _watch(self, slot: _Slot[W], worker: W) -> None:
        """Notice a worker that ends on its own (crash, kill -9, out of memory) and free its slot."""
        code = await worker.wait()
        if slot.worker is worker and slot.state is SlotState.LOADED:
            slot.worker = None
            slot.state = SlotState.UNLOADED
            slot.keep_alive = None
            slot.last_unload_reason = UnloadReason.CRASH
            cause = worker.exit_reason or f"exited unexpectedly with code {code}"
            slot.last_error = f"worker (pid {worker.pid}) {cause}"
            slot.unloads[UnloadReason.CRASH] += 1
            self._record(
                LifecycleEvent.WORKER_EXITED,
                slot,
                pid=worker.pid,
                exit_code=code,
                cause=cause,
                watchdog=worker.exit_reason is not None,
                requests_affected=slot.running,
                level="warning",
            )
            self._notify(slot)

    # ---- unloading

    async def _unload(self, slot: _Slot[W], reason: UnloadReason) -> UnloadReport:
        started = anyio.current_time()
        previous = slot.state
        while slot.state in (SlotState.LOADING, SlotState.UNLOADING):
            if slot.state is SlotState.LOADING:
                report = await self._call_off_load(slot, reason, previous, started)
                if report is not None:
                    return report
                continue
            await self._wait_for_change(slot)
        if slot.state is not SlotState.LOADED:
            return self._report(slot, previous, None, 0, None, None, None, anyio.current_time() - started)
        drained = slot.admitted
        slot.drains += 1
        self._notify(slot)
        try:
            while slot.admitted:
                await self._wait_for_change(slot)
            return await self._stop_worker(slot, reason, drained, previous, started)
        finally:
            slot.drains -= 1
            self._notify(slot)

    async def _call_off_load(
        self, slot: _Slot[W], reason: UnloadReason, previous: SlotState, started: float
    ) -> UnloadReport | None:
        """Cancel the slot's load under way and wait until its worker is gone; None when the load ended by itself
        first (the caller then unloads whatever it left)."""
        attempt = slot.attempt
        assert attempt is not None
        usage = await attempt.worker.memory() if attempt.worker is not None else None
        if slot.attempt is not attempt or slot.state is not SlotState.LOADING:
            return None
        attempt.called_off = attempt.called_off or reason
        attempt.scope.cancel()
        await attempt.done.wait()
        if attempt.error is None:
            return None  # a launcher that never yielded finished the load before the cancel could reach it
        worker = attempt.worker
        exit_code = await worker.wait() if worker is not None else None
        pid = None if worker is None else worker.pid
        return self._report(slot, previous, reason, 0, pid, exit_code, usage, anyio.current_time() - started)

    async def _stop_worker(
        self, slot: _Slot[W], reason: UnloadReason, drained: int, previous: SlotState, started: float
    ) -> UnloadReport:
        """End the slot's worker; shielded, so a cancelled caller never leaves the slot half-unloaded. The report's
        seconds count from `started`."""
        worker = slot.worker
        if worker is None or slot.state is not SlotState.LOADED:
            return self._report(slot, previous, None, drained, None, None, None, anyio.current_time() - started)
        with anyio.CancelScope(shield=True):
            idle_seconds = anyio.current_time() - slot.idle_since if slot.admitted == 0 else 0.0
            slot.state = SlotState.UNLOADING
            self._notify(slot)
            usage = await worker.memory()
            exit_code = await worker.stop()
            slot.worker = None
            slot.state = SlotState.UNLOADED
            slot.keep_alive = None
            slot.last_unload_reason = reason
            slot.unloads[reason] += 1
            seconds = anyio.current_time() - started
            self._record(
                LifecycleEvent.UNLOADED,
                slot,
                reason=reason,
                pid=worker.pid,
                exit_code=exit_code,
                idle_seconds=round(idle_seconds, 3),
                requests_drained=drained,
                freed_rss_bytes=usage.rss_bytes,
                freed_gpu_bytes=usage.gpu_bytes,
            )
            self._notify(slot)
            report = self._report(slot, previous, reason, drained, worker.pid, exit_code, usage, seconds)
        return report

    def _report(
        self,
        slot: _Slot[W],
        previous: SlotState,
        reason: UnloadReason | None,
        drained: int,
        pid: int | None,
        exit_code: int | None,
        usage: MemoryUsage | None,
        seconds: float,
    ) -> UnloadReport:
        return UnloadReport(
            model=slot.model,
            previous_state=previous,
            state=slot.state,
            reason=reason,
            requests_drained=drained,
            pid=pid,
            worker_exited=pid is not None,
            exit_code=exit_code,
            freed_rss_bytes=usage.rss_bytes if usage else None,
            freed_gpu_bytes=usage.gpu_bytes if usage else None,
            seconds=round(seconds, 3),
        )

    # ---- idle reaping

    async def _reap(self, slot: _Slot[W]) -> None:
        """Sleep until the slot's idle deadline (woken by every change to it), then unload it."""
        while True:
            changed = slot.changed
            deadline = idle_deadline(slot.view())
            if deadline is None:
                await changed.wait()
                continue
            remaining = deadline.at - anyio.current_time()
            if remaining > 0:
                with anyio.move_on_after(remaining):
                    await changed.wait()
                continue
            try:
                await self._unload(slot, deadline.reason)
            except Exception as error:  # a reaper must outlive any one failed unload
                self._record(
                    LifecycleEvent.UNLOAD_FAILED, slot, level="error", error=f"{type(error).__name__}: {error}"
                )
                await anyio.sleep(REAPER_RETRY_SECONDS)

    # ---- observation

    def _snapshot(self, slot: _Slot[W], memory: MemoryUsage | None) -> SlotSnapshot:
        now = anyio.current_time()
        deadline = idle_deadline(slot.view())
        loaded_and_idle = slot.state is SlotState.LOADED and slot.admitted == 0
        return SlotSnapshot(
            model=slot.model,
            state=slot.state,
            policy=slot.policy,
            keep_alive=slot.keep_alive,
            pid=slot.process.pid if slot.process is not None else None,
            in_flight=slot.running,
            queued=slot.queued,
            loads_total=slot.loads_total,
            last_load_seconds=slot.last_load_seconds,
            last_unload_reason=slot.last_unload_reason,
            last_error=slot.last_error,
            idle_seconds=now - slot.idle_since if loaded_and_idle else None,
            seconds_until_unload=max(0.0, deadline.at - now) if deadline is not None else None,
            unloads_by_reason=dict(slot.unloads),
            memory=memory,
            consecutive_failures=slot.failures,
            retry_in=max(0.0, slot.retry_not_before - now) if slot.state is SlotState.FAILED else None,
            load_started_at=slot.load_started_at if slot.state is SlotState.LOADING else None,
        )

    async def snapshot(self, model: str) -> SlotSnapshot:
        """The slot's state with its worker's memory (loaded or loading) measured now."""
        slot = self._slot(model)
        memory = await slot.process.memory() if slot.process is not None else None
        return self._snapshot(slot, memory)

    def snapshots_now(self) -> list[SlotSnapshot]:
        """Every slot's state without measuring memory (for synchronous readers such as metrics)."""
        return [self._snapshot(slot, None) for slot in self._slots.values()]

    def state(self, model: str) -> SlotState:
        return self._slot(model).state

    def worker(self, model: str) -> W | None:
        """The model's current worker, if one is loaded (for reading what it reported; not for requests)."""
        return self._slot(model).worker

    def _views(self) -> list[SlotView]:
        return [slot.view() for slot in self._slots.values()]

    def _notify(self, slot: _Slot[W]) -> None:
        slot.changed.set()
        slot.changed = anyio.Event()
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_for_change(self, slot: _Slot[W]) -> None:
        await slot.changed.wait()

    def _record(self, event: LifecycleEvent, slot: _Slot[W], level: str = "info", **fields: Any) -> None:
        record = EventRecord(time.time(), event, slot.model, fields)
        if event is LifecycleEvent.LOAD_STARTED:
            slot.load_started_at = record.time
        self.events.append(record)
        for listener in self.listeners:
            listener(record)
        getattr(log, level)(event.value, model=slot.model, **fields)

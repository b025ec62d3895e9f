"""The loader's guarantees, with in-memory workers so every interleaving is under the test's control."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import pytest
from anyio.abc import TaskGroup

from service.lazy_loader import (
    CapacityExhausted,
    LazyLoader,
    Lease,
    LifecycleEvent,
    LoadCalledOff,
    LoadFailed,
    ModelPolicy,
    ModelUnavailable,
    Placement,
    QueueFull,
    ShuttingDown,
    SlotState,
    UnknownModel,
    UnloadReason,
    UnloadReport,
)
from service.lifecycle.memory import MemoryUsage

pytestmark = pytest.mark.anyio

RefusalT = TypeVar("RefusalT", bound=ModelUnavailable)

_pids = itertools.count(1000)


class FakeWorker:
    def __init__(self, model: str, rss_bytes: int, loading: anyio.Event | None = None) -> None:
        self.model = model
        self._pid = next(_pids)
        self._exited = anyio.Event()
        self._loading = loading
        self.code: int | None = None
        self.rss_bytes = rss_bytes
        self.exit_reason: str | None = None

    @property
    def pid(self) -> int:
        return self._pid

    async def ready(self) -> None:
        """Loaded at once, or once the launcher's `loading` event is set; cancelled, it is killed (-9)."""
        try:
            await anyio.lowlevel.checkpoint()
            if self._loading is not None:
                await self._loading.wait()
        except BaseException:
            self.exit(-9)
            raise

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.code is not None
        return self.code

    async def stop(self) -> int:
        self.exit(0)
        return 0

    def exit(self, code: int) -> None:
        if self.code is None:
            self.code = code
            self._exited.set()

    async def memory(self) -> MemoryUsage:
        return MemoryUsage(rss_bytes=None if self.code is not None else self.rss_bytes, gpu_bytes=None)


class FakeLauncher:
    def __init__(self, rss_bytes: int = 1000) -> None:
        self.launches: Counter[str] = Counter()
        self.workers: list[FakeWorker] = []
        self.placements: list[Placement] = []
        self.gate: anyio.Event | None = None
        self.loading: anyio.Event | None = None
        self.failure: str | None = None
        self.rss_bytes = rss_bytes

    async def __call__(self, model: str, placement: Placement, task_group: TaskGroup) -> FakeWorker:
        self.launches[model] += 1
        self.placements.append(placement)
        if self.gate is not None:
            await self.gate.wait()
        if self.failure:
            raise RuntimeError(self.failure)
        worker = FakeWorker(model, self.rss_bytes, self.loading)
        self.workers.append(worker)
        return worker


def policies(*models: str, idle_timeout: float = 300.0, **options: Any) -> dict[str, ModelPolicy]:
    return {model: ModelPolicy(idle_timeout=idle_timeout, **options) for model in models}


async def refused(loader: LazyLoader[FakeWorker], model: str, kind: type[RefusalT], into: list[RefusalT]) -> None:
    """A request for the model that must be refused with `kind`; the refusal goes into `into`."""
    with pytest.raises(kind) as refusal:
        await loader.acquire(model)
    into.append(refusal.value)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to other tasks until the condition holds (fails the test after `timeout`)."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.001)


async def test_first_request_loads_the_model_and_later_ones_find_it_warm() -> None:
    launcher = FakeLauncher()
    async with LazyLoader(policies("a"), launcher).running(grace=1.0) as loader:
        assert loader.state("a") is SlotState.UNLOADED
        first = await loader.acquire("a")
        first.release()
        second = await loader.acquire("a")
        second.release()
        assert (first.cold, second.cold) == (True, False)
        assert first.worker is second.worker
        assert launcher.launches["a"] == 1
        assert loader.state("a") is SlotState.LOADED


async def test_concurrent_cold_requests_share_a_single_load() -> None:
    launcher = FakeLauncher()
    launcher.gate = anyio.Event()
    workers: list[FakeWorker] = []
    async with LazyLoader(policies("a"), launcher).running(grace=1.0) as loader:

        async def request() -> None:
            lease = await loader.acquire("a")
            workers.append(lease.worker)
            lease.release()

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(request)
            await until(lambda: loader.snapshots_now()[0].queued == 50)
            assert loader.state("a") is SlotState.LOADING
            launcher.gate.set()
        assert launcher.launches["a"] == 1
        assert len(workers) == 50
        assert len({id(worker) for worker in workers}) == 1


async def test_failed_load_fails_every_waiter_and_the_next_request_retries() -> None:
    launcher = FakeLauncher()
    launcher.failure = "weights not found"
    launcher.gate = anyio.Event()
    errors: list[BaseException] = []
    async with LazyLoader(policies("a"), launcher).running(grace=1.0) as loader:

        async def request() -> None:
            try:
                (await loader.acquire("a")).release()
            except LoadFailed as error:
                errors.append(error)

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(request)
            await until(lambda: loader.snapshots_now()[0].queued == 5)
            launcher.gate.set()
        assert len(errors) == 5
        assert all("weights not found" in str(error) for error in errors)
        snapshot = await loader.snapshot("a")
        assert snapshot.state is SlotState.FAILED
        assert snapshot.last_error == "weights not found"
        assert (snapshot.in_flight, snapshot.queued) == (0, 0)

        launcher.failure = None
        (await loader.acquire("a")).release()
        assert launcher.launches["a"] == 2
        assert loader.state("a") is SlotState.LOADED
        assert (await loader.snapshot("a")).last_error is None


async def test_no_unload_while_a_request_runs_and_the_idle_clock_starts_when_it_ends() -> None:
    async with LazyLoader(policies("a", idle_timeout=0.2), FakeLauncher()).running(grace=1.0) as loader:
        lease = await loader.acquire("a")
        await anyio.sleep(0.5)  # the request lasts longer than the idle timeout
        assert loader.state("a") is SlotState.LOADED
        assert (await loader.snapshot("a")).seconds_until_unload is None
        lease.release()
        released = anyio.current_time()
        assert loader.state("a") is SlotState.LOADED
        await until(lambda: loader.state("a") is SlotState.UNLOADED)
        assert anyio.current_time() - released >= 0.2
        assert (await loader.snapshot("a")).last_unload_reason is UnloadReason.IDLE


async def test_reaper_unloads_within_half_a_second_of_the_deadline() -> None:
    async with LazyLoader(policies("a", idle_timeout=0.3), FakeLauncher()).running(grace=1.0) as loader:
        for _ in range(3):
            (await loader.acquire("a")).release()
            released = anyio.current_time()
            await until(lambda: loader.state("a") is SlotState.UNLOADED)
            lateness = anyio.current_time() - released - 0.3
            assert -0.01 <= lateness < 0.5


async def test_manual_unload_drains_requests_in_flight_first() -> None:
    async with LazyLoader(policies("a"), FakeLauncher()).running(grace=1.0) as loader:
        lease = await loader.acquire("a")
        worker = lease.worker
        reports = []

        async def unload() -> None:
            reports.append(await loader.unload("a"))

        async with anyio.create_task_group() as group:
            group.start_soon(unload)
            await until(lambda: loader._slot("a").drains == 1)
            draining_since = anyio.current_time()
            assert worker.code is None
            assert loader.state("a") is SlotState.LOADED
            await anyio.sleep(0.1)  # the request in flight takes a while longer
            lease.release()
            drained = anyio.current_time() - draining_since
        report = reports[0]
        assert report.seconds >= round(drained, 3)
        assert report.requests_drained == 1
        assert report.worker_exited
        assert report.pid == worker.pid
        assert report.freed_rss_bytes == 1000
        assert report.reason is UnloadReason.MANUAL
        assert report.previous_state is SlotState.LOADED
        assert worker.code == 0
        assert loader.state("a") is SlotState.UNLOADED


async def test_requests_arriving_during_a_drain_wait_and_get_a_fresh_load() -> None:
    launcher = FakeLauncher()
    async with LazyLoader(policies("a"), launcher).running(grace=1.0) as loader:
        lease = await loader.acquire("a")
        late: list[FakeWorker] = []

        async def late_request() -> None:
            late_lease = await loader.acquire("a")
            late.append(late_lease.worker)
            late_lease.release()

        async with anyio.create_task_group() as group:
            group.start_soon(loader.unload, "a")
            await until(lambda: loader._slot("a").drains == 1)
            group.start_soon(late_request)
            await until(lambda: loader.snapshots_now()[0].queued == 1)
            assert not late
            lease.release()
        assert launcher.launches["a"] == 2
        assert late[0] is not lease.worker


async def test_unloading_an_unloaded_model_reports_that_nothing_happened() -> None:
    async with LazyLoader(policies("a"), FakeLauncher()).running(grace=1.0) as loader:
        report = await loader.unload("a")
        assert report.previous_state is SlotState.UNLOADED
        assert not report.worker_exited
        assert report.pid is None


async def test_keep_alive_zero_unloads_right_after_the_request() -> None:
    async with LazyLoader(policies("a"), FakeLauncher()).running(grace=1.0) as loader:
        (await loader.acquire("a", keep_alive=0)).release()
        await until(lambda: loader.state("a") is SlotState.UNLOADED, timeout=0.5)
        assert (await loader.snapshot("a")).last_unload_reason is UnloadReason.KEEP_ALIVE


async def test_positive_keep_alive_overrides_the_idle_timeout() -> None:
    async with LazyLoader(policies("a", idle_timeout=300), FakeLauncher()).running(grace=1.0) as loader:
        (await loader.acquire("a", keep_alive=0.2)).release()
        snapshot = await loader.snapshot("a")
        assert snapshot.keep_alive == 0.2
        assert snapshot.seconds_until_unload is not None
        assert snapshot.seconds_until_unload <= 0.2
        await until(lambda: loader.state("a") is SlotState.UNLOADED, timeout=1.0)
        assert (await loader.snapshot("a")).keep_alive is None


async def test_negative_keep_alive_keeps_the_model_until_unloaded_by_hand() -> None:
    async with LazyLoader(policies("a", idle_timeout=0.05), FakeLauncher()).running(grace=1.0) as loader:
        (await loader.acquire("a", keep_alive=-1)).release()
        await anyio.sleep(0.3)
        snapshot = await loader.snapshot("a")
        assert snapshot.state is SlotState.LOADED
        assert snapshot.seconds_until_unload is None
        report = await loader.unload("a")
        assert report.worker_exited
        (await loader.acquire("a")).release()
        await until(lambda: loader.state("a") is SlotState.UNLOADED, timeout=1.0)


async def test_loading_past_the_model_limit_evicts_the_least_recently_used_idle_model() -> None:
    async with LazyLoader(policies("a", "b", "c"), FakeLauncher(), max_loaded=2).running(grace=1.0) as loader:
        (await loader.acquire("a")).release()
        (await loader.acquire("b")).release()
        (await loader.acquire("a")).release()
        (await loader.acquire("c")).release()
        assert [loader.state(model) for model in "abc"] == [SlotState.LOADED, SlotState.UNLOADED, SlotState.LOADED]
        assert (await loader.snapshot("b")).last_unload_reason is UnloadReason.EVICTED


async def test_a_busy_model_is_never_evicted_and_the_newcomer_gets_capacity_exhausted() -> None:
    loader = LazyLoader(policies("a", "b"), FakeLauncher(), max_loaded=1, capacity_wait=0.2)
    async with loader.running(grace=1.0):
        lease = await loader.acquire("a")
        with pytest.raises(CapacityExhausted) as raised:
            await loader.acquire("b")
        assert raised.value.retry_after is not None
        assert loader.state("a") is SlotState.LOADED
        assert loader.state("b") is SlotState.UNLOADED
        lease.release()


async def test_a_load_waiting_for_room_proceeds_once_the_busy_model_is_released() -> None:
    loader = LazyLoader(policies("a", "b"), FakeLauncher(), max_loaded=1, capacity_wait=10)
    async with loader.running(grace=1.0):
        lease = await loader.acquire("a")
        got: list[str] = []

        async def request_b() -> None:
            lease_b = await loader.acquire("b")
            got.append(lease_b.model)
            lease_b.release()

        async with anyio.create_task_group() as group:
            group.start_soon(request_b)
            await until(lambda: loader.state("b") is SlotState.LOADING)
            assert not got
            lease.release()
        assert got == ["b"]
        assert (await loader.snapshot("a")).last_unload_reason is UnloadReason.EVICTED


async def test_pinned_models_are_neither_reaped_nor_evicted() -> None:
    loader = LazyLoader(
        {"a": ModelPolicy(idle_timeout=0.05, pinned=True), "b": ModelPolicy(idle_timeout=300)},
        FakeLauncher(),
        max_loaded=1,
        capacity_wait=0.1,
    )
    async with loader.running(grace=1.0):
        (await loader.acquire("a")).release()
        await anyio.sleep(0.3)
        assert loader.state("a") is SlotState.LOADED
        with pytest.raises(CapacityExhausted):
            await loader.acquire("b")
        loader.configure("a", pinned=False)
        await until(lambda: loader.state("a") is SlotState.UNLOADED, timeout=1.0)


async def test_memory_budget_evicts_when_the_next_model_would_not_fit() -> None:
    loader = LazyLoader(policies("a", "b"), FakeLauncher(rss_bytes=1000), max_loaded=5, memory_budget_bytes=1500)
    async with loader.running(grace=1.0):
        (await loader.acquire("b")).release()
        await loader.unload("b")  # b's measured size (1000 B) is now known
        (await loader.acquire("a")).release()
        (await loader.acquire("b")).release()
        assert loader.state("a") is SlotState.UNLOADED
        assert (await loader.snapshot("a")).last_unload_reason is UnloadReason.EVICTED


async def test_a_crashed_worker_frees_its_slot_and_the_next_request_reloads() -> None:
    launcher = FakeLauncher()
    async with LazyLoader(policies("a"), launcher).running(grace=1.0) as loader:
        (await loader.acquire("a")).release()
        launcher.workers[0].exit(-9)
        await until(lambda: loader.state("a") is SlotState.UNLOADED)
        snapshot = await loader.snapshot("a")
        assert snapshot.last_unload_reason is UnloadReason.CRASH
        assert snapshot.last_error is not None
        assert "-9" in snapshot.last_error
        assert snapshot.unloads_by_reason == {"crash": 1}
        lease = await loader.acquire("a")
        lease.release()
        assert lease.cold
        assert launcher.launches["a"] == 2


async def test_shutdown_refuses_new_requests_and_waits_for_those_in_flight() -> None:
    launcher = FakeLauncher()
    reports: list[UnloadReport] = []
    async with LazyLoader(policies("a", "b"), launcher).running(grace=5) as loader:
        lease = await loader.acquire("a")

        async def shutdown() -> None:
            reports.extend(await loader.shutdown())

        async with anyio.create_task_group() as group:
            group.start_soon(shutdown)
            await until(lambda: loader.closing)
            with pytest.raises(ShuttingDown):
                await loader.acquire("b")
            assert launcher.workers[0].code is None
            lease.release()
    assert launcher.workers[0].code == 0
    assert {report.model: report.reason for report in reports if report.worker_exited} == {"a": UnloadReason.SHUTDOWN}


async def test_leaving_running_stops_workers_whose_requests_outlive_the_grace_period() -> None:
    launcher = FakeLauncher()
    async with LazyLoader(policies("a"), launcher).running(grace=0.1) as loader:
        lease = await loader.acquire("a")
        left = anyio.current_time()
    assert anyio.current_time() - left >= 0.1
    assert launcher.workers[0].code == 0
    reports = await loader.shutdown()
    assert [(report.reason, report.requests_drained) for report in reports] == [(UnloadReason.SHUTDOWN, 1)]
    lease.release()


async def test_leaving_running_on_an_error_still_ends_every_worker() -> None:
    launcher = FakeLauncher()
    loader = LazyLoader(policies("a"), launcher)

    async def break_while_running() -> None:
        async with loader.running(grace=1.0):
            (await loader.acquire("a")).release()
            raise RuntimeError("the server broke")

    with pytest.raises(ExceptionGroup) as raised:
        await break_while_running()
    assert [str(error) for error in raised.value.exceptions] == ["the server broke"]
    assert launcher.workers[0].code == 0
    assert loader.closing


async def test_running_preloads_what_the_policies_ask_for() -> None:
    launcher = FakeLauncher()
    loader = LazyLoader(policies("a") | policies("b", preload=True), launcher)
    async with loader.running(grace=1.0):
        await until(lambda: loader.state("b") is SlotState.LOADED)
        assert loader.state("a") is SlotState.UNLOADED
    assert [(worker.model, worker.code) for worker in launcher.workers] == [("b", 0)]


async def test_configure_replaces_the_policy_and_keeps_what_it_was_not_given() -> None:
    loader = LazyLoader({"a": ModelPolicy(idle_timeout=300, load_timeout=600)}, FakeLauncher())
    async with loader.running(grace=1.0):
        before = (await loader.snapshot("a")).policy
        loader.configure("a", idle_timeout=5.0, pinned=True)
        after = (await loader.snapshot("a")).policy
    assert before == ModelPolicy(idle_timeout=300, load_timeout=600)
    assert after == ModelPolicy(idle_timeout=5.0, pinned=True, load_timeout=600)
    changes = [record.fields for record in loader.events if record.event is LifecycleEvent.POLICY_CHANGED]
    assert changes == [{"idle_timeout": 5.0, "auto_unload": True, "pinned": True}]


async def test_unknown_model_names_the_known_ones() -> None:
    async with LazyLoader(policies("a", "b"), FakeLauncher()).running(grace=1.0) as loader:
        with pytest.raises(UnknownModel, match="known models: a, b"):
            await loader.acquire("zzz")
        with pytest.raises(UnknownModel):
            await loader.unload("zzz")


async def test_lifecycle_events_are_recorded_for_listeners() -> None:
    seen: list[LifecycleEvent] = []
    loader = LazyLoader(policies("a"), FakeLauncher())
    loader.listeners.append(lambda record: seen.append(record.event))
    async with loader.running(grace=1.0):
        (await loader.acquire("a")).release()
        await loader.unload("a")
    assert seen[:3] == [LifecycleEvent.LOAD_STARTED, LifecycleEvent.LOADED, LifecycleEvent.UNLOADED]
    assert [record.event for record in loader.events][:3] == seen[:3]
    assert all(record.model == "a" for record in loader.events)
    assert [event for event in LifecycleEvent if event.is_failure] == [
        LifecycleEvent.LOAD_FAILED,
        LifecycleEvent.LOAD_REFUSED,
        LifecycleEvent.WORKER_EXITED,
        LifecycleEvent.UNLOAD_FAILED,
    ]


async def test_past_the_queue_bound_requests_are_refused_with_retry_after() -> None:
    async with LazyLoader(policies("a"), FakeLauncher(), max_queue=2).running(grace=1.0) as loader:
        lease = await loader.acquire("a")
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(loader.acquire, "a")
            await until(lambda: loader.snapshots_now()[0].queued == 2)
            with pytest.raises(QueueFull) as refused:
                await loader.acquire("a")
            assert refused.value.retry_after is not None
            assert refused.value.retry_after >= 1
            group.cancel_scope.cancel()
        lease.release()
        assert loader.snapshots_now()[0].queued == 0


async def test_repeated_load_failures_back_off_instead_of_looping() -> None:
    launcher = FakeLauncher()
    launcher.failure = "out of memory"
    async with LazyLoader(policies("a"), launcher, load_backoff=0.3).running(grace=1.0) as loader:
        for _ in range(2):
            with pytest.raises(LoadFailed) as failed:
                await loader.acquire("a")
            assert failed.value.retry_after >= 1
        assert launcher.launches["a"] == 2
        with pytest.raises(LoadFailed, match="next try in") as backing_off:
            await loader.acquire("a")
        assert backing_off.value.retry_after is not None
        assert 0 < backing_off.value.retry_after <= 0.3
        assert launcher.launches["a"] == 2
        snapshot = await loader.snapshot("a")
        assert snapshot.consecutive_failures == 2
        assert snapshot.retry_in is not None
        launcher.failure = None
        await until(lambda: loader.snapshots_now()[0].retry_in == 0)
        (await loader.acquire("a")).release()
        assert launcher.launches["a"] == 3
        assert (await loader.snapshot("a")).consecutive_failures == 0


async def test_a_worker_ended_by_the_watchdog_names_the_cause() -> None:
    launcher = FakeLauncher()
    async with LazyLoader(policies("a"), launcher).running(grace=1.0) as loader:
        (await loader.acquire("a")).release()
        launcher.workers[0].exit_reason = "killed by the generation watchdog after 5 s"
        launcher.workers[0].exit(-9)
        await until(lambda: loader.state("a") is SlotState.UNLOADED)
        snapshot = await loader.snapshot("a")
        assert snapshot.last_error is not None
        assert "generation watchdog" in snapshot.last_error
        exits = [record for record in loader.events if record.event is LifecycleEvent.WORKER_EXITED]
        assert [record.fields["watchdog"] for record in exits] == [True]


async def test_keep_alive_of_a_request_that_waited_through_an_unload_still_applies() -> None:
    async with LazyLoader(policies("a", idle_timeout=300), FakeLauncher()).running(grace=1.0) as loader:
        lease = await loader.acquire("a")
        late: list[float | None] = []

        async def late_request() -> None:
            late_lease = await loader.acquire("a", keep_alive=-1)
            late.append((await loader.snapshot("a")).keep_alive)
            late_lease.release()

        async with anyio.create_task_group() as group:
            group.start_soon(loader.unload, "a")
            await until(lambda: loader._slot("a").drains == 1)
            group.start_soon(late_request)
            await until(lambda: loader.snapshots_now()[0].queued == 1)
            lease.release()
        assert late == [-1]
        assert (await loader.snapshot("a")).seconds_until_unload is None


async def test_shutdown_calls_off_a_load_under_way_and_ends_its_worker() -> None:
    launcher = FakeLauncher()
    launcher.loading = anyio.Event()
    loader = LazyLoader(policies("a"), launcher)

    async def request() -> None:
        with pytest.raises(ShuttingDown):
            await loader.acquire("a")

    async with loader.running(grace=60), anyio.create_task_group() as group:
        group.start_soon(request)
        await until(lambda: loader.snapshots_now()[0].pid is not None)
        with anyio.fail_after(5):
            reports = await loader.shutdown()
        assert launcher.workers[0].code == -9
        assert [(report.previous_state, report.pid, report.exit_code) for report in reports] == [
            (SlotState.LOADING, launcher.workers[0].pid, -9)
        ]
        assert loader.state("a") is SlotState.UNLOADED


async def test_a_second_shutdown_waits_for_the_first_and_reports_the_same() -> None:
    launcher = FakeLauncher()
    reports: dict[str, list[UnloadReport]] = {}
    async with LazyLoader(policies("a"), launcher).running(grace=5) as loader:
        lease = await loader.acquire("a")

        async def shutdown(name: str) -> None:
            reports[name] = await loader.shutdown()

        async with anyio.create_task_group() as group:
            group.start_soon(shutdown, "first")
            await until(lambda: loader.closing)
            group.start_soon(shutdown, "second")
            await anyio.lowlevel.checkpoint()
            assert reports == {}
            lease.release()
    assert reports["first"] == reports["second"]
    assert [report.reason for report in reports["first"]] == [UnloadReason.SHUTDOWN]


async def test_the_pid_shows_while_loading_and_a_load_past_its_timeout_fails_and_kills_the_worker() -> None:
    launcher = FakeLauncher()
    launcher.loading = anyio.Event()
    errors: list[LoadFailed] = []
    async with LazyLoader(policies("a"), launcher, load_timeout=0.2).running(grace=1.0) as loader:
        async with anyio.create_task_group() as group:
            group.start_soon(refused, loader, "a", LoadFailed, errors)
            await until(lambda: loader.snapshots_now()[0].pid is not None)
            worker = launcher.workers[0]
            assert (loader.state("a"), loader.snapshots_now()[0].pid, worker.code) == (
                SlotState.LOADING,
                worker.pid,
                None,
            )
            started = loader.events[-1]
            assert started.event is LifecycleEvent.LOAD_STARTED
            assert loader.snapshots_now()[0].load_started_at == started.time
        snapshot = await loader.snapshot("a")
        assert (snapshot.state, snapshot.pid, worker.code) == (SlotState.FAILED, None, -9)
        assert snapshot.load_started_at is None
        assert (
            snapshot.last_error
            == f"did not load within the load timeout of 0.2 s; its worker (pid {worker.pid}) was killed"
        )
        assert "load timeout" in str(errors[0])
        assert errors[0].retry_after >= 1
        assert loader.events[-1].event is LifecycleEvent.LOAD_FAILED


async def test_a_model_s_own_load_timeout_overrides_the_loader_s() -> None:
    launcher = FakeLauncher()
    launcher.loading = anyio.Event()
    loader = LazyLoader(
        {"quick": ModelPolicy(idle_timeout=300), "patient": ModelPolicy(idle_timeout=300, load_timeout=600)},
        launcher,
        load_timeout=0.1,
    )
    async with loader.running(grace=1.0):
        async with anyio.create_task_group() as group:
            group.start_soon(loader.load, "patient")
            await until(lambda: loader.state("patient") is SlotState.LOADING)
            with pytest.raises(LoadFailed, match=r"load timeout of 0\.1 s"):
                await loader.load("quick")
            assert loader.state("patient") is SlotState.LOADING
            launcher.loading.set()
        assert loader.state("patient") is SlotState.LOADED


async def test_unloading_a_loading_model_calls_off_the_load_ends_its_worker_and_frees_its_room() -> None:
    launcher = FakeLauncher()
    launcher.loading = anyio.Event()
    waiting: list[LoadCalledOff] = []
    async with LazyLoader(policies("a", "b"), launcher, max_loaded=1, capacity_wait=0.1).running(grace=1.0) as loader:
        async with anyio.create_task_group() as group:
            group.start_soon(refused, loader, "a", LoadCalledOff, waiting)
            await until(lambda: loader.snapshots_now()[0].pid is not None)
            with pytest.raises(CapacityExhausted):
                await loader.acquire("b")
            report = await loader.unload("a")
        worker = launcher.workers[0]
        assert (report.previous_state, report.state, report.reason) == (
            SlotState.LOADING,
            SlotState.UNLOADED,
            UnloadReason.MANUAL,
        )
        assert (report.worker_exited, report.pid, report.exit_code, worker.code) == (True, worker.pid, -9, -9)
        assert report.freed_rss_bytes == 1000
        assert waiting[0].retry_after is not None
        snapshot = await loader.snapshot("a")
        assert (snapshot.state, snapshot.pid, snapshot.last_unload_reason) == (
            SlotState.UNLOADED,
            None,
            UnloadReason.MANUAL,
        )
        launcher.loading.set()
        (await loader.acquire("b")).release()
        assert loader.state("b") is SlotState.LOADED


# ---- replicas


def scaling(*models: str, replicas_max: int = 2, **options: Any) -> dict[str, ModelPolicy]:
    """Policies of models that may scale out to `replicas_max` replicas."""
    return policies(*models, replicas_max=replicas_max, **options)


async def test_requests_scale_a_model_out_one_replica_at_a_time_up_to_replicas_max() -> None:
    launcher = FakeLauncher()
    loader = LazyLoader(scaling("a", devices=("cuda:0", "cuda:1")), launcher, max_loaded=4)
    async with loader.running(grace=1.0), anyio.create_task_group() as group:
        first = await loader.acquire("a")
        second = await loader.acquire("a")
        assert {first.replica, second.replica} == {0, 1}
        assert (first.cold, second.cold) == (True, True)
        assert [(placement.index, placement.device) for placement in launcher.placements] == [
            (0, "cuda:0"),
            (1, "cuda:1"),
        ]
        leases: list[Lease[FakeWorker]] = []

        async def third() -> None:
            leases.append(await loader.acquire("a"))

        group.start_soon(third)
        await until(lambda: loader.snapshots_now()[0].queued == 1)
        assert launcher.launches["a"] == 2
        second.release()
        await until(lambda: bool(leases))
        assert (leases[0].replica, leases[0].cold) == (1, False)
        first.release()
        leases[0].release()
        snapshot = await loader.snapshot("a")
        assert [(replica.index, replica.state, replica.device) for replica in snapshot.replicas] == [
            (0, SlotState.LOADED, "cuda:0"),
            (1, SlotState.LOADED, "cuda:1"),
        ]
        assert snapshot.memory is not None
        assert snapshot.memory.rss_bytes == 2000
        assert snapshot.pid == launcher.workers[0].pid


async def test_an_idle_replica_is_used_before_another_loads_and_the_lowest_free_first() -> None:
    launcher = FakeLauncher()
    async with LazyLoader(scaling("a", replicas_max=3), launcher, max_loaded=4).running(grace=1.0) as loader:
        leases = [await loader.acquire("a") for _ in range(3)]
        for lease in leases:
            lease.release()
        for _ in range(5):
            lease = await loader.acquire("a")
            assert lease.replica == 0
            lease.release()
        assert launcher.launches["a"] == 3


async def test_each_replica_is_reaped_at_its_own_deadline_down_to_replicas_min_and_a_lease_pins_its_own() -> None:
    policy = scaling("a", replicas_max=3, idle_timeout=0.2, replicas_min=1)
    async with LazyLoader(policy, FakeLauncher(), max_loaded=4).running(grace=1.0) as loader:
        await until(lambda: loader.state("a") is SlotState.LOADED)
        leases = [await loader.acquire("a") for _ in range(3)]
        leases[2].release()
        await until(lambda: len(loader.snapshots_now()[0].replicas) == 2)
        assert [replica.index for replica in loader.snapshots_now()[0].replicas] == [0, 1]
        leases[1].release()
        await until(lambda: len(loader.snapshots_now()[0].replicas) == 1)
        await anyio.sleep(0.3)  # past the idle timeout: the busy replica stays, and stays as replicas_min
        leases[0].release()
        await anyio.sleep(0.3)
        snapshot = await loader.snapshot("a")
        assert (snapshot.state, [replica.index for replica in snapshot.replicas]) == (SlotState.LOADED, [0])
        assert snapshot.seconds_until_unload is None
        assert snapshot.unloads_by_reason == {"idle": 2}
    reaped = [record.fields["replica"] for record in loader.events if record.fields.get("reason") == "idle"]
    assert reaped == [2, 1]


async def test_replicas_min_loads_at_start_up_and_keep_alive_applies_to_every_replica() -> None:
    launcher = FakeLauncher()
    loader = LazyLoader(scaling("a", replicas_max=3, replicas_min=2), launcher, max_loaded=4)
    async with loader.running(grace=1.0):
        await until(lambda: len(loader.workers("a")) == 2)
        assert launcher.launches["a"] == 2
        leases = [await loader.acquire("a", keep_alive=0) for _ in range(3)]
        for lease in leases:
            lease.release()
        await until(lambda: len(loader.workers("a")) == 2)
        assert loader.snapshots_now()[0].unloads_by_reason == {"keep_alive": 1}


async def test_a_manual_unload_drains_and_ends_every_replica_and_reports_each() -> None:
    launcher = FakeLauncher()
    async with LazyLoader(scaling("a"), launcher, max_loaded=4).running(grace=1.0) as loader:
        first, second = await loader.acquire("a"), await loader.acquire("a")
        reports: list[UnloadReport] = []

        async def unload() -> None:
            reports.append(await loader.unload("a"))

        async with anyio.create_task_group() as group:
            group.start_soon(unload)
            await until(lambda: loader._slot("a").drains == 1)
            first.release()
            await anyio.lowlevel.checkpoint()
            assert not reports
            second.release()
        (report,) = reports
        assert [(replica.index, replica.pid, replica.exit_code) for replica in report.replicas] == [
            (0, launcher.workers[0].pid, 0),
            (1, launcher.workers[1].pid, 0),
        ]
        assert [replica.freed_rss_bytes for replica in report.replicas] == [1000, 1000]
        assert (report.requests_drained, report.freed_rss_bytes, report.pid) == (2, 2000, launcher.workers[0].pid)
        assert loader.state("a") is SlotState.UNLOADED
        assert [worker.code for worker in launcher.workers] == [0, 0]


async def test_a_crashed_replica_leaves_the_others_serving() -> None:
    launcher = FakeLauncher()
    async with LazyLoader(scaling("a"), launcher, max_loaded=4).running(grace=1.0) as loader:
        first, second = await loader.acquire("a"), await loader.acquire("a")
        first.release()
        launcher.workers[0].exit(-9)
        await until(lambda: len(loader.snapshots_now()[0].replicas) == 1)
        snapshot = loader.snapshots_now()[0]
        assert (snapshot.state, snapshot.in_flight, snapshot.last_unload_reason) == (
            SlotState.LOADED,
            1,
            UnloadReason.CRASH,
        )
        second.release()
        lease = await loader.acquire("a")
        assert (lease.replica, lease.worker) == (1, launcher.workers[1])
        lease.release()


async def test_eviction_counts_replicas_and_takes_one_at_a_time() -> None:
    launcher = FakeLauncher()
    loader = LazyLoader(scaling("a", "b", replicas_max=2), launcher, max_loaded=2)
    async with loader.running(grace=1.0):
        leases = [await loader.acquire("a") for _ in range(2)]
        for lease in leases:
            lease.release()
        (await loader.acquire("b")).release()
        assert [len(loader.workers(model)) for model in "ab"] == [1, 1]
        assert loader.snapshots_now()[0].unloads_by_reason == {"evicted": 1}


async def test_a_scale_out_neither_evicts_nor_waits_for_room() -> None:
    launcher = FakeLauncher()
    loader = LazyLoader(scaling("a", "b"), launcher, max_loaded=2)
    async with loader.running(grace=1.0), anyio.create_task_group() as group:
        (await loader.acquire("b")).release()
        first = await loader.acquire("a")
        served: list[int] = []

        async def second() -> None:
            lease = await loader.acquire("a")
            served.append(lease.replica)
            lease.release()

        group.start_soon(second)
        await until(lambda: loader.snapshots_now()[0].queued == 1)
        assert (launcher.launches["a"], loader.state("b")) == (1, SlotState.LOADED)
        first.release()
        await until(lambda: served == [0])


async def test_a_failed_scale_out_fails_no_request_while_another_replica_serves() -> None:
    launcher = FakeLauncher()
    async with LazyLoader(scaling("a"), launcher, max_loaded=4, load_backoff=60).running(grace=1.0) as loader:
        first = await loader.acquire("a")
        launcher.failure = "cuda:1 is broken"
        served: list[int] = []

        async def second() -> None:
            lease = await loader.acquire("a")
            served.append(lease.replica)
            lease.release()

        async with anyio.create_task_group() as group:
            group.start_soon(second)
            await until(lambda: loader.snapshots_now()[0].consecutive_failures == 2)
            assert (loader.state("a"), launcher.launches["a"]) == (SlotState.LOADED, 3)
            first.release()
        assert served == [0]
        assert launcher.launches["a"] == 3  # backing off: the failing replica is not retried at every change

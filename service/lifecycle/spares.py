"""Warm spares: worker processes that have started Python and imported their engine's libraries, kept ready so that
a load skips the import tax.

A spare holds no model and has not touched a GPU (no CUDA context: nvidia-smi does not list it). It is started with
the environment of the models it can serve, so one spare serves any model with the same engine, worker Python,
environment (CUDA_VISIBLE_DEVICES and the model's own variables included) and import options (`SpareKey`). The pool
sits below the loader, in the default launcher: a load takes a ready spare instead of starting a process, and the
pool starts the next spare once the worker that took it has answered its first request (the cold request it was
taken for, which the replacement's imports would slow where CPU is short), at most REPLACEMENT_GRACE_SECONDS after
the load. A spare counts as no loaded model; the loader's policies
(leases, reaper, eviction) never see one. Spares end with the pool (`running`); one that dies unused is replaced
after a back-off that doubles with each spare in a row that ended without being taken (`respawn_delay`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Self

import anyio
import structlog
from anyio.abc import TaskGroup

from service.engines import resolve_engine
from service.engines.base import import_options
from service.lifecycle.memory import gpu_bytes_by_pid, process_rss_bytes
from service.lifecycle.worker_client import SpareProcess, WorkerLoadError, WorkerProcess, WorkerSpec

log = structlog.get_logger("service.lifecycle.spares")

RESPAWN_BACKOFF_SECONDS = 1.0
MAX_RESPAWN_BACKOFF_SECONDS = 60.0
# after a load that took a spare, its replacement waits for the worker's first answer (the cold request it was taken
# for) up to this long: on a machine short of CPU the replacement's imports would slow that very request
REPLACEMENT_GRACE_SECONDS = 30.0


def respawn_delay(
    losses: int, base: float = RESPAWN_BACKOFF_SECONDS, cap: float = MAX_RESPAWN_BACKOFF_SECONDS
) -> float:
    """Seconds to wait before starting a spare after `losses` spares in a row ended without being taken (died, or
    failed to import): none after none, then `base`, doubling up to `cap`."""
    return 0.0 if losses <= 0 else min(cap, base * 2 ** (losses - 1))


@dataclass(frozen=True)
class SpareKey:
    """What a spare is started with, and so which models it can serve: all whose worker spec has these."""

    engine: str
    python: str | None
    environment: tuple[tuple[str, str], ...]
    import_options: str  # JSON

    @classmethod
    def of(cls, spec: WorkerSpec) -> SpareKey:
        options = import_options(resolve_engine(spec.engine), spec.options)
        return cls(
            spec.engine,
            spec.python,
            tuple(sorted((spec.environment or {}).items())),
            json.dumps(options, sort_keys=True, default=str),
        )


@dataclass(frozen=True)
class SpareFigures:
    """One pool of spares now: how many it keeps, the ready ones (pids and memory), and the spares lost since one was
    last taken (`losses`, the last one's reason)."""

    engine: str
    configured: int
    ready: int
    starting: bool
    pids: tuple[int, ...]
    rss_bytes: int
    gpu_bytes: int | None  # None: not measured (no nvidia-smi, or not asked)
    losses: int
    last_error: str | None
    next_start_in: float | None  # seconds of back-off left before the next spare starts


@dataclass
class _Keeper:
    """The spares of one key: `count` kept ready, started from `spec` (the first model's)."""

    key: SpareKey
    spec: WorkerSpec
    count: int
    ready: list[SpareProcess] = field(default_factory=list)
    watchers: dict[int, anyio.CancelScope] = field(default_factory=dict)
    starting: bool = False
    losses: int = 0
    last_error: str | None = None
    backing_off_until: float | None = None
    loading: WorkerProcess | None = None  # the last load that took a spare: the next spare starts after it
    changed: anyio.Event = field(default_factory=anyio.Event)
    answered: anyio.Event = field(default_factory=anyio.Event)  # the first spare has imported, or failed to
    first_problem: str | None = None  # why the first spare could not import

    @property
    def retired(self) -> bool:
        """No more spares (`SparePool.retire`): a keeper is only made with a count above 0."""
        return self.count == 0


class SparePool:
    """Keeps `count` spares for each model's worker spec (models with the same `SpareKey` share them)."""

    def __init__(
        self,
        models: Mapping[str, tuple[WorkerSpec, int]],
        *,
        backoff: float = RESPAWN_BACKOFF_SECONDS,
        max_backoff: float = MAX_RESPAWN_BACKOFF_SECONDS,
        replacement_grace: float = REPLACEMENT_GRACE_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._replacement_grace = replacement_grace
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._closing = False
        self._models: dict[str, SpareKey] = {}
        self._retired: set[str] = set()  # models whose import probe failed
        keepers: dict[SpareKey, _Keeper] = {}
        for model, (spec, count) in models.items():
            key = self._models[model] = SpareKey.of(spec)
            keeper = keepers.setdefault(key, _Keeper(key, spec, count))
            keeper.count = max(keeper.count, count)
        self._keepers = {key: keeper for key, keeper in keepers.items() if keeper.count > 0}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Keep the spares in a task group of this pool's own; on exit end every spare (none outlives the pool)."""
        async with anyio.create_task_group() as group:
            for keeper in self._keepers.values():
                group.start_soon(self._keep, keeper, group, name=f"spares:{keeper.spec.engine}")
            try:
                yield self
            finally:
                self._closing = True
                with anyio.CancelScope(shield=True):
                    async with anyio.create_task_group() as stopping:
                        for keeper in self._keepers.values():
                            for spare in keeper.ready:
                                stopping.start_soon(spare.stop)
                group.cancel_scope.cancel()

    def take(self, spec: WorkerSpec) -> SpareProcess | None:
        """A ready spare that can serve this spec, now, or None. The keeper is told by `launch`, once the load that
        takes it is known, so that the replacement starts after that load and not beside it."""
        keeper = self._keepers.get(SpareKey.of(spec))
        if keeper is None or self._closing:
            return None
        while keeper.ready:
            spare = keeper.ready.pop(0)
            keeper.watchers.pop(spare.pid).cancel()
            if spare.process.returncode is None:
                keeper.losses = 0
                keeper.last_error = None
                log.info("warm_spare_taken", model=spec.model_id, engine=spec.engine, pid=spare.pid)
                return spare
        return None

    def import_answer(self, spec: WorkerSpec) -> Callable[[], Awaitable[str | None]] | None:
        """Where spares are kept for this spec's models: how the first one's imports went (None: they passed, else
        why not), which is what an import probe of an engine whose probe is its `import_libraries` would answer;
        None where no spares are kept."""
        keeper = self._keepers.get(SpareKey.of(spec))
        if keeper is None:
            return None

        async def answer() -> str | None:
            await keeper.answered.wait()
            return keeper.first_problem

        return answer

    async def retire(self, models: Iterable[str], reason: str) -> None:
        """Keep no more spares for these models (their import probe failed: a spare would fail the same imports
        again every back-off, for ever). A pool that also serves other models keeps its spares."""
        self._retired.update(models)
        if self._closing:
            return  # the pool is ending every spare itself
        for key, keeper in self._keepers.items():
            served = {model for model, model_key in self._models.items() if model_key == key}
            if keeper.retired or not served <= self._retired:
                continue
            keeper.count = 0
            keeper.last_error = f"no spares are kept: {reason}"
            log.info("warm_spares_retired", engine=keeper.spec.engine, models=sorted(served), reason=reason)
            spares, keeper.ready = keeper.ready, []
            for spare in spares:
                keeper.watchers.pop(spare.pid).cancel()
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as stopping:
                    for spare in spares:
                        stopping.start_soon(spare.stop)
            self._notify(keeper)

    async def launch(self, spec: WorkerSpec, task_group: TaskGroup) -> WorkerProcess:
        """The default launcher's work: a worker for this spec, from a ready spare when there is one, else a new
        process; either way loading."""
        spare = self.take(spec)
        if spare is None:
            return await WorkerProcess.spawn(spec, task_group, None)
        keeper = self._keepers[SpareKey.of(spec)]
        try:
            worker = keeper.loading = await WorkerProcess.spawn(spec, task_group, spare)
        finally:
            self._notify(keeper)
        return worker

    def figures_now(self) -> list[SpareFigures]:
        """Every pool's figures with resident memory from /proc (for synchronous readers such as metrics)."""
        return [self._figures(keeper, None) for keeper in self._keepers.values()]

    async def figures(self, model: str) -> SpareFigures | None:
        """The figures of the pool that serves this model, GPU memory measured now; None if no pool does."""
        key = self._models.get(model)
        keeper = None if key is None else self._keepers.get(key)
        if keeper is None:
            return None
        return self._figures(keeper, await gpu_bytes_by_pid() if keeper.ready else None)

    def _figures(self, keeper: _Keeper, gpu: dict[int, int] | None) -> SpareFigures:
        pids = tuple(spare.pid for spare in keeper.ready)
        until = keeper.backing_off_until
        return SpareFigures(
            engine=keeper.spec.engine,
            configured=keeper.count,
            ready=len(pids),
            starting=keeper.starting,
            pids=pids,
            rss_bytes=sum(process_rss_bytes(pid) or 0 for pid in pids),
            gpu_bytes=None if gpu is None else sum(gpu.get(pid, 0) for pid in pids),
            losses=keeper.losses,
            last_error=keeper.last_error,
            next_start_in=None if until is None else max(0.0, until - anyio.current_time()),
        )

    def _notify(self, keeper: _Keeper) -> None:
        keeper.changed.set()
        keeper.changed = anyio.Event()

    async def _keep(self, keeper: _Keeper, group: TaskGroup) -> None:
        """Start spares one at a time until `count` are ready; after a load that took one, once that worker has
        answered its first request (or exited, or the replacement grace has passed)."""
        while not self._closing and not keeper.retired:
            if len(keeper.ready) >= keeper.count:
                await keeper.changed.wait()
                continue
            if keeper.loading is not None:
                await keeper.loading.settled.wait()
                with anyio.move_on_after(self._replacement_grace):
                    await keeper.loading.first_answered.wait()
                keeper.loading = None
            delay = respawn_delay(keeper.losses, self._backoff, self._max_backoff)
            if delay > 0:
                keeper.backing_off_until = anyio.current_time() + delay
                await self._sleep(delay)
                keeper.backing_off_until = None
                if keeper.retired:
                    return
            keeper.starting = True
            started = anyio.current_time()
            try:
                spare = await SpareProcess.start(keeper.spec)
            except WorkerLoadError as error:
                if not keeper.answered.is_set():
                    keeper.first_problem = str(error)
                    keeper.answered.set()
                if keeper.retired:
                    return
                keeper.losses += 1
                keeper.last_error = str(error)
                log.warning("warm_spare_failed", engine=keeper.spec.engine, error=str(error), losses=keeper.losses)
                continue
            finally:
                keeper.starting = False
            keeper.answered.set()
            if keeper.retired:
                await spare.stop()
                return
            keeper.ready.append(spare)
            scope = keeper.watchers[spare.pid] = anyio.CancelScope()
            group.start_soon(self._watch, keeper, spare, scope, name=f"spare:{spare.pid}")
            log.info(
                "warm_spare_ready",
                engine=keeper.spec.engine,
                pid=spare.pid,
                seconds=round(anyio.current_time() - started, 3),
                rss_bytes=process_rss_bytes(spare.pid),
            )

    async def _watch(self, keeper: _Keeper, spare: SpareProcess, scope: anyio.CancelScope) -> None:
        """Notice a ready spare that dies unused (a kill, the OOM killer) and have it replaced; cancelled by `take`."""
        try:
            with scope:
                code = await spare.wait()
        except anyio.get_cancelled_exc_class():
            await spare.stop()  # the pool's group is closing with this spare still running
            raise
        if scope.cancelled_caught or self._closing:
            return
        keeper.watchers.pop(spare.pid, None)
        keeper.ready.remove(spare)
        keeper.losses += 1
        keeper.last_error = f"spare (pid {spare.pid}) exited unused with code {code}"
        log.warning("warm_spare_died", engine=keeper.spec.engine, pid=spare.pid, exit_code=code, losses=keeper.losses)
        self._notify(keeper)

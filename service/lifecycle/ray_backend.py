"""The Ray backend (`--ray-address`): each replica of a model is a Ray actor that Ray's scheduler places on a node with
the replica's resources free (`RayRequest`), instead of a worker process on this machine.

The loader does not change: `RayBackend.launch` is its launcher, and a `RayWorker` is a `SpeechWorker` (plus the node
it runs on), so leases, single flight, the reaper, keep_alive, eviction and unload reports apply as to local workers.
An actor that Ray cannot place yet waits, up to the capacity wait, then the request gets CapacityExhausted (503,
Retry-After): Ray's resource accounting is the cluster's GPU budget. An actor Ray has placed but whose process is
still starting at the capacity wait's end is waited for (bounded by the load timeout): a slow start is no full
cluster. Unloading kills the actor, whose process exits
and gives back everything it held. Audio streams from the actor's generator method; a reader that leaves cancels the
task (`ray.cancel`); the generation watchdog kills the actor; an actor or node that dies mid-request fails the
request with WorkerCrashed, and the loader's watcher marks the replica `crash`.

Ray gives no exit code for an actor: one killed (by an unload, the watchdog, its node's end) reads as killed by
SIGKILL. On this machine (the actor's host is the server's) a stop also waits until the actor's process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self

import anyio
import numpy as np
import ray
import structlog
from anyio.abc import TaskGroup
from ray._private import state as ray_state
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from service.engines.base import AudioChunk, AudioClip, EditRequest, GpuMemory, SynthesisRequest
from service.lazy_loader import CapacityExhausted
from service.lifecycle.memory import MemoryUsage
from service.lifecycle.policy import Placement
from service.lifecycle.ray_request import RayRequest
from service.lifecycle.worker_client import (
    CANCEL_GRACE_SECONDS,
    STOP_GRACE_SECONDS,
    EngineRequestError,
    GenerationTimeout,
    StageMark,
    WorkerCrashed,
    WorkerLoadError,
    WorkerSpec,
)
from service.worker.protocol import Stage
from service.worker.ray_actor import ACTOR_THREADS, EngineActor

log = structlog.get_logger("service.lifecycle.ray_backend")

KILLED_EXIT_CODE = -signal.SIGKILL
# chunks an actor may make ahead of its reader before it waits (Ray's generator backpressure)
STREAM_AHEAD_CHUNKS = 8
# how long a status call waits for an actor's memory figures
MEMORY_TIMEOUT_SECONDS = 5.0

RemoteEngineActor: Any = ray.remote(EngineActor)


def _placed(actor: Any) -> bool:
    """Whether Ray has given the actor a worker process on some node (its GCS entry has a pid; 0 while no node has
    room). Ray's public state API needs the dashboard, which a cluster may run without; the handle keeps its id in
    `_actor_id`."""
    entry: dict[str, Any] = ray_state.actors(actor_id=actor._actor_id.hex())
    return bool(entry.get("Pid"))


def _reason(error: BaseException) -> str:
    """An error from Ray in one line: the engine's own exception for a failed task, else Ray's first line."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


class ClusterFull(CapacityExhausted):
    """No node of the cluster had room for the replica's actor within the capacity wait."""

    def __init__(self, model_id: str, waited: float, resources: Mapping[str, Any]) -> None:
        super().__init__(model_id, waited)
        self.args = (f"no node of the Ray cluster has room for {model_id!r} {resources} (waited {waited:.1f} s)",)


class RayBackend:
    """The connection to a Ray cluster, and the launcher that starts replicas there."""

    def __init__(self, address: str, capacity_wait: float) -> None:
        self._address = address
        self._capacity_wait = capacity_wait

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Connected to the cluster as a driver; on exit, disconnected (an actor the loader did not end dies with its
        driver: none is detached)."""
        # a Ray driver takes SIGTERM and SIGINT (its exit, its crash logger): they stay the server's, for its stop
        handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
        ray.init(address=self._address, log_to_driver=False, logging_level=logging.WARNING)
        if threading.current_thread() is threading.main_thread():
            for number, handler in handlers.items():
                if handler is not None:
                    signal.signal(number, handler)
        log.info("ray_connected", address=self._address)
        try:
            yield self
        finally:
            ray.shutdown()

    async def launch(
        self, spec: WorkerSpec, request: RayRequest, placement: Placement, task_group: TaskGroup
    ) -> RayWorker:
        """Create one replica's actor and wait until Ray has placed and started it, up to the capacity wait (then the
        actor is killed and CapacityExhausted raised); `ready` then loads the engine in it."""
        options: dict[str, Any] = {**request.actor_resources(placement), "max_concurrency": ACTOR_THREADS}
        if request.node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(request.node, soft=request.node_soft)
        stages: list[StageMark] = [(Stage.STARTING, time.time())]
        started = anyio.current_time()
        actor: Any = RemoteEngineActor.options(**options).remote(dict(spec.environment or {}))
        reply = actor.where.remote()
        try:
            with anyio.move_on_after(self._capacity_wait) as waiting:
                where: dict[str, Any] = await reply
            if waiting.cancelled_caught and _placed(actor):
                where = await reply
        except ray.exceptions.RayError as error:
            ray.kill(actor)
            raise WorkerLoadError(f"the actor did not start: {_reason(error)}") from error
        except BaseException:
            ray.kill(actor)
            raise
        if waiting.cancelled_caught and not _placed(actor):
            ray.kill(actor)
            resources = request.actor_resources(placement)
            log.warning("ray_actor_unplaced", model=spec.model_id, resources=resources, seconds=self._capacity_wait)
            raise ClusterFull(spec.model_id, anyio.current_time() - started, resources)
        return RayWorker(spec, actor, where, task_group, stages)


class RayWorker:
    """One replica's actor, as the loader and the speech service drive a worker."""

    def __init__(
        self, spec: WorkerSpec, actor: Any, where: Mapping[str, Any], task_group: TaskGroup, stages: list[StageMark]
    ) -> None:
        self.spec = spec
        self._actor = actor
        self.pid: int = where["pid"]
        self.node_id: str = where["node_id"]
        self.node = f"{self.node_id[:12]}@{where['node_ip']}"
        # the actor's process, when it runs on this machine: a stop waits for its end
        self._pidfd = os.pidfd_open(self.pid) if where["host"] == platform.node() else None
        self.stages = stages
        self.gpu_memory = GpuMemory()
        self.returncode: int | None = None
        self.exit_reason: str | None = None
        self._stopping = False
        self._exited = anyio.Event()
        task_group.start_soon(self._watch, actor.lifetime.remote(), name=f"ray-actor:{spec.model_id}:{self.pid}")

    @property
    def load_stage(self) -> StageMark | None:
        return self.stages[-1] if self.stages else None

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    async def _watch(self, lifetime: Any) -> None:
        """Wait for the actor's end (its `lifetime` call fails when it dies, however it dies), then for its process."""
        try:
            await lifetime
        except ray.exceptions.RayError as error:
            if not self._stopping and self.exit_reason is None:
                log.warning("ray_actor_died", model=self.spec.model_id, pid=self.pid, node=self.node, cause=str(error))
        finally:
            with anyio.CancelScope(shield=True):
                await self._process_gone()
                self.returncode = KILLED_EXIT_CODE
                self._exited.set()

    async def _process_gone(self) -> None:
        """On this machine: wait until the actor's process has exited (SIGKILL past the grace); elsewhere Ray's word
        that the actor died is all there is."""
        if self._pidfd is None:
            return
        with anyio.move_on_after(STOP_GRACE_SECONDS):
            await anyio.wait_readable(self._pidfd)
            os.close(self._pidfd)
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        await anyio.wait_readable(self._pidfd)
        os.close(self._pidfd)

    def _kill(self) -> None:
        with contextlib.suppress(ray.exceptions.RayError):
            ray.kill(self._actor, no_restart=True)

    async def ready(self) -> None:
        """Import the engine's libraries and load its weights in the actor; WorkerLoadError when it cannot.
        Cancelled (a load timeout, an unload), it kills the actor and waits for its end."""
        engine, options = self.spec.engine, dict(self.spec.options)
        try:
            self.stages.append((Stage.IMPORTING, time.time()))
            await self._actor.prepare.remote(engine, options)
            self.stages.append((Stage.READING_WEIGHTS, time.time()))
            gpu = await self._actor.load.remote(engine, options)
        except ray.exceptions.RayError as error:
            await self.stop()
            raise WorkerLoadError(_reason(error)) from error
        except BaseException:
            await self.stop()
            raise
        self.gpu_memory = GpuMemory(**gpu)
        self.stages.append((Stage.READY, time.time()))

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def stop(self) -> int:
        """Kill the actor and wait for its end; requests in flight end at once with WorkerCrashed."""
        with anyio.CancelScope(shield=True):
            self._stopping = True
            self._kill()
            returncode = await self.wait()
        return returncode

    async def memory(self) -> MemoryUsage:
        """The actor's own figures (resident memory, the engine's GPU memory); unknown once it has gone."""
        if self.exited:
            return MemoryUsage(None, None)
        with anyio.move_on_after(MEMORY_TIMEOUT_SECONDS), contextlib.suppress(ray.exceptions.RayError):
            figures: dict[str, int | None] = await self._actor.memory.remote()
            return MemoryUsage(figures["rss_bytes"], figures["gpu_bytes"])
        return MemoryUsage(None, None)

    def synthesize(
        self, request: SynthesisRequest, on_finished: Callable[[], None] | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        """Audio chunks as the actor makes them; `on_finished` once the engine is done with the request."""
        return self._request("synthesize", request.header(), request.reference, on_finished)

    def edit(
        self, request: EditRequest, on_finished: Callable[[], None] | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        """The edited clip's chunks as the actor makes them."""
        return self._request("edit", request.header(), request.audio, on_finished)

    async def _request(
        self, op: str, request: dict[str, Any], audio: AudioClip | None, on_finished: Callable[[], None] | None
    ) -> AsyncGenerator[AudioChunk, None]:
        rate = None if audio is None else audio.sample_rate
        payload = b"" if audio is None else np.asarray(audio.samples, dtype="<f4").tobytes()
        generate = self._actor.generate.options(_generator_backpressure_num_objects=STREAM_AHEAD_CHUNKS)
        items = generate.remote(op, request, rate, payload)
        # the watchdog counts the time this reader waits for the actor, not the time its own reader keeps it
        waited = 0.0
        finished = False
        try:
            while True:
                started = anyio.current_time()
                item = await self._next_item(items, waited)
                waited += anyio.current_time() - started
                if item is None:
                    raise WorkerCrashed(f"the actor of {self.spec.model_id!r} ended the stream without an answer")
                if item["type"] == "chunk":
                    yield item["audio"]
                    continue
                finished = True
                if on_finished is not None:
                    on_finished()
                if item["type"] == "error":
                    raise EngineRequestError(item["kind"], item["message"], item["param"])
                self.gpu_memory = GpuMemory(**item["gpu"])
                return
        finally:
            if not finished and not self.exited and not self._stopping:
                await self._cancel(items)

    async def _next_item(self, items: Any, waited: float) -> dict[str, Any] | None:
        """The stream's next item, None at its end; past the generation limit the actor is killed."""
        limit = self.spec.generation_timeout
        with anyio.move_on_after(None if limit is None else limit - waited):
            try:
                reference = await items.__anext__()
                item: dict[str, Any] = await reference
            except StopAsyncIteration:
                return None
            except ray.exceptions.RayError as error:
                why = "was stopped" if self._stopping else f"died ({_reason(error)})"
                raise WorkerCrashed(f"the actor of {self.spec.model_id!r} {why} mid-request") from error
            return item
        assert limit is not None
        self.exit_reason = f"killed by the generation watchdog after {limit:g} s"
        log.warning("generation_watchdog_fired", model=self.spec.model_id, pid=self.pid, limit_seconds=limit)
        await self.stop()
        raise GenerationTimeout(
            f"model {self.spec.model_id!r} took longer than {limit:g} s; its actor was killed and the next request "
            "starts a new one"
        )

    async def _cancel(self, items: Any) -> None:
        """Cancel the request's task and wait for the stream's end, so that the next request starts clean."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE_SECONDS):
            ray.cancel(items)
            with contextlib.suppress(ray.exceptions.RayError):
                async for _ in items:
                    pass

"""The server's side of a worker process: start it, stream requests through it, watch it, stop it."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import numpy as np
import structlog
from anyio.abc import Process, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from service.engines import resolve_engine
from service.engines.base import AudioChunk, AudioClip, EditRequest, GpuMemory, SynthesisRequest, import_options
from service.lazy_loader import Worker
from service.lifecycle.memory import MemoryUsage, measure
from service.settings import PROJECT_ROOT
from service.worker.protocol import PARENT_PID_ENV, Frame, FrameReader, ProtocolError, Stage, write_frame

log = structlog.get_logger("service.lifecycle.worker_client")

STOP_GRACE_SECONDS = 5.0
CANCEL_GRACE_SECONDS = 5.0


class WorkerLoadError(RuntimeError):
    """The worker could not load its engine (or a spare could not import its libraries); the message is the
    worker's own reason."""


class WorkerCrashed(RuntimeError):
    """The worker process ended while serving a request."""


class GenerationTimeout(WorkerCrashed):
    """The watchdog killed a worker that was busy past the generation limit."""


@dataclass
class _Inbound:
    """A request's frames on their way from the pump to its reader, and the audio bytes among them not yet read;
    `taken` is set whenever the reader takes some, or stops reading; `paused_seconds`: how long the worker waited
    for the reader (the watchdog does not count it)."""

    send: MemoryObjectSendStream[Frame]
    buffered: int = 0
    reading: bool = True
    taken: anyio.Event = field(default_factory=anyio.Event)
    paused_seconds: float = 0.0

    def take(self, frame: Frame) -> None:
        self.buffered -= len(frame.payload)
        self.taken.set()

    def stop_reading(self) -> None:
        self.reading = False
        self.taken.set()


class EngineRequestError(Exception):
    """The engine refused or failed one request; the worker is still healthy."""

    def __init__(self, kind: str, message: str, param: str | None) -> None:
        super().__init__(message)
        self.kind = kind
        self.param = param


class SpeechWorker(Worker, Protocol):
    """What the speech service and the status drive: the loader's Worker, plus requests and the engine's GPU
    figures. WorkerProcess is the real one; tests may launch others (`create_app(..., launcher=...)`)."""

    gpu_memory: GpuMemory

    def synthesize(
        self, request: SynthesisRequest, on_finished: Callable[[], None] | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        """Audio chunks as they are made; `on_finished` once the engine is done with the request."""
        ...

    def edit(
        self, request: EditRequest, on_finished: Callable[[], None] | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        """The edited clip's chunks as they are made."""
        ...


# a stage of a load and when it began (wall clock, seconds since the epoch)
StageMark = tuple[Stage, float]


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process loads: an engine name and its options; `python` runs it (default: the server's own
    interpreter)."""

    model_id: str
    engine: str
    options: Mapping[str, Any]
    environment: Mapping[str, str] | None = None
    generation_timeout: float | None = None
    python: str | None = None
    max_buffered_bytes: int | None = None


# the libraries' own places to write (home, caches, temporary files) and their hubs, as environment variables
SCRATCH_FOLDERS = {
    "HOME": "home",
    "XDG_CACHE_HOME": "cache",
    "HF_HOME": "cache/huggingface",
    "MODELSCOPE_CACHE": "cache/modelscope",
    "TORCHINDUCTOR_CACHE_DIR": "cache/torchinductor",
    "NUMBA_CACHE_DIR": "cache/numba",
    "TMPDIR": "tmp",
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def sweep_scratch(folder: Path) -> None:
    """Empty the workers' temporary files under `folder` (a killed worker leaves its own behind)."""
    shutil.rmtree(folder / SCRATCH_FOLDERS["TMPDIR"], ignore_errors=True)


def scratch_environment(folder: Path) -> dict[str, str]:
    """The environment that sends every write of a worker's libraries under `folder` (created as needed) and keeps
    their hubs offline."""
    environment = {name: str(folder / relative) for name, relative in SCRATCH_FOLDERS.items()}
    for path in environment.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    return environment | OFFLINE


def _worker_environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env[PARENT_PID_ENV] = str(os.getpid())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


async def _open_worker(spec: WorkerSpec, extra: Mapping[str, str] | None = None) -> Process:
    """Start a worker process; shielded, since a start cancelled half-way would leave a process nobody holds."""
    with anyio.CancelScope(shield=True):
        process = await anyio.open_process(
            [spec.python or sys.executable, "-m", "service.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=_worker_environment({**(spec.environment or {}), **(extra or {})}),
            start_new_session=True,
        )
    return process


async def probe(spec: WorkerSpec) -> str | None:
    """Run the engine's import probe in a worker process of this spec (no weights, no GPU: CUDA_VISIBLE_DEVICES is
    empty); None when it passed, else why not."""
    process = await _open_worker(spec, {"CUDA_VISIBLE_DEVICES": ""})
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        await write_frame(process.stdin, Frame({"op": "probe", "engine": spec.engine, "options": dict(spec.options)}))
        answer = await FrameReader(process.stdout).read()
    except BaseException:
        process.kill()  # cancelled (the server is stopping) or the pipe broke: the answer no longer matters
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.stdin.aclose()
            await process.wait()
    if answer is None or answer.header.get("type") != "probed":
        return f"the import probe's worker exited with code {process.returncode} before it answered"
    problem: str | None = answer.header.get("problem")
    return problem


async def _reap(process: Process, *, kill: bool) -> int:
    """Wait for the process to end: SIGKILL first if `kill`, else ask, then terminate, then kill."""
    if kill:
        process.kill()
    with anyio.move_on_after(STOP_GRACE_SECONDS):
        return await process.wait()
    process.terminate()
    with anyio.move_on_after(STOP_GRACE_SECONDS):
        return await process.wait()
    process.kill()
    return await process.wait()


class SpareProcess:
    """A warm spare: a worker process that has started Python and imported its engine's libraries (no model, no
    GPU) and waits for the `load` of a model with its engine, environment and import options (`spec`)."""

    def __init__(self, spec: WorkerSpec, process: Process, reader: FrameReader, started: float) -> None:
        self.spec = spec
        self.process = process
        self.reader = reader
        # its stages before any load: starting, importing
        self.stages: list[StageMark] = [(Stage.STARTING, started)]

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, spec: WorkerSpec) -> SpareProcess:
        """Start a worker process and wait until it has imported its engine's libraries; raise WorkerLoadError
        when it cannot. Cancelled, it kills the process and waits for its end."""
        started = time.time()
        process = await _open_worker(spec)
        assert process.stdin is not None
        assert process.stdout is not None
        spare = cls(spec, process, FrameReader(process.stdout), started)
        options = import_options(resolve_engine(spec.engine), spec.options)
        try:
            await write_frame(process.stdin, Frame({"op": "prepare", "engine": spec.engine, "options": options}))
            answer = await spare.reader.read()
            while answer is not None and answer.header.get("type") == "stage":
                spare.stages.append((Stage(answer.header["stage"]), float(answer.header["at"])))
                answer = await spare.reader.read()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _reap(process, kill=True)
            raise
        if answer is None or answer.header.get("type") != "prepared":
            with anyio.CancelScope(shield=True):
                returncode = await _reap(process, kill=False)
            reason = answer.header.get("error") if answer is not None else None
            raise WorkerLoadError(reason or f"spare exited with code {returncode} before it had imported")
        return spare

    async def wait(self) -> int:
        """Wait until the process has exited and return its exit code."""
        return await self.process.wait()

    async def stop(self) -> int:
        """End an unused spare: close its input (it exits), then terminate, then kill."""
        with anyio.CancelScope(shield=True):
            assert self.process.stdin is not None
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await self.process.stdin.aclose()
            returncode = await _reap(self.process, kill=False)
        return returncode


class WorkerProcess:
    """One running worker. Requests are routed by id; the process serves them one at a time."""

    def __init__(
        self,
        spec: WorkerSpec,
        process: Process,
        reader: FrameReader,
        task_group: TaskGroup,
        stages: list[StageMark] | None = None,
    ) -> None:
        self.spec = spec
        self._process = process
        self._reader = reader
        # this load's stages as they came; a load that took a spare has none before reading_weights
        self.stages: list[StageMark] = stages or []
        self._task_group = task_group
        self._ids = itertools.count(1)
        self._pending: dict[int, _Inbound] = {}
        self._finishers: dict[int, Callable[[], None]] = {}
        self._write_lock = anyio.Lock()
        self._exited = anyio.Event()
        # set once the load has ended, loaded or not
        self.settled = anyio.Event()
        # set once the worker has finished its first request, or has exited
        self.first_answered = anyio.Event()
        self._stopping = False
        self.returncode: int | None = None
        self.exit_reason: str | None = None
        self.gpu_memory = GpuMemory()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def load_stage(self) -> StageMark | None:
        """The stage the load is in now (the last one reported), None before the first."""
        return self.stages[-1] if self.stages else None

    @classmethod
    async def start(cls, spec: WorkerSpec, task_group: TaskGroup) -> WorkerProcess:
        """Start a worker and wait until its engine is loaded; raise WorkerLoadError when it cannot load."""
        worker = await cls.spawn(spec, task_group)
        await worker.ready()
        return worker

    @classmethod
    async def spawn(cls, spec: WorkerSpec, task_group: TaskGroup, spare: SpareProcess | None = None) -> WorkerProcess:
        """Start a worker process, or take `spare` (started for a spec with this one's engine, environment and import
        options), and tell it to load its engine; `ready` waits for the load."""
        if spare is not None:
            worker = cls(spec, spare.process, spare.reader, task_group)
        else:
            started = time.time()
            process = await _open_worker(spec)
            assert process.stdout is not None
            worker = cls(spec, process, FrameReader(process.stdout), task_group, [(Stage.STARTING, started)])
        try:
            await worker._send({"op": "load", "engine": spec.engine, "options": dict(spec.options)})
        except BaseException:
            await worker._end_unready(kill=True)
            raise
        return worker

    async def ready(self) -> None:
        """Wait until the engine is loaded; raise WorkerLoadError when it cannot load. Cancelled (a load timeout, an
        unload), it SIGKILLs the process, which may be stopped or stuck, and waits for its end."""
        try:
            await self._load_answer()
        finally:
            self.settled.set()

    async def _load_answer(self) -> None:
        try:
            answer = await self._reader.read()
            while answer is not None and answer.header.get("type") == "stage":
                self.stages.append((Stage(answer.header["stage"]), float(answer.header["at"])))
                answer = await self._reader.read()
        except BaseException:
            await self._end_unready(kill=True)
            raise
        if answer is None or answer.header.get("type") != "ready":
            returncode = await self._end_unready(kill=False)
            reason = answer.header.get("error") if answer is not None else None
            raise WorkerLoadError(reason or f"worker exited with code {returncode} before it was ready")
        self.gpu_memory = GpuMemory(**answer.header["gpu"])
        self.stages.append((Stage.READY, time.time()))
        self._task_group.start_soon(self._pump)

    async def _end_unready(self, *, kill: bool) -> int:
        """End a worker that never became ready (no pump watches it) and record its exit."""
        with anyio.CancelScope(shield=True):
            returncode = await _reap(self._process, kill=kill)
        self.returncode = returncode
        self._exited.set()
        self.first_answered.set()
        return returncode

    async def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        assert self._process.stdin is not None
        async with self._write_lock:
            await write_frame(self._process.stdin, Frame(header, payload))

    async def _pump(self) -> None:
        """Route the worker's frames to their requests until it exits; then fail whatever is still waiting."""
        try:
            while (frame := await self._reader.read()) is not None:
                request_id = frame.header.get("id", -1)
                inbound = self._pending.get(request_id)
                if inbound is not None:
                    await self._deliver(inbound, frame)
                if frame.header.get("type") in ("done", "error"):
                    self._finish(request_id)
        except (ProtocolError, ValueError) as error:
            log.error("worker_protocol_error", model=self.spec.model_id, pid=self.pid, error=str(error))
            self._process.kill()
        except anyio.get_cancelled_exc_class():
            # the server is closing its task group with this worker still running: it must not outlive the server
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            raise
        finally:
            with anyio.CancelScope(shield=True):
                self.returncode = await self._process.wait()
                self._exited.set()
                self.first_answered.set()
                for inbound in self._pending.values():
                    inbound.send.close()
                for request_id in list(self._finishers):
                    self._finish(request_id)

    async def _deliver(self, inbound: _Inbound, frame: Frame) -> None:
        """Hand a frame to its request's reader. Past the buffer limit the pump waits for the reader to take some
        first, so the worker (blocked writing to its pipe) makes no more than a reader takes: a slow client costs at
        most the limit, and one that stops reading is cut off by the send timeout, which ends the wait."""
        limit = self.spec.max_buffered_bytes
        size = len(frame.payload)
        while limit is not None and inbound.reading and inbound.buffered and inbound.buffered + size > limit:
            inbound.taken = anyio.Event()
            paused = anyio.current_time()
            await inbound.taken.wait()
            inbound.paused_seconds += anyio.current_time() - paused
        inbound.buffered += size
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            inbound.send.send_nowait(frame)

    def _finish(self, request_id: int) -> None:
        """The worker is done with this request (its frames may still be on their way to the client)."""
        self.first_answered.set()
        finisher = self._finishers.pop(request_id, None)
        if finisher is not None:
            finisher()

    async def wait(self) -> int:
        """Wait until the process has exited and return its exit code."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    async def memory(self) -> MemoryUsage:
        return await measure(self.pid)

    def synthesize(
        self, request: SynthesisRequest, on_finished: Callable[[], None] | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        """Audio chunks as the worker produces them; `on_finished` is called as soon as the worker is done with the
        request, even if its chunks are still being read."""
        return self._request("synthesize", request.header(), request.reference, on_finished)

    def edit(
        self, request: EditRequest, on_finished: Callable[[], None] | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        """The edited clip's chunks as the worker produces them."""
        return self._request("edit", request.header(), request.audio, on_finished)

    async def _request(
        self, op: str, request: dict[str, Any], audio: AudioClip | None, on_finished: Callable[[], None] | None
    ) -> AsyncGenerator[AudioChunk, None]:
        request_id = next(self._ids)
        # unbounded as a stream: what bounds it is `_deliver`, which counts the audio bytes waiting in it
        send, receive = anyio.create_memory_object_stream[Frame](max_buffer_size=math.inf)
        inbound = self._pending[request_id] = _Inbound(send)
        if on_finished is not None:
            self._finishers[request_id] = on_finished
        finished = False
        header: dict[str, Any] = {"op": op, "id": request_id, "request": request}
        payload = b""
        if audio is not None:
            header["audio_rate"] = audio.sample_rate
            payload = np.asarray(audio.samples, dtype="<f4").tobytes()
        deadline = None if self.spec.generation_timeout is None else anyio.current_time() + self.spec.generation_timeout
        try:
            try:
                await self._send(header, payload)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
                raise WorkerCrashed(f"worker of {self.spec.model_id!r} is gone: {error!r}") from error
            while (frame := await self._next_frame(receive, deadline, inbound)) is not None:
                kind = frame.header["type"]
                inbound.take(frame)
                if kind == "chunk":
                    yield np.frombuffer(frame.payload, dtype="<f4")
                    continue
                finished = True
                if kind == "error":
                    raise EngineRequestError(frame.header["kind"], frame.header["message"], frame.header.get("param"))
                if frame.header.get("cancelled"):
                    raise self._shut_down_mid_request()
                self.gpu_memory = GpuMemory(**frame.header["gpu"])
                return
            if self._stopping:
                raise self._shut_down_mid_request()
            raise WorkerCrashed(f"worker of {self.spec.model_id!r} exited with code {await self.wait()} mid-request")
        finally:
            inbound.stop_reading()
            if not finished and not self.exited and not self._stopping:
                await self._cancel(request_id, receive)
            self._pending.pop(request_id, None)
            self._finishers.pop(request_id, None)
            send.close()
            receive.close()

    def _shut_down_mid_request(self) -> WorkerCrashed:
        return WorkerCrashed(f"worker of {self.spec.model_id!r} stopped mid-request (it was shut down)")

    async def _next_frame(
        self, receive: MemoryObjectReceiveStream[Frame], deadline: float | None, inbound: _Inbound
    ) -> Frame | None:
        """The request's next frame; None once the worker has gone. Past the deadline (moved on by the time the
        worker waited for this reader) the worker is killed."""
        try:
            return receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return None
        with anyio.move_on_after(
            None if deadline is None else deadline + inbound.paused_seconds - anyio.current_time()
        ):
            try:
                return await receive.receive()
            except anyio.EndOfStream:
                return None
        self.exit_reason = f"killed by the generation watchdog after {self.spec.generation_timeout:g} s"
        log.warning(
            "generation_watchdog_fired",
            model=self.spec.model_id,
            pid=self.pid,
            limit_seconds=self.spec.generation_timeout,
        )
        self._process.kill()
        await self.wait()
        raise GenerationTimeout(
            f"model {self.spec.model_id!r} took longer than {self.spec.generation_timeout:g} s; "
            "its worker was stopped and the next request starts a new one"
        )

    async def _cancel(self, request_id: int, receive: MemoryObjectReceiveStream[Frame]) -> None:
        """Tell the worker to stop this request and wait for its last frame, so the next request starts clean."""
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(CANCEL_GRACE_SECONDS),
            contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError),
        ):
            await self._send({"op": "cancel", "id": request_id})
            async for frame in receive:
                if frame.header["type"] != "chunk":
                    break

    async def stop(self) -> int:
        """End the process: ask politely, then terminate, then kill. Returns its exit code. Requests still in flight
        end at once with WorkerCrashed, without waiting for the engine's current chunk."""
        with anyio.CancelScope(shield=True):
            self._stopping = True
            for inbound in self._pending.values():
                inbound.stop_reading()
                inbound.send.close()
            if not self.exited:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    await self._send({"op": "shutdown"})
                    assert self._process.stdin is not None
                    await self._process.stdin.aclose()
            returncode = await _reap(self._process, kill=False)
        return returncode

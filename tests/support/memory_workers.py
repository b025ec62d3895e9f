"""Workers that run a model's engine inside the test's own process, through `create_app(..., launcher=...)`: HTTP
behaviour tested in-process (Litestar's test client, or tests/support/asgi.py), without a worker process per model."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator

import anyio
from anyio.abc import TaskGroup
from litestar import Litestar

from service.app import create_app
from service.engines import resolve_engine
from service.engines.base import AudioChunk, EditRequest, Engine, EngineInputError, GpuMemory, SynthesisRequest
from service.lazy_loader import Placement
from service.lifecycle.memory import MemoryUsage
from service.lifecycle.worker_client import EngineRequestError, SpeechWorker
from service.models.catalog import ModelSpec
from service.settings import Settings

# ids far above any real pid, so a test can tell them from processes
_PIDS = itertools.count(10_000_000)
# engines whose loaded object keeps nothing of one request for the next, loaded once per test process and shared:
# a Piper voice's load (its ONNX session) is most of an in-process test's CPU
SHARED_LOADS = frozenset({"piper"})
_loaded: dict[str, Engine] = {}


class InMemoryWorker:
    """The SpeechWorker protocol over an engine object: its load and each of its chunks run in a thread; what the
    engine raises reaches the server as a worker process's error frame would (EngineRequestError)."""

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._engine: Engine | None = None
        self._ended = anyio.Event()
        self.pid = next(_PIDS)
        self.gpu_memory = GpuMemory()
        self.exit_reason: str | None = None

    async def ready(self) -> None:
        shared = self._spec.engine in SHARED_LOADS
        key = json.dumps([self._spec.engine, self._spec.options], sort_keys=True, default=str)
        if shared and key in _loaded:
            self._engine = _loaded[key]
            return
        engine = resolve_engine(self._spec.engine)(self._spec.options)
        await anyio.to_thread.run_sync(engine.load)
        self._engine = engine
        if shared:
            _loaded[key] = engine

    async def wait(self) -> int:
        await self._ended.wait()
        return 0

    async def stop(self) -> int:
        self._ended.set()
        return 0

    async def memory(self) -> MemoryUsage:
        return MemoryUsage(rss_bytes=None, gpu_bytes=None)

    def synthesize(
        self, request: SynthesisRequest, on_finished: Callable[[], None] | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        assert self._engine is not None
        return _chunks(self._engine.synthesize(request), on_finished)

    def edit(
        self, request: EditRequest, on_finished: Callable[[], None] | None = None
    ) -> AsyncGenerator[AudioChunk, None]:
        edit = getattr(self._engine, "edit", None)
        assert edit is not None, f"{self._spec.id} cannot edit"
        return _chunks(edit(request), on_finished)


async def _chunks(
    produced: Iterator[AudioChunk], on_finished: Callable[[], None] | None
) -> AsyncGenerator[AudioChunk, None]:
    try:
        while (chunk := await anyio.to_thread.run_sync(next, produced, None)) is not None:
            yield chunk
    except EngineInputError as error:  # as service/worker/__main__.py reports them
        raise EngineRequestError("input", str(error), error.param) from error
    except Exception as error:
        raise EngineRequestError("engine", f"{type(error).__name__}: {error}", None) from error
    finally:
        if on_finished is not None:
            on_finished()


def app_with_in_memory_workers(settings: Settings, extra_models: Iterable[ModelSpec] = ()) -> Litestar:
    """`create_app` whose every model (the embedded Piper voice, discovered and configured ones) runs in-memory."""

    async def launch(model: str, placement: Placement, task_group: TaskGroup) -> SpeechWorker:
        return InMemoryWorker(app.state.catalog.get(model))

    app = create_app(settings, extra_models, launcher=launch)
    return app

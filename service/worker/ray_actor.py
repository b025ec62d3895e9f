"""A worker as a Ray actor (the Ray backend, `--ray-address`): the same engine protocol as `python -m service.worker`,
driven by method calls instead of frames, its audio streamed by a generator method.

The server makes this class a Ray actor (`service.lifecycle.ray_backend`) and Ray runs it in a worker process on the
node its scheduler picked. The engine and its libraries are imported inside that process, by `prepare` and `load`,
never when this module is imported: the server imports it and must not load an engine's libraries. The actor is
threaded (`max_concurrency`): `lifetime` holds one thread for good (the server's way to learn that the actor died),
a generation runs in another, and `memory` answers in a third while it runs."""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray

from service.engines import resolve_engine
from service.engines.base import AudioClip, Engine, EngineInputError, import_libraries, import_options
from service.worker.engine_calls import engine_output, gpu_figures

# threads of one actor: `lifetime`, one generation, and `memory` (or a status call) beside it
ACTOR_THREADS = 3


def _rss_bytes() -> int:
    """This process's resident memory, from /proc."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class EngineActor:
    """One engine in a Ray actor: `prepare` imports its libraries, `load` loads its weights, `generate` serves one
    request at a time; `environment` (the model's own variables) is set before any import."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        os.environ.update(environment)
        self._engine: Engine | None = None
        self._ended = threading.Event()

    def where(self) -> dict[str, Any]:
        """Where the actor runs: its process, its node (Ray's id and address) and its host's name."""
        context = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]  # unannotated in Ray
            "host": platform.node(),
        }

    def lifetime(self) -> None:
        """Returns only when the process ends: the server awaits it to learn that the actor died."""
        self._ended.wait()

    def prepare(self, engine: str, options: Mapping[str, Any]) -> None:
        """Import the engine's libraries (no weights)."""
        engine_class = resolve_engine(engine)
        import_libraries(engine_class, import_options(engine_class, options))

    def load(self, engine: str, options: Mapping[str, Any]) -> dict[str, int]:
        """Load the engine's weights (and warm it up, if it has a warm-up); its GPU figures."""
        loaded: Engine = resolve_engine(engine)(options)
        loaded.load()
        warm_up = getattr(loaded, "warm_up", None)
        if warm_up is not None:
            warm_up()
        self._engine = loaded
        return gpu_figures(loaded)

    def memory(self) -> dict[str, int | None]:
        """Resident memory, and the engine's reserved GPU memory when Ray gave the actor a GPU (else None)."""
        gpu = None
        if self._engine is not None and ray.get_gpu_ids():
            gpu = self._engine.gpu_memory().reserved_bytes
        return {"rss_bytes": _rss_bytes(), "gpu_bytes": gpu}

    def generate(
        self, op: str, request: Mapping[str, Any], audio_rate: int | None, audio: bytes
    ) -> Iterator[dict[str, Any]]:
        """One request's items, as the worker's frames: `chunk` (float32 `audio`), then `done` (GPU figures) or
        `error` (kind `input` or `engine`, message, param). Stops between chunks once the caller cancelled the task
        (`ray.cancel`), as the worker process does on a `cancel` frame."""
        assert self._engine is not None, "generate before load"
        clip = None if audio_rate is None else AudioClip(np.frombuffer(audio, dtype="<f4").copy(), audio_rate)
        context = ray.get_runtime_context()
        try:
            for chunk in engine_output(self._engine, op, request, clip):
                yield {"type": "chunk", "audio": np.asarray(chunk, dtype=np.float32)}
                if context.is_canceled():
                    return
        except EngineInputError as error:
            yield {"type": "error", "kind": "input", "param": error.param, "message": str(error)}
            return
        except Exception as error:  # the engine's failure goes back to the request, the actor stays up
            yield {"type": "error", "kind": "engine", "param": None, "message": f"{type(error).__name__}: {error}"}
            return
        yield {"type": "done", "gpu": gpu_figures(self._engine)}

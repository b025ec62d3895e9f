"""One request to a loaded engine, as both kinds of worker run it: a worker process (`python -m service.worker`,
from frames) and a Ray actor (`service.worker.ray_actor`, from method calls)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from service.engines.base import AudioChunk, AudioClip, EditRequest, Engine, EngineInputError, SynthesisRequest


def engine_output(engine: Engine, op: str, request: Mapping[str, Any], audio: AudioClip | None) -> Iterator[AudioChunk]:
    """The engine's chunks for a `synthesize` or `edit` request (its JSON header and its audio, if any)."""
    if op == "synthesize":
        return engine.synthesize(SynthesisRequest.from_header(request, audio))
    edit = getattr(engine, "edit", None)
    if edit is None:
        raise EngineInputError("mode", "this model cannot edit audio")
    if audio is None:
        raise EngineInputError("audio", "there is no audio to edit")
    chunks: Iterator[AudioChunk] = edit(EditRequest.from_header(request, audio))
    return chunks


def gpu_figures(engine: Engine) -> dict[str, int]:
    """The engine's GPU memory as the server's `GpuMemory` fields."""
    memory = engine.gpu_memory()
    return {"allocated_bytes": memory.allocated_bytes, "reserved_bytes": memory.reserved_bytes}

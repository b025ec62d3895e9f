"""The engine boundary: what every speech engine offers, loaded inside its own worker process."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

AudioChunk = npt.NDArray[np.float32]


class EngineInputError(ValueError):
    """The request cannot be served by this engine; the message names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, known before it is loaded."""

    sample_rate: int
    voices: tuple[str, ...]
    default_voice: str
    device: str = "cpu"
    modes: tuple[str, ...] = ("tts",)
    supports_speed: bool = True
    supports_instructions: bool = False
    streaming: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capabilities:
        return cls(
            sample_rate=int(data["sample_rate"]),
            voices=tuple(data["voices"]),
            default_voice=str(data["default_voice"]),
            device=str(data.get("device", "cpu")),
            modes=tuple(data.get("modes", ("tts",))),
            supports_speed=bool(data.get("supports_speed", True)),
            supports_instructions=bool(data.get("supports_instructions", False)),
            streaming=bool(data.get("streaming", True)),
        )


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voice: str
    speed: float = 1.0
    instructions: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuMemory:
    """The engine's own view of accelerator memory (torch allocator figures; zero on the CPU)."""

    allocated_bytes: int = 0
    reserved_bytes: int = 0


@dataclass
class EngineOptions:
    """Free-form options of one configured model, passed to its engine."""

    values: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """A speech engine. `describe` is cheap and runs in the server; everything else runs in the worker."""

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> Capabilities:
        """Capabilities from configuration alone: no weights loaded, no heavy imports."""
        ...

    def load(self) -> None:
        """Load weights; called once in the worker before any request."""
        ...

    def synthesize(self, request: SynthesisRequest) -> Iterator[AudioChunk]:
        """Mono float32 audio at `sample_rate`, yielded in chunks as it is produced."""
        ...

    def gpu_memory(self) -> GpuMemory: ...


class EngineFactory(Protocol):
    def __call__(self, options: Mapping[str, Any]) -> Engine: ...

    def describe(self, options: Mapping[str, Any]) -> Capabilities: ...

"""The engine boundary: what every speech engine offers, loaded inside its own worker process."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

AudioChunk = npt.NDArray[np.float32]

TTS_MODE = "tts"
MAX_EDIT_ITERATIONS = 5


class EngineInputError(ValueError):
    """The request cannot be served by this engine; the message names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, known before it is loaded.

    `modes` lists "tts" for plain synthesis and "clone" for voice cloning; `edit_options` maps every edit mode the
    engine accepts to the `edit_info` values it takes (an empty tuple: the mode takes none).
    """

    sample_rate: int
    voices: tuple[str, ...]
    default_voice: str
    device: str = "cpu"
    modes: tuple[str, ...] = (TTS_MODE,)
    edit_options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    supports_speed: bool = True
    supports_instructions: bool = False
    # tags a transcript may begin with to choose a language or dialect, and tags it may carry for sounds (laughter)
    language_tags: tuple[str, ...] = ()
    paralinguistic_tags: tuple[str, ...] = ()

    @property
    def clones(self) -> bool:
        return "clone" in self.modes


@dataclass(frozen=True)
class AudioClip:
    """Mono float32 samples and their rate, handed to an engine (sent to the worker as the frame payload)."""

    samples: AudioChunk
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class EditStep:
    mode: str
    edit_info: str | None = None


@dataclass(frozen=True)
class SynthesisRequest:
    """Speak `text`. Cloning engines speak it in the voice of `reference` (whose transcript is `reference_text`),
    then apply `edits` one after another."""

    text: str
    voice: str
    speed: float = 1.0
    instructions: str | None = None
    reference: AudioClip | None = None
    reference_text: str | None = None
    edits: tuple[EditStep, ...] = ()

    def header(self) -> dict[str, Any]:
        """The JSON part of the request; `reference` travels as the payload."""
        return {
            "text": self.text,
            "voice": self.voice,
            "speed": self.speed,
            "instructions": self.instructions,
            "reference_text": self.reference_text,
            "edits": [[step.mode, step.edit_info] for step in self.edits],
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], reference: AudioClip | None) -> SynthesisRequest:
        return cls(
            text=header["text"],
            voice=header["voice"],
            speed=header["speed"],
            instructions=header["instructions"],
            reference=reference,
            reference_text=header["reference_text"],
            edits=tuple(EditStep(mode, info) for mode, info in header["edits"]),
        )


@dataclass(frozen=True)
class EditRequest:
    """Edit an existing clip: `mode` with `edit_info`, repeated `iterations` times on its own output.

    For the paralinguistic mode `text` is the new transcript with its tags; `transcript` is what `audio` says.
    """

    audio: AudioClip
    transcript: str
    mode: str
    edit_info: str | None = None
    text: str | None = None
    iterations: int = 1

    def header(self) -> dict[str, Any]:
        return {
            "transcript": self.transcript,
            "mode": self.mode,
            "edit_info": self.edit_info,
            "text": self.text,
            "iterations": self.iterations,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], audio: AudioClip) -> EditRequest:
        return cls(
            audio=audio,
            transcript=header["transcript"],
            mode=header["mode"],
            edit_info=header["edit_info"],
            text=header["text"],
            iterations=header["iterations"],
        )


@dataclass(frozen=True)
class GpuMemory:
    """The engine's own view of accelerator memory (torch allocator figures; zero on the CPU)."""

    allocated_bytes: int = 0
    reserved_bytes: int = 0


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
    """An engine class. Optional hooks, looked up by name: `import_options(options)` (the options its imports depend
    on), `import_libraries(import options)` (import what a load needs, without weights and without touching a GPU:
    what a warm spare does before it knows its model), `probe_options` and `probe` (the start-up import probe); on
    the engine object, `check()` (cheap checks of its files, run before the imports: a wrong model is refused at once)
    and `warm_up()` (a first pass after `load`, before the first request)."""

    def __call__(self, options: Mapping[str, Any]) -> Engine: ...

    def describe(self, options: Mapping[str, Any]) -> Capabilities: ...


def import_options(engine: EngineFactory, options: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a model's options that its engine's imports depend on (none unless the engine says): models
    whose engine, environment and import options match can share a warm spare."""
    hook = getattr(engine, "import_options", None)
    return {} if hook is None else dict(hook(options))


def probe_is_its_imports(engine: EngineFactory) -> bool:
    """Whether the engine's start-up import probe is its `import_libraries`, with the same options: then a warm
    spare's imports answer what the probe asks."""
    probe = getattr(engine, "probe", None)
    same_options = getattr(engine, "probe_options", None) == getattr(engine, "import_options", None)
    return probe is not None and probe == getattr(engine, "import_libraries", None) and same_options


def import_libraries(engine: EngineFactory, options: Mapping[str, Any]) -> None:
    """Run the engine's `import_libraries` hook with these import options (`import_options`); a no-op without one."""
    hook = getattr(engine, "import_libraries", None)
    if hook is not None:
        hook(options)

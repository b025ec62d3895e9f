"""Test engines that run in real worker processes: a tone generator with knobs for slowness and failure."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from service.engines.base import AudioChunk, Capabilities, EngineInputError, GpuMemory, SynthesisRequest

TONE_ENGINE = "tests.support.engines:ToneEngine"


class ToneEngine:
    """Options: sample_rate, load_seconds, chunk_seconds (sleep per chunk), chunks, fail_load (message),
    loads_file (a line is appended per load), requests_file (a line per request: its text), chunks_file (a line
    per chunk made: its request's text), voices; for the
    stages of a load: import_seconds and fail_import (its libraries' import, which a warm spare does before it
    knows the model), warm_up_seconds (a warm-up pass after the load); fail_check (message: its `check` refuses the
    model's files, which the worker asks before the imports)."""

    IMPORT_OPTIONS = ("import_seconds", "fail_import")

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        self._capabilities = self.describe(options)

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> Capabilities:
        voices = tuple(options.get("voices", ("tone",)))
        return Capabilities(
            sample_rate=int(options.get("sample_rate", 16000)),
            voices=voices,
            default_voice=voices[0],
            supports_instructions=bool(options.get("instructions", False)),
        )

    @classmethod
    def import_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        return {name: options[name] for name in cls.IMPORT_OPTIONS if name in options}

    @classmethod
    def import_libraries(cls, options: Mapping[str, Any]) -> None:
        time.sleep(float(options.get("import_seconds", 0.0)))
        if options.get("fail_import"):
            raise ImportError(str(options["fail_import"]))

    def check(self) -> None:
        if self._options.get("fail_check"):
            raise RuntimeError(str(self._options["fail_check"]))

    def _record(self, option: str, line: str) -> None:
        """Append a line to the file the option names, if it names one."""
        if self._options.get(option):
            with Path(self._options[option]).open("a") as record:
                record.write(f"{line}\n")

    def load(self) -> None:
        self._record("loads_file", str(os.getpid()))
        time.sleep(float(self._options.get("load_seconds", 0.0)))
        if self._options.get("fail_load"):
            raise RuntimeError(str(self._options["fail_load"]))

    def warm_up(self) -> None:
        time.sleep(float(self._options.get("warm_up_seconds", 0.0)))

    def synthesize(self, request: SynthesisRequest) -> Iterator[AudioChunk]:
        self._record("requests_file", request.text)
        if request.text == "engine-error":
            raise ValueError("the tone engine was asked to fail")
        if request.text == "bad-input":
            raise EngineInputError("input", "the tone engine refuses this input")
        rate = self._capabilities.sample_rate
        for index in range(int(self._options.get("chunks", 2))):
            time.sleep(float(self._options.get("chunk_seconds", 0.0)))
            t = np.arange(rate // 4) / rate
            self._record("chunks_file", request.text)
            yield (0.3 * np.sin(2 * np.pi * 220 * (index + 1) * t / request.speed)).astype(np.float32)

    def gpu_memory(self) -> GpuMemory:
        return GpuMemory()

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
    loads_file (a line is appended per load), requests_file (a line per request: its text), voices."""

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

    def load(self) -> None:
        if self._options.get("loads_file"):
            with Path(self._options["loads_file"]).open("a") as loads:
                loads.write(f"{os.getpid()}\n")
        time.sleep(float(self._options.get("load_seconds", 0.0)))
        if self._options.get("fail_load"):
            raise RuntimeError(str(self._options["fail_load"]))

    def synthesize(self, request: SynthesisRequest) -> Iterator[AudioChunk]:
        if self._options.get("requests_file"):
            with Path(self._options["requests_file"]).open("a") as requests:
                requests.write(f"{request.text}\n")
        if request.text == "engine-error":
            raise ValueError("the tone engine was asked to fail")
        if request.text == "bad-input":
            raise EngineInputError("input", "the tone engine refuses this input")
        rate = self._capabilities.sample_rate
        for index in range(int(self._options.get("chunks", 2))):
            time.sleep(float(self._options.get("chunk_seconds", 0.0)))
            t = np.arange(rate // 4) / rate
            yield (0.3 * np.sin(2 * np.pi * 220 * (index + 1) * t / request.speed)).astype(np.float32)

    def gpu_memory(self) -> GpuMemory:
        return GpuMemory()

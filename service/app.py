"""The app factory: builds the services from settings and wires controllers, docs, templates and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import litestar_offline_docs
import structlog
from anyio.abc import TaskGroup
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.plugins.htmx import HTMXPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from service import __version__
from service.audio.decode import AudioDecoder
from service.controllers.access import KeyRing, access_middleware
from service.controllers.api.custom_voices import CustomVoicesController, VoiceConsentsController
from service.controllers.api.health import HealthController
from service.controllers.api.metrics import MetricsController
from service.controllers.api.models import ModelsController
from service.controllers.api.openai import OpenAIController
from service.controllers.api.voices import VoicesController
from service.controllers.errors import EXCEPTION_HANDLERS, NestingSafeRequest
from service.controllers.openapi import API_DESCRIPTION
from service.controllers.pages.edit import EditPagesController
from service.controllers.pages.guide import GuidePagesController
from service.controllers.pages.login import LoginController
from service.controllers.pages.models import ModelPagesController
from service.controllers.pages.speak import PagesController
from service.controllers.pages.voices import VoicePagesController
from service.controllers.stream_guard import stream_guard
from service.engines import resolve_engine
from service.engines.base import probe_is_its_imports
from service.lazy_loader import LazyLoader, Placement, WorkerLauncher
from service.library.consents import ConsentStore
from service.library.voices import VoiceLibrary
from service.lifecycle.ray_request import on_ray
from service.lifecycle.spares import SparePool
from service.lifecycle.worker_client import OFFLINE, SpeechWorker, WorkerSpec, scratch_environment, sweep_scratch
from service.lifecycle.worker_client import probe as probe_worker
from service.metrics import Metrics
from service.models.admin import ModelAdmin
from service.models.catalog import Catalog, ModelSpec
from service.models.config import load_model_config, load_voice_presets
from service.settings import PROJECT_ROOT, Settings, api_keys, warm_spares_by_engine
from service.speech.service import SpeechService

if TYPE_CHECKING:
    from service.lifecycle.ray_backend import RayBackend

log = structlog.get_logger("service.app")

DOCS_ASSETS = Path(litestar_offline_docs.__file__).parent / "static"
ENGINE_INPUT_RATE = 24000
# under the data folder: where workers' libraries write (home, caches, temporary files)
WORKER_SCRATCH = "workers"
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _openapi_config() -> OpenAPIConfig:
    assets = "/static/docs"
    return OpenAPIConfig(
        title="Speech server",
        version=__version__,
        description=API_DESCRIPTION,
        use_handler_docstrings=True,
        path="/docs",
        render_plugins=[
            SwaggerRenderPlugin(
                path="/",
                js_url=f"{assets}/swagger-ui-bundle.js",
                css_url=f"{assets}/swagger-ui.css",
                standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
                favicon="<link rel='icon' href='/static/favicon.svg'>",
            ),
            JsonRenderPlugin(path="/openapi.json"),
        ],
    )


def ray_backend(settings: Settings) -> RayBackend | None:
    """The Ray backend when RAY_ADDRESS is set; Ray is an optional extra, imported only then."""
    if not settings.ray_address:
        return None
    try:
        from service.lifecycle.ray_backend import RayBackend  # noqa: PLC0415 (the `ray` extra, only where it is used)
    except ImportError as error:
        raise ValueError(f"--ray-address / RAY_ADDRESS needs the `ray` extra (uv sync --extra ray): {error}") from error
    return RayBackend(settings.ray_address, settings.capacity_wait)


async def probe_engine(catalog: Catalog, spares: SparePool, spec: WorkerSpec, model_ids: list[str]) -> None:
    """At start-up: import an engine's libraries and code as its workers will, so that a broken environment shows
    in the log and on /api/v1/models/unavailable before any request. Where a warm spare does those very imports
    (the engine's probe is its `import_libraries`), the first spare's answer is the probe's, and no second process
    imports them all again; else a process of its own. The spares of models found broken are given up."""
    started = anyio.current_time()
    spare_answer = spares.import_answer(spec) if probe_is_its_imports(resolve_engine(spec.engine)) else None
    problem = await (spare_answer() if spare_answer is not None else probe_worker(spec))
    seconds = round(anyio.current_time() - started, 3)
    catalog.record_probe(model_ids, problem)
    if problem is None:
        log.info(
            "engine_probe_passed", engine=spec.engine, models=model_ids, seconds=seconds, by_spare=bool(spare_answer)
        )
        return
    log.warning("model_unavailable", engine=spec.engine, models=model_ids, reason=problem, seconds=seconds)
    await spares.retire(model_ids, f"the import probe failed: {problem}")


def create_app(
    settings: Settings | None = None,
    extra_models: Iterable[ModelSpec] = (),
    launcher: WorkerLauncher[SpeechWorker] | None = None,
) -> Litestar:
    """The whole service for these settings; `extra_models` adds configured models beside the discovered ones;
    `launcher` starts a model's worker (default: a worker process; tests may start in-memory ones)."""
    settings = settings or Settings()
    configured = load_model_config(settings.models_config, settings) if settings.models_config else []
    presets = load_voice_presets(settings.models_config) if settings.models_config else []
    catalog = Catalog.from_settings(settings, [*configured, *extra_models])

    scratch = settings.data_dir / WORKER_SCRATCH
    sweep_scratch(scratch)

    def worker_spec(spec: ModelSpec) -> WorkerSpec:
        return replace(
            spec.worker_spec(),
            environment={**scratch_environment(scratch), **spec.environment},
            generation_timeout=settings.generation_timeout,
            python=str(settings.worker_python) if settings.worker_python else None,
            max_buffered_bytes=settings.max_stream_buffer_bytes,
        )

    by_engine = warm_spares_by_engine(settings)

    def spares_for(spec: ModelSpec) -> int:
        return by_engine.get(spec.engine, 0) if spec.warm_spares is None else spec.warm_spares

    # warm spares live below the default launcher only: a test's own launcher gets none, nor does the Ray backend
    cluster = ray_backend(settings)
    default_launcher = launcher is None and cluster is None
    spares = SparePool(
        {spec.id: (worker_spec(spec), spares_for(spec)) for spec in catalog.servable() if default_launcher}
    )

    async def launch(model: str, placement: Placement, task_group: TaskGroup) -> SpeechWorker:
        spec = catalog.get(model)
        if cluster is not None:
            # the actor's node has folders of its own: it gets the model's variables, not this server's scratch
            on_cluster = replace(worker_spec(spec), environment={**OFFLINE, **spec.environment})
            return await cluster.launch(spec.placed(on_cluster, on_ray(placement)), spec.ray, placement, task_group)
        return await spares.launch(spec.placed(worker_spec(spec), placement), task_group)

    loader: LazyLoader[SpeechWorker] = LazyLoader(
        catalog.policies(),
        launcher or launch,
        max_loaded=settings.max_loaded_models,
        memory_budget_bytes=settings.memory_budget_bytes,
        capacity_wait=settings.capacity_wait,
        max_queue=settings.max_queue,
        load_backoff=settings.load_backoff,
        load_timeout=settings.load_timeout,
    )
    metrics = Metrics()
    metrics.watch(loader)
    metrics.watch_spares(spares)
    admin = ModelAdmin(catalog, loader, spares)
    voices = VoiceLibrary(settings.data_dir, presets)
    consents = ConsentStore(settings.data_dir, voices)
    keys = KeyRing(api_keys(settings))
    decoder = AudioDecoder(
        ENGINE_INPUT_RATE, settings.max_audio_seconds, settings.max_upload_bytes, settings.audio_url_prefixes
    )
    speech = SpeechService(
        catalog,
        loader,
        metrics,
        voices,
        decoder,
        settings.max_input_chars,
        settings.request_timeout,
        ignore_unsupported_instructions=settings.unsupported_instructions == "ignore",
    )

    shutdown_requested = anyio.Event()

    async def shut_down_when_requested() -> None:
        await shutdown_requested.wait()
        await loader.shutdown()

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        for model, reason in catalog.unavailable.items():
            log.warning("model_unavailable", model=model, reason=reason)
        async with anyio.create_task_group() as task_group:
            async with (
                spares.running(),
                cluster.running() if cluster else nullcontext(),
                loader.running(settings.shutdown_grace),
            ):
                task_group.start_soon(shut_down_when_requested)
                for spec, model_ids in catalog.probe_groups() if settings.probe_engines else []:
                    task_group.start_soon(probe_engine, catalog, spares, worker_spec(spec), model_ids)
                yield
            task_group.cancel_scope.cancel()

    def provide(value: object) -> Provide:
        return Provide(lambda: value, use_cache=True, sync_to_thread=False)

    app = Litestar(
        route_handlers=[
            PagesController,
            EditPagesController,
            VoicePagesController,
            ModelPagesController,
            GuidePagesController,
            HealthController,
            ModelsController,
            OpenAIController,
            VoicesController,
            CustomVoicesController,
            VoiceConsentsController,
            MetricsController,
            LoginController,
            create_static_files_router(
                path="/static/docs", directories=[DOCS_ASSETS], name="docs-assets", include_in_schema=False
            ),
            create_static_files_router(path="/static", directories=[PROJECT_ROOT / "static"], include_in_schema=False),
        ],
        dependencies={
            "settings": provide(settings),
            "catalog": provide(catalog),
            "loader": provide(loader),
            "admin": provide(admin),
            "speech": provide(speech),
            "metrics": provide(metrics),
            "voices": provide(voices),
            "consents": provide(consents),
            "keys": provide(keys),
        },
        middleware=[
            access_middleware(keys, settings.cors_origins),
            stream_guard(settings.send_timeout, metrics.stream_aborted),
        ],
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins)) if settings.cors_origins else None,
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=_openapi_config(),
        template_config=TemplateConfig(directory=PROJECT_ROOT / "templates", engine=JinjaTemplateEngine),
        lifespan=[lifespan],
        plugins=[HTMXPlugin()],
        request_class=NestingSafeRequest,
        request_max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
        logging_config=None,
    )
    app.state.loader = loader
    app.state.catalog = catalog
    # the server calls it the moment it begins to stop, so that the loader answers every request still waiting or
    # generating before the server's own graceful timeout cancels them (the lifespan's exit then waits for it)
    app.state.request_shutdown = shutdown_requested.set
    return app

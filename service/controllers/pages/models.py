"""The Models page: every model's state, live (htmx polls the same route for its partial), with load, unload and
pin buttons that call the same ModelAdmin as /api/v1/models, and the loader's recent lifecycle events."""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from service.controllers.pages.rendering import Format, aliases_of, fragment, model_choices, render
from service.lazy_loader import EventRecord, LazyLoader, SlotState
from service.lifecycle.worker_client import SpeechWorker
from service.models.admin import ModelAdmin
from service.models.views import ModelStatus

EVENTS_SHOWN = 25
EVENT_DETAILS = {
    "seconds": "took",
    "reason": "reason",
    "pid": "pid",
    "rss_bytes": "resident",
    "gpu_bytes": "GPU",
    "exit_code": "exit code",
    "requests_drained": "requests drained",
    "cause": "cause",
}


def load_started_at(loader: LazyLoader[SpeechWorker], model: str) -> float | None:
    """When the model's current load began (wall clock), from its slot; None unless it is loading."""
    return next((snapshot.load_started_at for snapshot in loader.snapshots_now() if snapshot.model == model), None)


def load_progress(status: ModelStatus, loader: LazyLoader[SpeechWorker], model: str) -> dict[str, Any] | None:
    """How far the model's load has come: seconds since it began, against the last load's duration (None: no
    estimate); None unless it is loading."""
    if status.state is not SlotState.LOADING:
        return None
    started = load_started_at(loader, model)
    elapsed = None if started is None else max(0.0, time.time() - started)
    expected = status.last_load_seconds
    fraction = None if elapsed is None or not expected else min(0.99, elapsed / expected)
    return {"elapsed": elapsed, "expected": expected, "fraction": fraction}


def describe_event(record: EventRecord) -> dict[str, Any]:
    details = []
    for key, label in EVENT_DETAILS.items():
        value = record.fields.get(key)
        if value is None:
            continue
        if key.endswith("_bytes"):
            value = Format.bytes(int(value))
        elif key == "seconds":
            value = Format.seconds(float(value), 2)
        details.append(f"{label} {value}")
    if record.fields.get("error"):
        details.append(str(record.fields["error"]))
    return {
        "time": record.time,
        "model": record.model,
        "name": record.event.value.removeprefix("model_").replace("_", " "),
        "details": details,
        "level": "bad" if record.event.is_failure else "normal",
    }


async def live_context(admin: ModelAdmin) -> dict[str, Any]:
    catalog, loader = admin.catalog, admin.loader
    statuses = await admin.all_status()
    rows = []
    for spec in model_choices(catalog):
        status = statuses[spec.id]
        rows.append(
            {
                "id": spec.id,
                "spec": spec,
                "status": status,
                "aliases": aliases_of(catalog, spec.id),
                "progress": load_progress(status, loader, spec.id),
            }
        )
    events = [describe_event(event) for event in list(loader.events)[-EVENTS_SHOWN:]][::-1]
    return {
        "rows": rows,
        "unavailable": catalog.unavailable,
        "events": events,
        "default_model": catalog.default_model,
        "message": None,
    }


class ModelPagesController(Controller):
    path = "/models"
    include_in_schema = False

    @get("/", operation_id="modelsPage")
    async def models(
        self,
        request: HTMXRequest,
        admin: NamedDependency[ModelAdmin],
    ) -> Template:
        """Every model's state; htmx polls this route for the live partial."""
        context = await live_context(admin)
        return render(request, "models.html", "partials/models_live.html", context, active="models")

    async def _after(self, admin: ModelAdmin, message: str) -> Template:
        context = await live_context(admin) | {"message": message}
        return fragment("partials/models_live.html", context)

    @post("/{model_id:str}/load", operation_id="modelsPageLoad", status_code=200)
    async def load(
        self,
        admin: NamedDependency[ModelAdmin],
        model_id: FromPath[str],
    ) -> Template:
        """Load the model (answers once it is loaded; the page shows progress meanwhile)."""
        status = await admin.load(model_id)
        seconds = Format.seconds(status.last_load_seconds, 2)
        message = f"{model_id} is loaded (took {seconds}, {Format.bytes(status.rss_bytes)} resident)."
        return await self._after(admin, message)

    @post("/{model_id:str}/unload", operation_id="modelsPageUnload", status_code=200)
    async def unload(
        self,
        admin: NamedDependency[ModelAdmin],
        model_id: FromPath[str],
    ) -> Template:
        """Unload the model (requests in flight finish first) and say what was freed."""
        report = await admin.unload(model_id)
        if report.unloaded:
            freed = Format.bytes(report.memory_freed.rss_bytes)
            message = f"{model_id} is unloaded: worker {report.pid} ended, {freed} freed in {report.seconds:.2f} s."
        else:
            message = f"{model_id} was not loaded; nothing to unload."
        return await self._after(admin, message)

    @post("/{model_id:str}/pin", operation_id="modelsPagePin", status_code=200)
    async def pin(
        self,
        admin: NamedDependency[ModelAdmin],
        model_id: FromPath[str],
    ) -> Template:
        """Pin the model: it stays loaded until unloaded by hand."""
        await admin.configure(model_id, idle_timeout=None, auto_unload=None, pinned=True)
        return await self._after(admin, f"{model_id} is pinned: it is never unloaded automatically.")

    @post("/{model_id:str}/unpin", operation_id="modelsPageUnpin", status_code=200)
    async def unpin(
        self,
        admin: NamedDependency[ModelAdmin],
        model_id: FromPath[str],
    ) -> Template:
        """Unpin the model: the idle timer applies again."""
        await admin.configure(model_id, idle_timeout=None, auto_unload=None, pinned=False)
        return await self._after(admin, f"{model_id} is no longer pinned.")

    @get("/{model_id:str}/progress", operation_id="modelsPageProgress")
    async def progress(
        self,
        admin: NamedDependency[ModelAdmin],
        model_id: FromPath[str],
    ) -> Template:
        """What a request for this model is waiting for now: its load (elapsed against the last load), its turn,
        or the generation. The pages poll it while a request is pending."""
        model = admin.catalog.lookup(model_id).id
        status = await admin.status(model)
        progress = load_progress(status, admin.loader, model)
        return fragment("partials/progress.html", {"model": model, "status": status, "progress": progress})

"""The Models page: every model's state, live (htmx polls the same route for its partial), with load, unload and
pin buttons that call the same ModelAdmin as /api/v1/models, and the loader's recent lifecycle events."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, URLEncodedBody
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from service.controllers.errors import ApiError
from service.controllers.pages.rendering import Format, aliases_of, fragment, model_choices, render
from service.errors import ServiceError
from service.lazy_loader import EventRecord, LazyLoader, LifecycleEvent, SlotState
from service.lifecycle.worker_client import SpeechWorker
from service.models.admin import ModelAdmin
from service.models.views import ModelStatus, UnloadResult
from service.speech.planner import parse_keep_alive
from service.worker.protocol import Stage

EVENTS_SHOWN = 25
# a load's stages as its worker reports them, in order, and how the pages name them
LOAD_STAGES = tuple(Stage)
STAGE_LABELS = {
    Stage.STARTING: "starting its worker",
    Stage.IMPORTING: "importing its libraries",
    Stage.READING_WEIGHTS: "reading its weights",
    Stage.WARMING_UP: "warming up",
    Stage.READY: "ready",
}
# a model's run-time settings as PATCH /api/v1/models/{id} takes them, and how the event log names them
POLICY_FIELDS = {"idle_timeout": "idle timeout", "auto_unload": "auto-unload", "pinned": "pinned"}
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
    """How far the model's load has come: seconds since it began and the stage its worker reports (which of the
    stages, and the seconds in it; the bar stands midway through it); a worker that reports no stage is measured
    against the last load's duration instead (None: no estimate). None unless it is loading."""
    if status.state is not SlotState.LOADING:
        return None
    started = load_started_at(loader, model)
    elapsed = None if started is None else max(0.0, time.time() - started)
    expected = status.last_load_seconds
    fraction = None if elapsed is None or not expected else min(0.99, elapsed / expected)
    stage = None if status.load_stage is None else Stage(status.load_stage)
    if stage is not None:
        fraction = (LOAD_STAGES.index(stage) + 0.5) / len(LOAD_STAGES)
    return {
        "elapsed": elapsed,
        "expected": expected,
        "fraction": fraction,
        "stage": stage,
        "label": None if stage is None else STAGE_LABELS[stage],
        "step": None if stage is None else LOAD_STAGES.index(stage) + 1,
        "steps": len(LOAD_STAGES),
        "stage_seconds": status.load_stage_seconds,
    }


def policy_value(key: str, value: Any) -> str:
    if key == "idle_timeout":
        return "never" if float(value) < 0 else Format.clock(float(value))
    if key == "auto_unload":
        return "on" if value else "off"
    return "yes" if value else "no"


def policy_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What a policy change changed, as `idle timeout 5:00 → 1:00`; every setting when nothing differs."""
    changed = [key for key in POLICY_FIELDS if before.get(key) != after.get(key)] or list(POLICY_FIELDS)
    return [
        f"{POLICY_FIELDS[key]} {policy_value(key, before[key])} → {policy_value(key, after[key])}"
        if key in before and before[key] != after[key]
        else f"{POLICY_FIELDS[key]} {policy_value(key, after[key])}"
        for key in changed
    ]


def describe_event(record: EventRecord, policy_before: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An event as the log shows it; a policy change says what it changed against `policy_before`."""
    if record.event is LifecycleEvent.POLICY_CHANGED:
        return {
            "time": record.time,
            "model": record.model,
            "name": "settings changed",
            "details": policy_changes(policy_before or {}, record.fields),
            "level": "normal",
        }
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


def recent_events(admin: ModelAdmin) -> list[dict[str, Any]]:
    """The loader's last EVENTS_SHOWN events, newest first; each policy change against the one before it (at first
    the model's configured policy)."""
    policies: dict[str, Mapping[str, Any]] = {
        spec.id: {key: getattr(spec.policy, key) for key in POLICY_FIELDS} for spec in admin.catalog.specs.values()
    }
    described = []
    for record in list(admin.loader.events):
        described.append(describe_event(record, policies.get(record.model)))
        if record.event is LifecycleEvent.POLICY_CHANGED:
            policies[record.model] = record.fields
    return described[-EVENTS_SHOWN:][::-1]


def unload_message(model_id: str, report: UnloadResult) -> str:
    if not report.unloaded:
        return f"{model_id} was not loaded; nothing to unload."
    freed = Format.bytes(report.memory_freed.rss_bytes)
    return f"{model_id} is unloaded: worker {report.pid} ended, {freed} freed in {report.seconds:.2f} s."


@dataclass
class SettingsForm:
    """A model's run-time settings from the page: the idle timeout as a duration (-1: never), auto-unload and pin
    (checkboxes: absent means off)."""

    idle_timeout: str = ""
    auto_unload: str | None = None
    pinned: str | None = None


def idle_timeout_seconds(text: str) -> float:
    try:
        seconds = parse_keep_alive(text)
    except ServiceError:
        seconds = None
    if seconds is None:
        raise ApiError(
            400,
            f"idle timeout {text.strip()[:40]!r} is not a duration: use seconds or forms like 90, 5m, 1h30m; "
            "-1 never unloads",
            param="idle_timeout",
            code="invalid_value",
        )
    return seconds


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
    return {
        "rows": rows,
        "unavailable": catalog.unavailable,
        "events": recent_events(admin),
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
        return await self._after(admin, unload_message(model_id, await admin.unload(model_id)))

    @post("/unload-all", operation_id="modelsPageUnloadAll", status_code=200)
    async def unload_all(self, admin: NamedDependency[ModelAdmin]) -> Template:
        """Unload every model at once (each one's requests in flight finish first) and say what was freed."""
        reports: dict[str, UnloadResult] = {}

        async def unload(model: str) -> None:
            reports[model] = await admin.unload(model)

        async with anyio.create_task_group() as group:
            for model in admin.catalog.specs:
                group.start_soon(unload, model)
        unloaded = {model: report for model, report in sorted(reports.items()) if report.unloaded}
        if not unloaded:
            return await self._after(admin, "No model was loaded; nothing to unload.")
        freed = sum(report.memory_freed.rss_bytes or 0 for report in unloaded.values())
        message = f"Unloaded {', '.join(unloaded)}: {len(unloaded)} worker(s) ended, {Format.bytes(freed)} freed."
        return await self._after(admin, message)

    @get("/{model_id:str}/settings", operation_id="modelsPageSettings")
    async def settings_form(self, admin: NamedDependency[ModelAdmin], model_id: FromPath[str]) -> Template:
        """The form for the model's idle timeout, auto-unload and pin (what PATCH /api/v1/models/{id} changes)."""
        model = admin.catalog.lookup(model_id).id
        return fragment("partials/model_settings.html", {"model": model, "status": await admin.status(model)})

    @post("/{model_id:str}/settings", operation_id="modelsPageConfigure", status_code=200)
    async def configure(
        self, admin: NamedDependency[ModelAdmin], model_id: FromPath[str], data: URLEncodedBody[SettingsForm]
    ) -> Template:
        """Change the model's settings as PATCH /api/v1/models/{id} does; answers with the form and a status line."""
        model = admin.catalog.lookup(model_id).id
        status = await admin.configure(
            model,
            idle_timeout=idle_timeout_seconds(data.idle_timeout),
            auto_unload=data.auto_unload is not None,
            pinned=data.pinned is not None,
        )
        timeout = "never" if status.default_idle_timeout < 0 else Format.clock(status.default_idle_timeout)
        message = (
            f"{model}: idle timeout {timeout}, auto-unload {'on' if status.auto_unload else 'off'}"
            f"{', pinned' if status.pinned else ''}."
        )
        context = {"model": model, "status": status, "message": message}
        return fragment("partials/model_settings.html", context)

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

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from service.controllers.openapi import HealthBody, not_ready_response
from service.lazy_loader import LazyLoader
from service.lifecycle.worker_client import SpeechWorker
from service.models.admin import ModelAdmin


class HealthController(Controller):
    tags = ("health",)

    @get("/healthz", operation_id="healthz", summary="Liveness check")
    async def healthz(self, admin: NamedDependency[ModelAdmin]) -> HealthBody:
        """Liveness: the server answers. Public, with a count of models per state."""
        return HealthBody(status="ok", models=admin.summary())

    @get("/readyz", operation_id="readyz", summary="Readiness, with models per state", responses=not_ready_response())
    async def readyz(
        self, admin: NamedDependency[ModelAdmin], loader: NamedDependency[LazyLoader[SpeechWorker]]
    ) -> Response[HealthBody]:
        """Readiness: 200 while the server takes requests, 503 once it is shutting down."""
        ready = not loader.closing
        body = HealthBody(status="ready" if ready else "shutting_down", models=admin.summary())
        return Response(body, status_code=200 if ready else 503)

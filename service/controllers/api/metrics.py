from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST

from service.controllers.openapi import error_responses
from service.metrics import Metrics


class MetricsController(Controller):
    tags = ("operations",)

    @get(
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics",
        media_type=CONTENT_TYPE_LATEST,
        responses=error_responses(),
    )
    async def metrics(self, metrics: NamedDependency[Metrics]) -> Response[bytes]:
        """Prometheus metrics: loads, unloads by reason, loaded models, queue depth, latency, real-time factor."""
        # given as the header: from a media type, Litestar would append a second charset to this text/ one's own
        return Response(metrics.render(), headers={"content-type": CONTENT_TYPE_LATEST})

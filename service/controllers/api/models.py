from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service.controllers.openapi import error_responses
from service.models.admin import ModelAdmin
from service.models.views import ModelStatus, UnloadResult


class ModelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Settings to change; fields left out stay as they are."""

    idle_timeout: Annotated[float | None, msgspec.Meta(description="Seconds idle before unload; <0: never.")] = None
    auto_unload: bool | None = None
    pinned: Annotated[bool | None, msgspec.Meta(description="Pinned models are never unloaded automatically.")] = None


class ModelsController(Controller):
    path = "/api/v1/models"
    tags = ("models",)

    @get("/status", operation_id="modelsStatus", summary="Every model's status", responses=error_responses())
    async def status(self, admin: NamedDependency[ModelAdmin]) -> dict[str, ModelStatus]:
        """Every model's state, memory, requests and idle countdown, keyed by model id."""
        return await admin.all_status()

    @get(
        "/unavailable",
        operation_id="modelsUnavailable",
        summary="Models found but not served",
        responses=error_responses(),
    )
    async def unavailable(self, admin: NamedDependency[ModelAdmin]) -> dict[str, str]:
        """Models that were found but cannot be served (e.g. a Step-Audio-EditX variant with missing folders), with
        the reason."""
        return admin.catalog.unavailable

    @get(
        "/{model_id:str}/status",
        operation_id="modelStatus",
        summary="One model's status",
        responses=error_responses(400, 404),
    )
    async def model_status(self, admin: NamedDependency[ModelAdmin], model_id: FromPath[str]) -> ModelStatus:
        """One model's status."""
        return await admin.status(model_id)

    @post(
        "/{model_id:str}/load",
        operation_id="loadModel",
        summary="Load a model now",
        status_code=200,
        responses=error_responses(400, 403, 404, 429, 503),
    )
    async def load(self, admin: NamedDependency[ModelAdmin], model_id: FromPath[str]) -> ModelStatus:
        """Load the model now (no-op if loaded); answers with its status once it is loaded."""
        return await admin.load(model_id)

    @post(
        "/{model_id:str}/unload",
        operation_id="unloadModel",
        summary="Unload a model",
        status_code=200,
        responses=error_responses(400, 403, 404),
    )
    async def unload(self, admin: NamedDependency[ModelAdmin], model_id: FromPath[str]) -> UnloadResult:
        """Let requests in flight finish, end the worker, and report the memory freed."""
        return await admin.unload(model_id)

    @patch(
        "/{model_id:str}",
        operation_id="configureModel",
        summary="Change a model's idle timeout, auto-unload or pin",
        responses=error_responses(400, 403, 404, 413),
    )
    async def configure(
        self, admin: NamedDependency[ModelAdmin], model_id: FromPath[str], data: JSONBody[ModelSettings]
    ) -> ModelStatus:
        """Change the model's idle timeout, auto-unload or pin at run time."""
        return await admin.configure(
            model_id, idle_timeout=data.idle_timeout, auto_unload=data.auto_unload, pinned=data.pinned
        )

"""Status, load, unload and per-model settings: what the models API and the pages do with model slots. Every
method takes a model id or an alias."""

from __future__ import annotations

from service.lazy_loader import LazyLoader, SlotState
from service.lifecycle.spares import SparePool
from service.lifecycle.worker_client import SpeechWorker
from service.models.catalog import Catalog
from service.models.views import ModelStatus, UnloadResult, model_status, unload_result


class ModelAdmin:
    def __init__(self, catalog: Catalog, loader: LazyLoader[SpeechWorker], spares: SparePool | None = None) -> None:
        self.catalog = catalog
        self.loader = loader
        self.spares = spares

    async def status(self, model: str) -> ModelStatus:
        spec = self.catalog.lookup(model)
        snapshot = await self.loader.snapshot(spec.id)
        gpus = [worker.gpu_memory for worker in self.loader.workers(spec.id)]
        return model_status(
            snapshot,
            spec,
            sum(gpu.allocated_bytes for gpu in gpus),
            sum(gpu.reserved_bytes for gpu in gpus),
            self.catalog.probes.get(spec.id),
            self.catalog.unavailable.get(spec.id),
            await self.spares.figures(spec.id) if self.spares is not None else None,
        )

    async def all_status(self) -> dict[str, ModelStatus]:
        return {model: await self.status(model) for model in self.catalog.specs}

    def summary(self) -> dict[str, int]:
        """How many models are in each state (for the health endpoints)."""
        counts = {state.value: 0 for state in SlotState}
        for snapshot in self.loader.snapshots_now():
            counts[snapshot.state.value] += 1
        return counts

    async def load(self, model: str) -> ModelStatus:
        spec = self.catalog.resolve(model)
        await self.loader.load(spec.id)
        return await self.status(spec.id)

    async def unload(self, model: str) -> UnloadResult:
        return unload_result(await self.loader.unload(self.catalog.lookup(model).id))

    async def configure(
        self, model: str, *, idle_timeout: float | None, auto_unload: bool | None, pinned: bool | None
    ) -> ModelStatus:
        model_id = self.catalog.lookup(model).id
        self.loader.configure(model_id, idle_timeout=idle_timeout, auto_unload=auto_unload, pinned=pinned)
        return await self.status(model_id)

"""Status, load, unload and per-model settings: what the models API and the pages do with model slots. Every
method takes a model id or an alias."""

from __future__ import annotations

from service.lazy_loader import LazyLoader, SlotState
from service.lifecycle.worker_client import SpeechWorker
from service.models.catalog import Catalog
from service.models.views import ModelStatus, UnloadResult, model_status, unload_result


class ModelAdmin:
    def __init__(self, catalog: Catalog, loader: LazyLoader[SpeechWorker]) -> None:
        self.catalog = catalog
        self.loader = loader

    async def status(self, model: str) -> ModelStatus:
        spec = self.catalog.lookup(model)
        snapshot = await self.loader.snapshot(spec.id)
        worker = self.loader.worker(spec.id)
        gpu = worker.gpu_memory if worker is not None else None
        return model_status(
            snapshot,
            spec,
            gpu.allocated_bytes if gpu else 0,
            gpu.reserved_bytes if gpu else 0,
            self.catalog.probes.get(spec.id),
            self.catalog.unavailable.get(spec.id),
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

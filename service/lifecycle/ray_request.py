"""What one replica of a model asks of a Ray cluster (the models file's `[models.ray]` table): Ray's scheduler places
the replica's actor on a node that has these resources free. Plain data, no Ray import."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from service.lifecycle.policy import Placement


@dataclass(frozen=True)
class RayRequest:
    """The resources of one replica's actor. `num_cpus` None: the replica's `threads`, else 1; `num_gpus` None: 1
    when the replica's device is a GPU (`devices`), else 0; `memory_bytes`: Ray's `memory` resource (none asked
    when None); `resources`: custom resources (a node label such as `{"a100": 1}`); `node`: a node id the actor
    must run on (`node_soft`: prefer it, and run elsewhere when it is gone or full)."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory_bytes: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    node: str | None = None
    node_soft: bool = False

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus", "memory_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 or more, got {value}")
        negative = sorted(name for name, amount in self.resources.items() if amount < 0)
        if negative:
            raise ValueError(f"resources must be 0 or more, got {negative} below 0")
        if self.node_soft and self.node is None:
            raise ValueError("node_soft needs a node")

    def actor_resources(self, placement: Placement) -> dict[str, Any]:
        """Ray's actor options for one replica's resources: num_cpus, num_gpus, and memory and resources if any."""
        on_gpu = placement.device is not None and placement.device.startswith("cuda")
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus if self.num_cpus is not None else (placement.threads or 1),
            "num_gpus": self.num_gpus if self.num_gpus is not None else (1 if on_gpu else 0),
        }
        if self.memory_bytes is not None:
            options["memory"] = self.memory_bytes
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


def on_ray(placement: Placement) -> Placement:
    """A replica's placement as a Ray actor sees it: Ray picks the GPU and sets CUDA_VISIBLE_DEVICES itself, so a
    device keeps its kind only (`cuda:1` is `cuda`)."""
    if placement.device is None:
        return placement
    return replace(placement, device=placement.device.partition(":")[0])

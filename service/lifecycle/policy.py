"""The loader's decisions as pure functions of plain data: whether a model fits, which idle model makes room for it,
when an idle replica unloads, when one more replica loads, and where a replica runs. No I/O, no clock, no loader:
the caller passes what it knows, times included."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


class SlotState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


class UnloadReason(StrEnum):
    IDLE = "idle"
    MANUAL = "manual"
    KEEP_ALIVE = "keep_alive"
    EVICTED = "evicted"
    CRASH = "crash"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class ModelPolicy:
    idle_timeout: float
    auto_unload: bool = True
    pinned: bool = False
    preload: bool = False
    load_timeout: float | None = None  # seconds; None: the loader's own
    replicas_min: int = 0  # the reaper never goes below it; loaded at start-up
    replicas_max: int = 1  # scale-out stops here
    devices: tuple[str, ...] = ()  # replica i runs on devices[i % len]; empty: wherever the engine's options say
    threads: int | None = None  # CPU threads per replica; None: the engine's default

    def __post_init__(self) -> None:
        if self.replicas_max < 1:
            raise ValueError(f"replicas_max must be at least 1, got {self.replicas_max}")
        if not 0 <= self.replicas_min <= self.replicas_max:
            raise ValueError(f"replicas_min must be 0 to replicas_max ({self.replicas_max}), got {self.replicas_min}")
        bad = [device for device in self.devices if not DEVICE_PATTERN.fullmatch(device)]
        if bad:
            raise ValueError(f"devices must be 'cpu', 'cuda' or 'cuda:N', got {bad}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")


@dataclass(frozen=True)
class Placement:
    """Where one replica of a model runs: its position among the model's replicas, its device, its CPU threads."""

    index: int
    device: str | None = None
    threads: int | None = None


def placement(policy: ModelPolicy, index: int) -> Placement:
    """Replica `index`'s placement: the devices are dealt out in turn (two devices, four replicas: two on each)."""
    device = policy.devices[index % len(policy.devices)] if policy.devices else None
    return Placement(index, device, policy.threads)


@dataclass(frozen=True)
class Capacity:
    max_loaded: int  # worker processes (replicas of every model) loaded at once
    memory_budget_bytes: int  # 0 or less: no budget


@dataclass(frozen=True)
class SlotView:
    """What the policy needs to know of a model slot and its replicas; times are on the caller's clock."""

    model: str
    state: SlotState
    policy: ModelPolicy
    keep_alive: float | None
    replicas: int  # loading, loaded or unloading
    occupied: int  # replicas that hold room: loaded, unloading, or launching (room made, not yet loaded)
    loaded: int
    loading: int
    free_since: tuple[float, ...]  # since when each loaded replica that serves no request has served none
    waiting: int  # requests waiting for a replica (to load, or to be free)
    idle: bool  # no request holds, waits for or drains the model
    draining: bool  # a manual unload, eviction or shutdown is draining it
    last_used: float
    memory_bytes: int  # last measured RSS + GPU memory of its occupied replicas; 0 while unknown
    replica_bytes: int  # what one more replica is expected to take (the last one measured); 0 while unknown


@dataclass(frozen=True)
class IdleTimeout:
    seconds: float
    reason: UnloadReason


@dataclass(frozen=True)
class Deadline:
    at: float
    reason: UnloadReason


def has_room(newcomer: SlotView, slots: Iterable[SlotView], capacity: Capacity) -> bool:
    """Whether one more replica of the newcomer fits beside every replica that holds room (the newcomer's own
    included); with a memory budget, a lone replica always fits, however large."""
    holding = [slot for slot in slots if slot.occupied]
    if sum(slot.occupied for slot in holding) >= capacity.max_loaded:
        return False
    if capacity.memory_budget_bytes <= 0:
        return True
    used = sum(slot.memory_bytes for slot in holding)
    return not holding or used + newcomer.replica_bytes <= capacity.memory_budget_bytes


def eviction_candidate(newcomer: SlotView, slots: Iterable[SlotView]) -> SlotView | None:
    """The least recently used other model that is loaded, idle, not pinned and not held by a negative keep_alive
    (its replicas are evicted one at a time, as many as the newcomer needs)."""
    candidates = [
        slot
        for slot in slots
        if slot.model != newcomer.model
        and slot.loaded
        and slot.idle
        and not slot.policy.pinned
        and not (slot.keep_alive is not None and slot.keep_alive < 0)
    ]
    return min(candidates, key=lambda slot: slot.last_used, default=None)


def idle_timeout(policy: ModelPolicy, keep_alive: float | None) -> IdleTimeout | None:
    """How long an idle replica stays: a request's keep_alive before the policy's idle_timeout; None: for good."""
    if policy.pinned:
        return None
    if keep_alive is not None:
        return IdleTimeout(keep_alive, UnloadReason.KEEP_ALIVE) if keep_alive >= 0 else None
    if not policy.auto_unload or policy.idle_timeout < 0:
        return None
    return IdleTimeout(policy.idle_timeout, UnloadReason.IDLE)


def replica_deadlines(slot: SlotView) -> tuple[Deadline | None, ...]:
    """For each free replica (in `free_since`'s order), when it unloads if nothing changes: those idle longest, as
    many as the model has above replicas_min, each at its own idle_since + timeout; None for the others, and for all
    while a request waits, the model drains or the timeout keeps it."""
    timeout = idle_timeout(slot.policy, slot.keep_alive)
    if timeout is None or slot.waiting or slot.draining:
        return (None,) * len(slot.free_since)
    reapable = max(0, slot.loaded - slot.policy.replicas_min)
    longest_idle = set(sorted(range(len(slot.free_since)), key=lambda index: slot.free_since[index])[:reapable])
    return tuple(
        Deadline(since + timeout.seconds, timeout.reason) if index in longest_idle else None
        for index, since in enumerate(slot.free_since)
    )


def idle_deadline(slot: SlotView) -> Deadline | None:
    """When the model's next idle replica unloads, and why; None while every replica must stay."""
    deadlines = [deadline for deadline in replica_deadlines(slot) if deadline is not None]
    return min(deadlines, key=lambda deadline: deadline.at, default=None)


def model_deadline(slot: SlotView) -> Deadline | None:
    """When the model's last replica unloads if no request comes; None unless every replica is idle and each may
    go (replicas_min 0)."""
    deadlines = [deadline for deadline in replica_deadlines(slot) if deadline is not None]
    if slot.loading or not slot.idle or not deadlines or len(deadlines) != slot.loaded:
        return None
    return max(deadlines, key=lambda deadline: deadline.at)


def wants_replica(slot: SlotView) -> bool:
    """Whether to start loading one more replica now. One loads at a time per model; below replicas_max, one starts
    when a request waits and no loaded replica is free (the first load included); below replicas_min, one starts
    while the model is in use (a replica loaded or a request waiting). Nothing starts while the model drains."""
    if slot.draining or slot.loading or slot.replicas >= slot.policy.replicas_max:
        return False
    if slot.loaded < slot.policy.replicas_min and (slot.loaded or slot.waiting):
        return True
    return slot.waiting > 0 and not slot.free_since

"""The loader's decisions as pure functions of plain data: whether a model fits, which idle model makes room for it,
and when an idle model unloads. No I/O, no clock, no loader: the caller passes what it knows, times included."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


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


@dataclass(frozen=True)
class Capacity:
    max_loaded: int
    memory_budget_bytes: int  # 0 or less: no budget


@dataclass(frozen=True)
class SlotView:
    """What the policy needs to know of a model slot; times are on the caller's clock."""

    model: str
    state: SlotState
    policy: ModelPolicy
    keep_alive: float | None
    launching: bool  # room made for its load, worker not yet loaded
    idle: bool  # no request holds, waits for or drains it
    idle_since: float
    last_used: float
    memory_bytes: int  # last measured RSS + GPU memory; 0 while unknown


@dataclass(frozen=True)
class IdleTimeout:
    seconds: float
    reason: UnloadReason


@dataclass(frozen=True)
class Deadline:
    at: float
    reason: UnloadReason


def occupies_room(slot: SlotView) -> bool:
    return slot.state in (SlotState.LOADED, SlotState.UNLOADING) or slot.launching


def has_room(newcomer: SlotView, slots: Iterable[SlotView], capacity: Capacity) -> bool:
    """Whether the newcomer can load beside the other slots that occupy room; with a memory budget, a lone model
    always fits, however large."""
    others = [slot for slot in slots if slot.model != newcomer.model and occupies_room(slot)]
    if len(others) >= capacity.max_loaded:
        return False
    if capacity.memory_budget_bytes <= 0:
        return True
    used = sum(slot.memory_bytes for slot in others)
    return not others or used + newcomer.memory_bytes <= capacity.memory_budget_bytes


def eviction_candidate(newcomer: SlotView, slots: Iterable[SlotView]) -> SlotView | None:
    """The least recently used other slot that is loaded, idle, not pinned and not held by a negative keep_alive."""
    candidates = [
        slot
        for slot in slots
        if slot.model != newcomer.model
        and slot.state is SlotState.LOADED
        and slot.idle
        and not slot.policy.pinned
        and not (slot.keep_alive is not None and slot.keep_alive < 0)
    ]
    return min(candidates, key=lambda slot: slot.last_used, default=None)


def idle_timeout(policy: ModelPolicy, keep_alive: float | None) -> IdleTimeout | None:
    """How long an idle model stays: a request's keep_alive before the policy's idle_timeout; None: for good."""
    if policy.pinned:
        return None
    if keep_alive is not None:
        return IdleTimeout(keep_alive, UnloadReason.KEEP_ALIVE) if keep_alive >= 0 else None
    if not policy.auto_unload or policy.idle_timeout < 0:
        return None
    return IdleTimeout(policy.idle_timeout, UnloadReason.IDLE)


def idle_deadline(slot: SlotView) -> Deadline | None:
    """When an idle loaded slot unloads, and why; None while it must stay."""
    timeout = idle_timeout(slot.policy, slot.keep_alive)
    if slot.state is not SlotState.LOADED or not slot.idle or timeout is None:
        return None
    return Deadline(slot.idle_since + timeout.seconds, timeout.reason)

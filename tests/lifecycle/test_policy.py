"""The loader's decisions on their own: room for a model, which idle model to evict, when an idle model unloads."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

import pytest

from service.lifecycle.policy import (
    Capacity,
    Deadline,
    IdleTimeout,
    ModelPolicy,
    SlotState,
    SlotView,
    UnloadReason,
    eviction_candidate,
    has_room,
    idle_deadline,
    idle_timeout,
    occupies_room,
)

NO_BUDGET = Capacity(max_loaded=2, memory_budget_bytes=0)


def slot(model: str, state: SlotState = SlotState.LOADED, **changes: Any) -> SlotView:
    """A loaded, idle, unpinned slot of 1000 bytes, used at time 0, unless told otherwise."""
    view = SlotView(
        model=model,
        state=state,
        policy=ModelPolicy(idle_timeout=300.0),
        keep_alive=None,
        launching=False,
        idle=True,
        idle_since=100.0,
        last_used=0.0,
        memory_bytes=1000,
    )
    return replace(view, **changes)


def newcomer(model: str = "new", memory_bytes: int = 1000) -> SlotView:
    return slot(model, SlotState.UNLOADED, memory_bytes=memory_bytes)


def test_the_policy_is_frozen() -> None:
    policy = ModelPolicy(idle_timeout=300.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.pinned = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("state", "launching", "occupies"),
    [
        (SlotState.LOADED, False, True),
        (SlotState.UNLOADING, False, True),
        (SlotState.LOADING, True, True),
        (SlotState.LOADING, False, False),
        (SlotState.UNLOADED, False, False),
        (SlotState.FAILED, False, False),
    ],
)
def test_loaded_unloading_and_launching_slots_occupy_room(state: SlotState, launching: bool, occupies: bool) -> None:
    assert occupies_room(slot("a", state, launching=launching)) is occupies


def test_room_while_fewer_than_max_loaded_others_occupy_room() -> None:
    assert has_room(newcomer(), [slot("a")], NO_BUDGET)
    assert not has_room(newcomer(), [slot("a"), slot("b")], NO_BUDGET)


def test_slots_that_hold_no_room_do_not_count_against_max_loaded() -> None:
    others = [slot("a"), slot("b", SlotState.UNLOADED), slot("c", SlotState.FAILED), slot("d", SlotState.LOADING)]
    assert has_room(newcomer(), others, NO_BUDGET)
    assert not has_room(newcomer(), [*others, slot("e", SlotState.LOADING, launching=True)], NO_BUDGET)


def test_the_newcomer_does_not_count_against_its_own_room() -> None:
    itself = slot("new", SlotState.LOADING, launching=True)
    assert has_room(itself, [itself, slot("a")], NO_BUDGET)


def test_a_memory_budget_exactly_full_still_has_room() -> None:
    capacity = Capacity(max_loaded=5, memory_budget_bytes=1500)
    assert has_room(newcomer(memory_bytes=500), [slot("a", memory_bytes=1000)], capacity)
    assert not has_room(newcomer(memory_bytes=501), [slot("a", memory_bytes=1000)], capacity)


def test_a_lone_model_fits_any_budget_and_a_model_of_unknown_size_counts_as_nothing() -> None:
    capacity = Capacity(max_loaded=5, memory_budget_bytes=1500)
    assert has_room(newcomer(memory_bytes=10_000), [slot("a", SlotState.UNLOADED)], capacity)
    assert has_room(newcomer(memory_bytes=0), [slot("a", memory_bytes=1500)], capacity)


def test_max_loaded_applies_under_a_memory_budget_too() -> None:
    capacity = Capacity(max_loaded=1, memory_budget_bytes=1_000_000)
    assert not has_room(newcomer(memory_bytes=1), [slot("a", memory_bytes=1)], capacity)


def test_the_least_recently_used_idle_model_is_evicted() -> None:
    slots = [slot("a", last_used=30.0), slot("b", last_used=10.0), slot("c", last_used=20.0)]
    assert eviction_candidate(newcomer(), slots) == slots[1]


@pytest.mark.parametrize(
    "keeper",
    [
        slot("held", idle=False),
        slot("held", policy=ModelPolicy(idle_timeout=300.0, pinned=True)),
        slot("held", keep_alive=-1.0),
        slot("held", SlotState.LOADING, launching=True),
        slot("held", SlotState.UNLOADING),
    ],
    ids=["busy", "pinned", "negative keep_alive", "launching", "unloading"],
)
def test_busy_pinned_kept_alive_and_not_loaded_models_are_never_evicted(keeper: SlotView) -> None:
    later = slot("later", last_used=keeper.last_used + 1)
    assert eviction_candidate(newcomer(), [keeper]) is None
    assert eviction_candidate(newcomer(), [keeper, later]) == later


def test_a_zero_or_positive_keep_alive_leaves_a_model_evictable() -> None:
    slots = [slot("a", keep_alive=0.0), slot("b", keep_alive=600.0, last_used=-1.0)]
    assert eviction_candidate(newcomer(), slots) == slots[1]


def test_the_newcomer_is_never_its_own_eviction_candidate() -> None:
    itself = slot("new", last_used=-100.0)
    assert eviction_candidate(itself, [itself]) is None


def test_without_keep_alive_the_idle_timeout_applies() -> None:
    assert idle_timeout(ModelPolicy(idle_timeout=300.0), None) == IdleTimeout(300.0, UnloadReason.IDLE)


@pytest.mark.parametrize(
    ("keep_alive", "expected"),
    [
        (0.0, IdleTimeout(0.0, UnloadReason.KEEP_ALIVE)),
        (5.0, IdleTimeout(5.0, UnloadReason.KEEP_ALIVE)),
        (-1.0, None),
    ],
)
def test_a_request_s_keep_alive_overrides_the_idle_timeout(keep_alive: float, expected: IdleTimeout | None) -> None:
    assert idle_timeout(ModelPolicy(idle_timeout=300.0), keep_alive) == expected


@pytest.mark.parametrize(
    "policy",
    [
        ModelPolicy(idle_timeout=300.0, pinned=True),
        ModelPolicy(idle_timeout=300.0, auto_unload=False),
        ModelPolicy(idle_timeout=-1.0),
    ],
    ids=["pinned", "auto_unload off", "negative idle_timeout"],
)
def test_pinned_auto_unload_off_and_negative_idle_timeout_keep_a_model(policy: ModelPolicy) -> None:
    assert idle_timeout(policy, None) is None


def test_pinned_wins_over_a_request_s_keep_alive() -> None:
    assert idle_timeout(ModelPolicy(idle_timeout=300.0, pinned=True), 5.0) is None


def test_keep_alive_applies_even_with_auto_unload_off() -> None:
    policy = ModelPolicy(idle_timeout=300.0, auto_unload=False)
    assert idle_timeout(policy, 5.0) == IdleTimeout(5.0, UnloadReason.KEEP_ALIVE)


def test_the_deadline_counts_from_when_the_slot_went_idle() -> None:
    assert idle_deadline(slot("a", idle_since=100.0)) == Deadline(400.0, UnloadReason.IDLE)
    assert idle_deadline(slot("a", idle_since=100.0, keep_alive=0.0)) == Deadline(100.0, UnloadReason.KEEP_ALIVE)


@pytest.mark.parametrize(
    "kept",
    [
        slot("a", idle=False),
        slot("a", SlotState.LOADING),
        slot("a", SlotState.UNLOADED),
        slot("a", keep_alive=-1.0),
        slot("a", policy=ModelPolicy(idle_timeout=300.0, pinned=True)),
    ],
    ids=["busy", "loading", "unloaded", "negative keep_alive", "pinned"],
)
def test_no_deadline_unless_loaded_idle_and_allowed_to_unload(kept: SlotView) -> None:
    assert idle_deadline(kept) is None

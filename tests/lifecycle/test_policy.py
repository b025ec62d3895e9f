"""The loader's decisions on their own: room for a replica, which idle model to evict, when an idle replica unloads,
when one more replica loads and where each runs."""

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
    Placement,
    SlotState,
    SlotView,
    UnloadReason,
    eviction_candidate,
    has_room,
    idle_deadline,
    idle_timeout,
    model_deadline,
    placement,
    replica_deadlines,
    wants_replica,
)

NO_BUDGET = Capacity(max_loaded=2, memory_budget_bytes=0)


def slot(model: str, state: SlotState = SlotState.LOADED, **changes: Any) -> SlotView:
    """One loaded, idle replica of 1000 bytes (free since time 100), unpinned, used at time 0, unless told
    otherwise; a slot in another state has no replica."""
    loaded = state is SlotState.LOADED
    view = SlotView(
        model=model,
        state=state,
        policy=ModelPolicy(idle_timeout=300.0),
        keep_alive=None,
        replicas=int(loaded),
        occupied=int(loaded),
        loaded=int(loaded),
        loading=0,
        free_since=(100.0,) if loaded else (),
        waiting=0,
        idle=True,
        draining=False,
        last_used=0.0,
        memory_bytes=1000 if loaded else 0,
        replica_bytes=1000,
    )
    return replace(view, **changes)


def newcomer(model: str = "new", memory_bytes: int = 1000) -> SlotView:
    return slot(model, SlotState.UNLOADED, replica_bytes=memory_bytes)


def replicas(count: int, *, policy: ModelPolicy | None = None, busy: int = 0, **changes: Any) -> SlotView:
    """A model with `count` loaded replicas, `busy` of them serving, the free ones free since 100, 110, ..."""
    view = slot(
        "m",
        policy=policy or ModelPolicy(idle_timeout=300.0, replicas_max=4),
        replicas=count,
        occupied=count,
        loaded=count,
        free_since=tuple(100.0 + 10 * index for index in range(count - busy)),
        idle=busy == 0,
        memory_bytes=1000 * count,
    )
    return replace(view, **changes)


def test_the_policy_is_frozen() -> None:
    policy = ModelPolicy(idle_timeout=300.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.pinned = True  # type: ignore[misc]


def test_room_while_fewer_than_max_loaded_others_occupy_room() -> None:
    assert has_room(newcomer(), [slot("a")], NO_BUDGET)
    assert not has_room(newcomer(), [slot("a"), slot("b")], NO_BUDGET)


def test_slots_that_hold_no_room_do_not_count_against_max_loaded() -> None:
    others = [slot("a"), slot("b", SlotState.UNLOADED), slot("c", SlotState.FAILED), slot("d", SlotState.LOADING)]
    assert has_room(newcomer(), others, NO_BUDGET)
    assert not has_room(newcomer(), [*others, slot("e", SlotState.LOADING, occupied=1)], NO_BUDGET)


def test_every_replica_counts_against_max_loaded_the_newcomer_s_own_included() -> None:
    two = replicas(2)
    assert not has_room(two, [two], NO_BUDGET)
    assert has_room(replicas(1), [replicas(1)], NO_BUDGET)
    assert not has_room(newcomer(), [two], NO_BUDGET)


def test_a_memory_budget_exactly_full_still_has_room() -> None:
    capacity = Capacity(max_loaded=5, memory_budget_bytes=1500)
    assert has_room(newcomer(memory_bytes=500), [slot("a", memory_bytes=1000)], capacity)
    assert not has_room(newcomer(memory_bytes=501), [slot("a", memory_bytes=1000)], capacity)


def test_the_memory_budget_counts_every_replica() -> None:
    capacity = Capacity(max_loaded=5, memory_budget_bytes=2500)
    assert has_room(replicas(1), [replicas(1)], capacity)
    assert not has_room(replicas(2), [replicas(2)], capacity)


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
        slot("held", SlotState.LOADING, occupied=1),
        slot("held", SlotState.UNLOADING, occupied=1),
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


def test_the_deadline_counts_from_when_the_replica_went_idle() -> None:
    assert idle_deadline(slot("a", free_since=(100.0,))) == Deadline(400.0, UnloadReason.IDLE)
    assert idle_deadline(slot("a", keep_alive=0.0)) == Deadline(100.0, UnloadReason.KEEP_ALIVE)


@pytest.mark.parametrize(
    "kept",
    [
        slot("a", free_since=(), idle=False),
        slot("a", waiting=1, idle=False),
        slot("a", draining=True, idle=False),
        slot("a", SlotState.LOADING),
        slot("a", SlotState.UNLOADED),
        slot("a", keep_alive=-1.0),
        slot("a", policy=ModelPolicy(idle_timeout=300.0, pinned=True)),
        slot("a", policy=ModelPolicy(idle_timeout=300.0, replicas_min=1)),
    ],
    ids=["busy", "request waiting", "draining", "loading", "unloaded", "negative keep_alive", "pinned", "at min"],
)
def test_no_deadline_unless_a_replica_is_idle_and_allowed_to_unload(kept: SlotView) -> None:
    assert idle_deadline(kept) is None
    assert model_deadline(kept) is None


def test_each_replica_has_its_own_idle_clock() -> None:
    three = replicas(3)
    assert replica_deadlines(three) == tuple(Deadline(since + 300.0, UnloadReason.IDLE) for since in (100, 110, 120))
    assert idle_deadline(three) == Deadline(400.0, UnloadReason.IDLE)
    assert model_deadline(three) == Deadline(420.0, UnloadReason.IDLE)


def test_replicas_are_reaped_down_to_replicas_min_the_longest_idle_first() -> None:
    policy = ModelPolicy(idle_timeout=300.0, replicas_min=1, replicas_max=4)
    three = replicas(3, policy=policy, free_since=(120.0, 100.0, 110.0))
    assert replica_deadlines(three) == (None, Deadline(400.0, UnloadReason.IDLE), Deadline(410.0, UnloadReason.IDLE))
    assert model_deadline(three) is None


def test_keep_alive_applies_to_every_replica() -> None:
    two = replicas(2, keep_alive=5.0)
    assert replica_deadlines(two) == (
        Deadline(105.0, UnloadReason.KEEP_ALIVE),
        Deadline(115.0, UnloadReason.KEEP_ALIVE),
    )
    assert replica_deadlines(replicas(2, keep_alive=-1.0)) == (None, None)


def test_an_idle_replica_beside_a_busy_one_keeps_its_own_clock_but_the_model_has_no_unload_time() -> None:
    one_busy = replicas(2, busy=1)
    assert idle_deadline(one_busy) == Deadline(400.0, UnloadReason.IDLE)
    assert model_deadline(one_busy) is None


@pytest.mark.parametrize(
    ("view", "wanted"),
    [
        (slot("m", SlotState.UNLOADED, waiting=1), True),
        (slot("m", SlotState.UNLOADED), False),
        (replicas(1, busy=1, waiting=1), True),
        (replicas(1, waiting=0, busy=1), False),
        (replicas(2, busy=1, waiting=1), False),
        (replicas(1, busy=1, waiting=3, loading=1, replicas=2), False),
        (replicas(4, busy=4, waiting=9), False),
        (replicas(1, busy=1, waiting=1, draining=True), False),
        (replicas(1, policy=ModelPolicy(idle_timeout=300.0, replicas_min=3, replicas_max=4)), True),
        (slot("m", SlotState.UNLOADED, policy=ModelPolicy(idle_timeout=300.0, replicas_min=3, replicas_max=4)), False),
    ],
    ids=[
        "first request",
        "no request",
        "all busy, one waits",
        "all busy, none waits",
        "one free",
        "one loading already",
        "at replicas_max",
        "draining",
        "below replicas_min while in use",
        "below replicas_min, unused",
    ],
)
def test_one_more_replica_loads_when_every_replica_is_busy_and_a_request_waits(view: SlotView, wanted: bool) -> None:
    assert wants_replica(view) is wanted


def test_devices_are_dealt_out_to_replicas_in_turn() -> None:
    policy = ModelPolicy(idle_timeout=300.0, replicas_max=4, devices=("cuda:0", "cuda:1"), threads=2)
    assert [placement(policy, index) for index in range(3)] == [
        Placement(0, "cuda:0", 2),
        Placement(1, "cuda:1", 2),
        Placement(2, "cuda:0", 2),
    ]
    assert placement(ModelPolicy(idle_timeout=300.0), 0) == Placement(0, None, None)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"replicas_max": 0}, "replicas_max must be at least 1"),
        ({"replicas_min": 2}, "replicas_min must be 0 to replicas_max"),
        ({"replicas_min": -1}, "replicas_min must be 0 to replicas_max"),
        ({"devices": ("gpu0",)}, "devices must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"threads": 0}, "threads must be at least 1"),
    ],
)
def test_a_policy_with_impossible_replicas_is_refused(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ModelPolicy(idle_timeout=300.0, **changes)

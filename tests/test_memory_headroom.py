"""hardened_worker._headroom (pure): a successor starts first only when the container has room for
it; the memory-constrained budget; and the drain's growth counted against the hard limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardened_worker import _headroom as headroom
from hardened_worker._headroom import Budget, Replacement, Room, margin, replacement, starting
from hardened_worker._memory import Decision, decide, drain_growth

MiB = 1024**2
SURGE, DRAIN_FIRST = Replacement.SURGE, Replacement.DRAIN_FIRST

# 700 MiB container, app 70 MiB, master 35 MiB, 3 workers: margin 56 MiB, 126 MiB for one successor.
BASE = dict(
    limit=700 * MiB, used=400 * MiB, footprint=70 * MiB, starting=0, workers=3, master=35 * MiB
)


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(), SURGE),
        (dict(used=574 * MiB), SURGE),  # 126 MiB left: exactly enough
        (dict(used=575 * MiB), DRAIN_FIRST),  # one MiB short
        (dict(used=700 * MiB), DRAIN_FIRST),
        (dict(used=800 * MiB), DRAIN_FIRST),  # over the limit (v1 usage can pass it briefly)
        (dict(starting=1, used=504 * MiB), SURGE),  # 196 MiB: two apps + margin fit
        (dict(starting=1, used=560 * MiB), DRAIN_FIRST),  # a booting worker's app is still to come
        (dict(limit=None), SURGE),  # no cgroup limit: nothing to overflow that we can see
        (dict(used=None), SURGE),  # usage unknown
        (dict(limit=300 * MiB, used=None), DRAIN_FIRST),  # but the limit alone rules a surge out
        (dict(limit=None, used=10**12), SURGE),
        # 300 MiB cannot hold 3 + 1 apps of 70 MiB next to the master: never a surge, even idle
        (dict(limit=300 * MiB, used=0), DRAIN_FIRST),
        # 20 + 4 x 70 + 8% of the limit: 327 MiB holds it (margin 26.2), 326 does not (26.1)
        (dict(limit=327 * MiB, used=0, master=20 * MiB), SURGE),
        (dict(limit=326 * MiB, used=0, master=20 * MiB), DRAIN_FIRST),
        (dict(footprint=0, used=644 * MiB), SURGE),  # footprint unknown: the margin still counts
        (dict(footprint=0, used=645 * MiB), DRAIN_FIRST),
    ],
)
def test_replacement_table(changes, expected):
    assert replacement(Room(**{**BASE, **changes})) is expected


rooms = st.builds(
    Room,
    limit=st.one_of(st.none(), st.integers(0, 2**36)),
    used=st.one_of(st.none(), st.integers(0, 2**36)),
    footprint=st.integers(0, 2**32),
    starting=st.integers(0, 8),
    workers=st.integers(1, 64),
    master=st.integers(0, 2**31),
)


@given(rooms)
def test_replacement_surges_only_into_room(room):
    way = replacement(room)
    if room.limit is None:
        assert way is SURGE
        return
    if way is SURGE:  # the successor and every worker already starting fit, margin kept
        assert room.master + (room.workers + 1) * room.footprint + margin(room.limit) <= room.limit
        if room.used is not None:
            assert room.limit - room.used >= (room.starting + 1) * room.footprint + margin(
                room.limit
            )
    assert "\n" not in room.describe()


@given(rooms, st.integers(1, 2**30))
def test_replacement_is_monotonic_in_usage(room, more):
    """More memory in use never turns a drain-first into a surge."""
    if room.used is not None and replacement(room) is DRAIN_FIRST:
        fuller = Room(
            room.limit, room.used + more, room.footprint, room.starting, room.workers, room.master
        )
        assert replacement(fuller) is DRAIN_FIRST


@pytest.mark.parametrize(
    "workers, alive, booting, expected",
    [
        (3, 2, 0, 0),  # the pool is whole
        (3, 2, 1, 1),  # one of them booting
        (3, 1, 0, 1),  # one left and is not replaced yet: the master forks it soon
        (3, 0, 0, 2),
        (3, 4, 1, 1),  # the operator's TTIN: more than configured, nothing owed
    ],
)
def test_starting_counts_booting_and_owed_workers(workers, alive, booting, expected):
    assert starting(workers, alive, booting) == expected


@pytest.mark.parametrize(
    "limit, expected",
    [(100 * MiB, 16 * MiB), (700 * MiB, 56 * MiB), (4096 * MiB, int(4096 * MiB * 0.08))],
)
def test_margin(limit, expected):
    assert margin(limit) == expected


def test_explain_names_the_figures():
    room = Room(**{**BASE, "used": 650 * MiB})
    text = DRAIN_FIRST.explain(room)
    assert "drains first" in text and "650 MiB of 700 MiB" in text and "126 MiB needed" in text
    assert SURGE.explain(room) == "its successor starts first"


# --- the budget of the memory-constrained preset -------------------------------------------------


def test_budget_of_the_measured_scenario():
    b = Budget(limit=700 * MiB, master=34 * MiB, app=62 * MiB, workers=3)
    assert b.surge and b.fits
    assert b.hard == (700 - 34 - 62 - 56) * MiB // 3  # 182.7 MiB
    assert b.soft == int(b.hard / 1.25)
    line = b.describe()
    assert "3 workers x hard limit 183 MiB" in line and "one successor 62 MiB" in line
    assert "without surge" not in line


def test_budget_too_small_for_workers_plus_one_says_so_and_keeps_no_successor_share():
    b = Budget(limit=300 * MiB, master=34 * MiB, app=70 * MiB, workers=3)
    assert not b.surge
    assert b.hard == (300 - 34 - 24) * MiB // 3
    assert "too small for 3 + 1 apps" in b.describe() and "without surge" in b.describe()


def test_budget_soft_below_the_app_says_so():
    b = Budget(limit=400 * MiB, master=34 * MiB, app=80 * MiB, workers=4)
    assert not b.fits and "soft limit is below the app's footprint" in b.describe()


@given(
    limit=st.integers(64 * MiB, 2**36),
    master=st.integers(0, 512 * MiB),
    app=st.integers(0, 2**31),
    workers=st.integers(1, 32),
)
def test_budget_every_worker_at_hard_plus_one_successor_fits(limit, master, app, workers):
    b = Budget(limit, master, app, workers)
    successor = app if b.surge else 0
    if master + successor + b.margin <= limit:
        assert workers * b.hard + master + successor + b.margin <= limit
    assert b.soft <= b.hard
    # A budget with a successor's share leaves room for one at run time too, all workers at hard.
    if b.surge:
        room = Room(limit, master + workers * b.hard, app, 0, workers, master)
        assert replacement(room) is SURGE
    assert b.soft == int(b.hard / headroom.HARD_LIMIT_FACTOR)


# --- the drain's growth counts against the hard limit --------------------------------------------


@pytest.mark.parametrize(
    "per_request, connections, on_exit, cap, expected",
    [
        (256 * 1024, 8, 0, 16 * MiB, 4 * MiB),  # one in flight and one more on each connection
        (256 * 1024, 8, 7 * MiB, 16 * MiB, 11 * MiB),  # and what exiting copies of the master
        (256 * 1024, 8, 13 * MiB, 16 * MiB, 16 * MiB),  # capped
        (8 * MiB, 64, 0, 16 * MiB, 16 * MiB),  # one large request is not a leak rate
        (-5.0, 8, 0, 16 * MiB, 0),  # memory given back: no growth
        (1024.0, 0, 0, 16 * MiB, 0),
        (1024.0, 4, 2 * MiB, 0, 0),  # soft == hard: no cap to spend
    ],
)
def test_drain_growth(per_request, connections, on_exit, cap, expected):
    assert drain_growth(per_request, connections, on_exit, cap) == expected


DECIDE = dict(
    soft=100,
    hard=125,
    age=60.0,
    min_lifetime=30.0,
    baseline_over=False,
    others_recycling=0,
    replacement_possible=True,
)


@pytest.mark.parametrize(
    "used, growth, others, expected",
    [
        (110, 0, 1, Decision.WAIT_TURN),
        (110, 15, 1, Decision.RECYCLE_HARD),  # 110 + 15 reaches 125: the drain would pass it
        (110, 14, 1, Decision.WAIT_TURN),
        (99, 12, 0, Decision.OK),  # under both
        (
            99,
            26,
            0,
            Decision.RECYCLE_HARD,
        ),  # a growth beyond the cap is never passed in, but decide is exact
    ],
)
def test_decide_counts_the_drain_growth_against_the_hard_limit(used, growth, others, expected):
    assert (
        decide(**{**DECIDE, "used": used, "drain_growth": growth, "others_recycling": others})
        is expected
    )


@given(used=st.integers(0, 300), growth=st.integers(0, 12))
def test_decide_with_capped_growth_never_recycles_hard_below_soft(used, growth):
    # The watch caps the growth at (hard - soft) / 2 = 12: a worker under its soft limit is OK.
    d = decide(**{**DECIDE, "used": used, "drain_growth": growth})
    if used < DECIDE["soft"]:
        assert d is Decision.OK
    if used + growth >= DECIDE["hard"]:
        assert d is Decision.RECYCLE_HARD
